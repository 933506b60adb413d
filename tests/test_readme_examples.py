"""The README's "Measure your own training" example runs as written, and what it prints is what
its files say (the run's trace, judged again from disk)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from gamma_theory import check_trace, load_trace

ROOT = Path(__file__).resolve().parent.parent


def readme_examples(section: str = "## Measure your own training") -> list[str]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index(section):]
    part = part[:part.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


def test_the_measure_your_own_training_example_runs_and_prints_what_its_files_say(tmp_path):
    (code,) = readme_examples()
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) steps; Definition 1 holds: (True|False); largest gamma (\S+) \(x \|\|theta_0 - "
                     r"theta\*\|\|\^2 = (\S+)\); theta\* train accuracy (\S+)", line)
    assert m, line
    trace = load_trace(tmp_path / "runs/my-transformer/trace.npz")
    r = check_trace(trace)
    assert int(m[1]) == len(trace) and m[2] == str(r.definition_1.holds)
    assert float(m[3]) == float(f"{r.definition_1.gamma_max:.3g}")
    assert np.isclose(float(m[4]), r.definition_1.gamma_max * trace.dist0_sq, rtol=1e-2)
    assert trace.eta is not None  # the schedule is recorded
    assert "random_step" in trace.meta  # dropout: replayed, and said
