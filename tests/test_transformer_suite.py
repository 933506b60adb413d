"""The transformer suite's smoke preset end to end (deep/transformer_suite.py): every number of its
report recomputed from the run folders it wrote."""

import json

import numpy as np

from deep.folder import RunFolder
from deep.transformer_suite import PRESETS, run_suite
from gamma_theory import definition_1, load_trace
from gamma_theory.phases import definition_1_by_phase


def test_the_smoke_suite_reports_what_its_traces_say(tmp_path):
    report = run_suite("smoke", tmp_path, progress=False)
    folder = tmp_path / "transformer-smoke"
    assert json.loads((folder / "report.json").read_text())["runs"][0]["name"] == "base-s0"
    assert len(report["runs"]) == len(PRESETS["smoke"].variants)
    md = (folder / "report.md").read_text()
    for r in report["runs"]:
        run_dir = folder / "runs" / r["name"]
        tr = load_trace(run_dir / "trace.npz")
        d = definition_1(tr)
        assert r["definition_1"]["holds"] == d.holds and r["definition_1"]["gamma_max"] == d.gamma_max
        rows = json.loads((run_dir / "trace.json").read_text())["epoch_eval"]
        first = next((x["epoch"] for x in rows if x["epoch"] and x["train"]["accuracy"] == 1.0), None)
        assert r["memorization_epoch"] == first
        assert r["converged"] == (rows[-1]["train"]["accuracy"] == 1.0)
        cuts = {k: (v or {}).get("step") for k, v in tr.meta["events"].items()}
        assert definition_1_by_phase(tr, cuts) == json.loads(json.dumps(r["phases"]))
        comps = RunFolder(run_dir).load_companions(tr.meta)
        assert set(r["against"]) == set(comps)
        if first is not None and first < 40:
            assert "memorization" in comps and len(comps["memorization"]) == r["phases"]["phases"][0]["n_steps"]
        assert r["name"] in md
    # a rerun measures nothing and gives the same report
    again = run_suite("smoke", tmp_path, progress=False)
    assert [r["definition_1"] for r in again["runs"]] == [r["definition_1"] for r in report["runs"]]
    assert np.isfinite([r["wall_s"] for r in again["runs"]]).all()


def test_the_deep_command_runs_it_and_refuses_cifar_options(tmp_path):
    from click.testing import CliRunner

    from validation import cli

    ok = CliRunner().invoke(cli.main, ["deep", "--suite", "transformer", "--preset", "smoke", "--out", str(tmp_path),
                                       "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "transformer-smoke/report.md").exists() and "principle" in ok.output
    for args, want in ((["--preset", "long"], "unknown preset 'long'"), (["--networks", "resnet18"], "--networks")):
        bad = CliRunner().invoke(cli.main, ["deep", "--suite", "transformer", *args, "--out", str(tmp_path)])
        assert bad.exit_code == 2 and want in bad.output and "Traceback" not in bad.output


def test_gpcheck_report_rebuilds_a_transformer_folder_from_its_finished_runs(tmp_path):
    import shutil

    from click.testing import CliRunner

    from validation import cli

    first = run_suite("smoke", tmp_path, progress=False)
    folder = tmp_path / "transformer-smoke"
    shutil.rmtree(folder / "runs" / "sgd-s0")  # as if the suite had been stopped before its last run
    (folder / "report.json").unlink()
    out = CliRunner().invoke(cli.main, ["report", str(folder)])
    assert out.exit_code == 0, out.output
    rep = json.loads((folder / "report.json").read_text())
    assert rep["not_measured"] == ["sgd-s0"] and "sgd-s0" in (folder / "report.md").read_text()
    assert [r["definition_1"] for r in rep["runs"]] == [r["definition_1"] for r in first["runs"][:2]]
    assert not (folder / "runs" / "sgd-s0").exists()  # nothing measured
