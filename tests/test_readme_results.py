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


def test_the_pooled_violation_rate_sums_the_true_label_reports_only():
    from validation.readme_results import pooled_rate

    def rep(k, n, labels="true"):
        return {"labels": labels, "violation_rate": {"violating_steps": k, "steps": n, "runs": 2, "paper_steps": 58650}}

    text = " ".join(pooled_rate({"a": rep(1, 1000), "b": rep(0, 3000), "c": rep(50, 100, "random"), "d": {}}))
    assert "**1 violating step(s) in 4,000 steps** of 4 converged paths" in text and "rate of 2.50e-04" in text
    assert "`a` 1 in 1,000; `b` 0 in 3,000." in text and "`c`" not in text
    assert pooled_rate({"c": rep(50, 100, "random")}) == []
