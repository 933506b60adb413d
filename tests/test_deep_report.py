"""Suite reports from hand-made run folders: diverged and failed runs are reported, the suite goes on."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from deep.suites import get_suite
from gamma_theory import Trace
from validation.cli import main
from validation.deep_report import build_report


def spec(network, variant, preset="smoke"):
    return next(r.to_dict() for r in get_suite("bn", preset).runs if r.name == f"{network}-{variant}")


def synthetic_trace(seed, network, variant, steps=4, decay=0.5):
    rng = np.random.default_rng(seed)
    epochs = spec(network, variant)["epochs"]
    n = epochs * steps
    loss = 2.0 * decay ** (np.arange(n) / steps) + 0.01
    dist = np.linspace(4.0, 0.1, n)
    return Trace(loss=loss, loss_star=np.full(n, 0.01), inner=np.full(n, 1.0) + rng.random(n) * 0.1,
                 update_sq=np.ones(n), dist_sq=dist, lr=0.1, dist0_sq=4.0, epoch=np.arange(n) // steps,
                 meta={"run": spec(network, variant), "status": "ok",
                       "steps_per_epoch": steps, "epochs_measured": epochs,
                       "pass1": {"wall_s": 1.0, "ms_per_step": 10.0, "steps": n},
                       "pass2": {"wall_s": 2.0, "ms_per_step": 20.0}})


def test_report_with_diverged_and_failed_runs(tmp_path):
    runs = tmp_path / "runs"
    for variant, decay in (("first", 0.5), ("all", 0.3)):
        synthetic_trace(1, "resnet18", variant, decay=decay).save(runs / f"resnet18-{variant}" / "trace")
    (runs / "resnet18-none").mkdir(parents=True)
    (runs / "resnet18-none" / "trace.json").write_text(json.dumps({
        "complete": True, "status": "diverged",
        "diverged": {"epoch": 0, "step": 3, "reason": "loss is not finite"},
        "run": {"network": "resnet18", "variant": "none"}}))
    (runs / "resnet34-all").mkdir()
    (runs / "resnet34-all" / "error.json").write_text(json.dumps(
        {"error": "ReplayMismatch", "message": "pass 2 left pass 1 at epoch 2", "traceback": ""}))
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "bn", "preset": "smoke", "dataset": "cifar10-jpeg"}))

    rep = build_report(tmp_path)
    status = {r["name"]: r["status"] for r in rep["runs"]}
    assert {k: v for k, v in status.items() if v != "missing"} == {
        "resnet18-none": "diverged", "resnet18-first": "ok", "resnet18-all": "ok", "resnet34-all": "error"}
    assert len(status) == 12  # every run of the suite has a row; the 8 not measured say so
    claims = {c["claim"]: c for c in rep["claims"]}
    # the diverged run ranks slowest; its gamma is unknown, so the gamma order cannot be decided
    assert claims["resnet18 speed order"]["verdict"] == "PASS"
    assert claims["resnet18 speed order"]["numbers"]["none"] == "diverged"
    assert claims["resnet18 gamma order (theory)"]["verdict"] == "NOT APPLICABLE"
    assert claims["resnet34 gamma order (paper)"]["verdict"] == "NOT APPLICABLE"
    md = (tmp_path / "report.md").read_text()
    assert "DIVERGED at step 3 (epoch 0): loss is not finite" in md
    assert "ERROR: ReplayMismatch: pass 2 left pass 1 at epoch 2" in md
    assert (tmp_path / rep["figure"]).exists()
    # two measured runs of 1 s + 2 s each: the runs' own time, beside the suite's wall time
    assert "the runs' own pass 1 + pass 2 time adds up to 6 s (spread" in md


def _suite_folder(tmp_path):
    runs = tmp_path / "runs"
    for variant, decay in (("first", 0.5), ("all", 0.3)):
        synthetic_trace(1, "resnet18", variant, decay=decay).save(runs / f"resnet18-{variant}" / "trace")
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "bn", "preset": "smoke", "dataset": "cifar10-jpeg",
                                                     "command": "gpcheck deep --suite bn --preset smoke"}))
    return tmp_path


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "runs/resnet18-all/trace.json").write_text('{"status": "ok", "npz_sha'), "trace.json is not readable"),
    (lambda d: (d / "runs/resnet18-all/trace.npz").write_bytes(b"PK\x03"), "sidecar trace.json describes"),
    (lambda d: (d / "runs/resnet18-all/trace.npz").unlink(), "no such file"),
    (lambda d: (d / "runs/resnet18-all/error.json").write_text("{"), "error.json is damaged"),
    (lambda d: shutil.copy(d / "runs/resnet18-first/trace.npz", d / "runs/resnet18-all/trace.npz"), "sha256 differs"),
    (lambda d: [shutil.copy(d / f"runs/resnet18-first/trace.{x}", d / f"runs/resnet18-all/trace.{x}") for x in ("npz", "json")],
     "holds the trace of another run"),
])
def test_a_damaged_run_is_an_error_row_that_says_what_to_do(tmp_path, damage, match):
    d = _suite_folder(tmp_path)
    damage(d)
    res = CliRunner().invoke(main, ["report", str(d)])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads((d / "report.json").read_text())["runs"]}
    assert rows["resnet18-first"]["status"] == "ok"
    assert rows["resnet18-all"]["status"] == "error" and match in rows["resnet18-all"]["error"]
    assert "rerun `gpcheck deep --suite bn --preset smoke`" in rows["resnet18-all"]["error"] or "error.json" not in match


def test_manifest_catches_a_whole_run_folder_swapped(tmp_path):
    d = _suite_folder(tmp_path)
    from gamma_theory.files import read_json
    digests = {n: read_json(d / f"runs/{n}/trace.json")["npz_sha256"] for n in ("resnet18-first", "resnet18-all")}
    (d / "manifest.json").write_text(json.dumps({"runs": {n: {"status": "ok", "trace_sha256": h}
                                                          for n, h in digests.items()}}))
    synthetic_trace(2, "resnet18", "all", decay=0.2).save(d / "runs/resnet18-all/trace")  # consistent, but new
    rep = build_report(d)
    row = {r["name"]: r for r in rep["runs"]}["resnet18-all"]
    assert row["status"] == "error" and "manifest.json" in row["error"]


@pytest.mark.parametrize("suite_json, match", [
    ('{"suite": "bn", "pres', "suite.json is not readable JSON"),
    ("[1, 2]", "does not hold a JSON object"),
    ('{"suite": "bn", "preset": "smoke", "seeds": "3"}', "says seeds '3'"),
    ('{"suite": "bn", "preset": "smoke", "seeds": 0}', "says seeds 0"),
    ('{"suite": "bn", "preset": "smoke", "labels": "shuffled"}', "says labels 'shuffled'"),
])
def test_report_on_a_bad_suite_json_is_one_line(tmp_path, suite_json, match):
    d = _suite_folder(tmp_path)
    (d / "suite.json").write_text(suite_json)
    res = CliRunner().invoke(main, ["report", str(d)])
    assert res.exit_code == 2 and match in res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("gpcheck: error:")


def test_report_writes_only_inside_its_folder(tmp_path):
    d = _suite_folder(tmp_path / "suite")
    (tmp_path / "README.md").write_text("mine\n")
    assert CliRunner().invoke(main, ["report", str(d)]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "suite"]
    assert (tmp_path / "README.md").read_text() == "mine\n"


def test_check_on_an_npz_whose_lr_is_a_string(tmp_path):
    n = 3
    np.savez(tmp_path / "t.npz", loss=np.ones(n), loss_star=np.zeros(n), inner=np.ones(n), update_sq=np.ones(n),
             dist_sq=np.ones(n), lr="0.1", dist0_sq=1.0)
    res = CliRunner().invoke(main, ["check", str(tmp_path / "t.npz")])
    assert res.exit_code == 2 and "scalar 'lr' must be a real number" in res.output


# -- baseline and theta* sensitivity, on hand-made run summaries -----------------------------------
def _path(holds, gamma=1.0, speed=0.1, converged=True, neg=0, median=1.0):
    return {"dist0": 1.0, "steps": 10,
            "theory": {"holds": holds, "gamma_max": gamma if holds else None,
                       "gamma_max_x_dist0_sq": gamma if holds else None, "n_violating": 0 if holds else 3,
                       "n_undecidable": 0, "rests_on_undecidable": False},
            "paper": {"gamma_median": median, "gamma_median_x_dist0_sq": median, "share_positive": 1.0},
            "negative_gap_steps": neg, "min_gap": -1.0 if neg else 0.0, "distance_holds": holds,
            "convergence": {"converged": converged, "mean_loss": speed}}


def _summary(variant, main, **companions):
    return {"name": f"net-{variant}", "status": "ok", "run": {"network": "net", "variant": variant, "epochs": 10,
                                                             "seed": 0},
            "check": {}, "theta_star_eval": {}, **main, "companions": companions}


def test_baseline_claim_passes_only_when_every_random_theta_star_is_rejected():
    from validation.companion_claims import baseline_claim
    from validation.run_summary import against

    ok = [_summary("a", _path(True), random=_path(False)), _summary("b", _path(True), random=_path(False))]
    assert baseline_claim(against(ok, "random"))["verdict"] == "PASS"
    vacuous = [ok[0], _summary("b", _path(True), random=_path(True, neg=10, median=None))]
    c = baseline_claim(against(vacuous, "random"))
    assert c["verdict"] == "FAIL" and "1 of 2 runs" in c["why"] and "Fact 1" in c["why"]
    assert "net-b (10 steps with a loss below the random point's, none above" in c["why"]
    assert c["numbers"] == {"net-a": "rejected", "net-b": "passes"}
    assert baseline_claim(against([_summary("a", _path(True))], "random"))["verdict"] == "NOT APPLICABLE"


def test_a_claim_that_flips_with_theta_star_is_fragile():
    from validation.claims import suite_claims
    from validation.companion_claims import baseline_claim, theta_star_sensitivity
    from validation.run_summary import against, run_numbers, sensitivity_runs
    orders = {"net": [["none"], ["first"]]}
    runs = [_summary("none", _path(True, gamma=1.0, speed=0.3), epoch0005=_path(True, gamma=3.0, speed=0.5),
                     epoch0009=_path(True, gamma=1.0, speed=0.35)),
            _summary("first", _path(True, gamma=2.0, speed=0.2), epoch0005=_path(True, gamma=2.0, speed=0.4),
                     epoch0009=_path(True, gamma=2.0, speed=0.25))]
    claims = suite_claims(orders, [run_numbers(s) for s in runs])
    claims.insert(1, baseline_claim(against(runs, "random")))
    sens = theta_star_sensitivity(sensitivity_runs(runs), orders, claims)
    assert sens["theta_stars"] == ["last iterate", "50%", "90%"]
    by = {c["claim"]: c for c in claims}
    order = by["net gamma order (theory)"]
    assert sens["verdicts"]["net gamma order (theory)"] == {"last iterate": "PASS", "50%": "FAIL", "90%": "PASS"}
    assert order["fragile"] and "FRAGILE" in order["why"]
    assert not by["net speed order"]["fragile"]  # the speed order holds against every theta*
    assert not by["a random theta* is rejected (baseline)"]["fragile"]  # NOT APPLICABLE everywhere: no flip


def test_claims_table_cells_never_split_on_a_pipe(tmp_path):
    """' | FRAGILE' in a why must not end a table cell (the first-screen table: claim, kind, verdict, why)."""
    d = _suite_folder(tmp_path)
    build_report(d)
    md = (d / "report.md").read_text()
    rows = [line for line in md.split("| claim | kind | verdict |")[1].split("\n\n")[0].splitlines()[2:]]
    assert rows and all(len(line.replace("\\|", "").split("|")) == 6 for line in rows), rows


def test_the_first_screen_answers_what_held(tmp_path):
    """Question, answer, one row per network and variant, and the claims with their tally come before
    the facts of the run; the statements and numbers are folded below."""
    d = _suite_folder(tmp_path)
    build_report(d)
    md = (d / "report.md").read_text()
    order = [md.index(x) for x in ("**Question.**", "**Answer.**", "| network | variant | converged |",
                                   "## Claims", "claims:", "<details><summary>Every claim", "## What ran")]
    assert order == sorted(order)
    assert "Definition 1 on converged paths" in md.split("## Claims")[0]


def test_the_wall_time_table_says_how_the_steps_ran_only_where_graphs_ran():
    from validation.report_sections import timing_rows

    def run(name, p1, p2):
        return {"name": name, "run": {"epochs": 2}, "steps": 8, "num_params": 10,
                "pass1": {"wall_s": 1.0, "ms_per_step": 2.0, **({"step_path": {"path": p1}} if p1 else {})},
                "pass2": {"wall_s": 1.0, "ms_per_step": 2.0, **({"step_path": {"path": p2}} if p2 else {})}}

    plain = timing_rows([run("a", "eager", "eager"), run("b", None, None)])
    assert len(plain) == 4 and "steps ran as" not in plain[0] and plain[0].count("|") == 9
    rows = timing_rows([run("a", "cuda-graphs", "cuda-graphs, then eager"), run("b", None, None)])
    assert "steps ran as (pass 1 / pass 2)" in rows[0] and rows[1].count("|") == rows[0].count("|") == 10
    assert rows[2].endswith("| cuda-graphs / cuda-graphs, then eager |") and rows[3].endswith("| ? / ? |")


def test_a_report_for_a_suite_gpcheck_does_not_list_still_builds(tmp_path):
    """A suite (and preset) this version does not know: the report is built from what suite.json
    says (its runs' specs) and what the traces hold, with no order the code would have to know."""
    d = _suite_folder(tmp_path)
    runs = [spec("resnet18", v) for v in ("first", "all", "none")]
    (d / "suite.json").write_text(json.dumps({"suite": "dropout", "preset": "huge", "dataset": "cifar10-jpeg",
                                              "runs": runs, "command": "gpcheck deep --suite dropout"}))
    res = CliRunner().invoke(main, ["report", str(d)])
    assert res.exit_code == 0, res.output
    rep = json.loads((d / "report.json").read_text())
    assert rep["suite"] == "dropout" and rep["preset"] == "huge" and rep["question"] is None
    status = {r["name"]: r["status"] for r in rep["runs"]}
    assert status == {"resnet18-first": "ok", "resnet18-all": "ok", "resnet18-none": "missing"}
    names = {c["claim"] for c in rep["claims"]}
    assert "principle holds on converged paths (Definition 1)" in names
    assert not any(n.endswith("speed order") for n in names)  # no stated order: none is invented
    assert "# gpcheck: `dropout` suite, `huge` preset" in (d / "report.md").read_text()


def test_suite_info_is_the_validated_suite_json(tmp_path):
    from validation.deep_report import ReportError, suite_info

    assert suite_info(tmp_path) == {}
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "anything", "preset": "new", "seeds": 2}))
    assert suite_info(tmp_path)["suite"] == "anything"
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "anything", "preset": "new", "seeds": 0}))
    with pytest.raises(ReportError, match="says seeds 0"):
        suite_info(tmp_path)
