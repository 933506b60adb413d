"""The test run itself leaves a clean checkout clean (tests/conftest.py compares `git status`
before and after the session; under CI a difference fails the run)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _session(tmp_path, body: str) -> subprocess.CompletedProcess:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(HERE / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_x.py").write_text(body)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests"],
                          cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CI": "1", "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_test_that_writes_into_the_tree_fails_the_run_under_ci(tmp_path):
    writes = ("from pathlib import Path\n\ndef test_w():\n"
              "    (Path(__file__).resolve().parents[1] / 'reports').mkdir()\n"
              "    (Path(__file__).resolve().parents[1] / 'reports' / 'x.md').write_text('x')\n")
    res = _session(tmp_path / "a", writes)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "the tests changed the checkout (git status): ?? reports/x.md" in res.stdout
    clean = _session(tmp_path / "b", "def test_ok(tmp_path):\n    (tmp_path / 'x').write_text('x')\n")
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert "changed the checkout" not in clean.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_default_outputs_are_git_ignored(monkeypatch, tmp_path):
    """The quickstart's `gpcheck ladder` and a default `gpcheck deep` write where git does not
    look (gpcheck-out/), never into the committed reports/."""
    from click.testing import CliRunner

    import validation.ladder as L
    from validation import cli

    seen = {}

    def run_ladder(out_dir, seed, progress):
        seen["out"] = out_dir
        return {"figure": "figures/ladder.png", "runs": [], "n_pass": 0, "n_runs": 0, "wall_s": 0.0}

    monkeypatch.setattr(L, "run_ladder", run_ladder)
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(cli.main, ["ladder"])
    deep_out = next(p.default for p in cli.deep.params if p.name == "out_root")
    repo = HERE.parent
    for path in (f"{seen['out']}/report.md", f"{deep_out}/bn-smoke-cifar10-jpeg/report.md", f"{deep_out}/README.md"):
        assert not path.startswith("reports"), path
        assert subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", path]).returncode == 0, path
    assert subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "reports/ladder/report.md"]).returncode == 1
