"""The README's results block is generated from the committed reports: it must equal what
`python -m validation.readme_results` writes, and it must change when a report's number does."""

import json
import shutil
from pathlib import Path

from validation.readme_results import ROOT, main, render, replace_block


def test_the_readme_results_equal_the_reports():
    readme = (ROOT / "README.md").read_text()
    assert replace_block(readme, render(ROOT / "reports")) == readme, (
        "README.md's results block is stale: run `python -m validation.readme_results`")


def test_a_changed_report_changes_the_block_and_check_fails(tmp_path):
    reports = tmp_path / "reports"
    folder = "skip-cpu-cifar10-jpeg"
    (reports / folder).mkdir(parents=True)
    shutil.copy(ROOT / "reports" / folder / "report.json", reports / folder / "report.json")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + render(reports) + "\noutro\n")
    assert main(["--check", "--readme", str(readme)]) == 0
    rep = json.loads((reports / folder / "report.json").read_text())
    rep["claims"][0]["verdict"] = "FAIL" if rep["claims"][0]["verdict"] == "PASS" else "PASS"
    (reports / folder / "report.json").write_text(json.dumps(rep))
    assert main(["--check", "--readme", str(readme)]) == 1  # drift is caught
    assert main(["--readme", str(readme)]) == 0 and main(["--check", "--readme", str(readme)]) == 0
    text = Path(readme).read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n")  # only the block is rewritten
