"""The transformer suite (deep/transformer_suite.py): its smoke preset end to end (every number of
its report recomputed from the run folders it wrote), its knob claims on small constructed runs
(each able to fail), and the committed reports/transformer-cpu rebuilt with them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deep import transformer_suite as ts
from deep.folder import RunFolder
from deep.transformer_suite import PRESETS, run_suite
from gamma_theory import definition_1, load_trace
from gamma_theory.identity import prefix_gammas, speed_identity
from gamma_theory.phases import definition_1_by_phase
from gamma_theory.related import related_conditions
from validation.claims import FAIL, NA, PASS
from validation.util import jsonable


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
        # the knob claims' inputs, from the same trace
        si = speed_identity(tr, d.gamma_max)
        assert r["speed_identity"]["rel_residual"] == si.rel_residual and r["speed_identity"]["holds"]
        pre = prefix_gammas(tr)
        assert r["prefix"]["gamma_max_x_d0"] == jsonable(pre.gamma_max_x_d0)
        assert r["prefix"]["median_x_d0"] == jsonable(pre.median_x_d0) and r["prefix"]["steps"] == pre.steps
        assert r["related"] == jsonable([c.to_dict() for c in related_conditions(tr)])
        assert r["dist0_sq"] == tr.dist0_sq and r["min_gap"] == float(tr.gap.min())
    names = [c["claim"] for c in report["claims"]]
    assert "gamma-speed identity (theta* = last iterate)" in names
    assert "norm pre-LN vs none: speed order" in names
    assert "optimizer AdamW vs SGD: gamma order (matched loss, raw)" in names
    assert not any("SGD-momentum" in n for n in names)  # a pair whose variant the preset lacks is left out
    assert "## Findings" in md and "## Related conditions per run" in md and "## Over seeds, per variant" in md
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


# -- the knob claims on constructed runs -------------------------------------------------------
NORM_POST = next(p for p in ts.PAIRS if p.technique == "norm-post")
SGDM = next(p for p in ts.PAIRS if p.without == "momentum")


def _run(variant, seed=0, mem=None, loss=1e-3, acc=None, gamma=None, dist0_sq=100.0, prefix=None, related=(),
         residual=1e-14, diverged=None, n_violating=3):
    """A run dict with what the claims read (summarize()'s keys)."""
    acc = (1.0 if mem is not None else 0.5) if acc is None else acc
    return {"name": f"{variant}-s{seed}", "variant": variant, "seed": seed, "steps": 80, "diverged": diverged,
            "final_train_accuracy": acc, "final_train_loss": loss, "final_held_out_accuracy": 0.0, "wall_s": 1.0,
            "converged": acc == 1.0 and not diverged,
            "memorization_epoch": mem, "grokking_epoch": None,
            "definition_1": {"holds": gamma is not None, "gamma_max": gamma,
                             "dimensionless": None if gamma is None else gamma * dist0_sq,
                             "n_violating": 0 if gamma is not None else n_violating, "share_positive": 1.0},
            "phases": {"phases": []}, "against": {}, "dist0_sq": dist0_sq, "min_gap": 0.0, "n_negative_gap": 0,
            "speed_identity": {"gamma_bar": 1.0 / (mem or 500), "predicted": 1.0 / (mem or 500),
                               "rel_residual": residual, "end_ratio": 0.0, "ends_at_star": True,
                               "gamma_max_over_bar": None, "holds": residual <= 1e-9},
            "prefix": prefix, "related": list(related)}


def _prefix(losses, gammas, medians=None):
    return {"steps": [8 * (i + 1) for i in range(len(losses))], "epoch_loss": list(losses),
            "gamma_max_x_d0": list(gammas), "median_x_d0": list(medians or gammas)}


def test_speed_order_memorization_first_then_the_final_loss():
    fast, slow = _run("norm-post", mem=50), _run("base", mem=100)
    c = ts.speed_order_claim(NORM_POST, {"norm-post": fast, "base": slow})
    assert c["verdict"] == PASS and c["margin"] == 50 and "memorized at epoch 50" in c["why"]
    c = ts.speed_order_claim(NORM_POST, {"norm-post": _run("norm-post", mem=150), "base": slow})
    assert c["verdict"] == FAIL and c["why"].startswith("base is faster") and c["margin"] == -50
    # a variant that never memorizes is slower than one that does, whatever its loss
    c = ts.speed_order_claim(NORM_POST, {"norm-post": _run("norm-post", loss=1e-9), "base": slow})
    assert c["verdict"] == FAIL and "never memorized" in c["why"] and c["margin"] is None
    # neither memorizes: the final training loss decides; a diverged run is the slowest
    c = ts.speed_order_claim(NORM_POST, {"norm-post": _run("norm-post", loss=0.1), "base": _run("base", loss=0.2)})
    assert c["verdict"] == PASS
    div = _run("base", loss=float("nan"), diverged={"epoch": 3, "reason": "loss is not finite"})
    c = ts.speed_order_claim(NORM_POST, {"norm-post": _run("norm-post", loss=4.0), "base": div})
    assert c["verdict"] == PASS and "diverged in epoch 3" in c["why"]
    c = ts.speed_order_claim(NORM_POST, {"norm-post": _run("norm-post", mem=60), "base": _run("base", mem=60)})
    assert c["verdict"] == NA and "tie" in c["why"]
    assert ts.speed_order_claim(NORM_POST, {"base": slow})["verdict"] == NA


def test_end_point_gamma_order_can_reverse_and_its_two_forms_can_disagree():
    # norm-post memorizes first with the smaller raw gamma but the larger gamma x dist0^2
    runs = {"norm-post": _run("norm-post", mem=50, gamma=0.01, dist0_sq=100.0),
            "base": _run("base", mem=100, gamma=0.05, dist0_sq=10.0)}
    raw = ts.gamma_order_claim(NORM_POST, runs, "end point", "raw")
    assert raw["verdict"] == FAIL and raw["why"].startswith("REVERSED")
    assert "paper's direction is REVERSED" in raw["why"]
    assert raw["values"] == {"norm-post": 0.01, "base": 0.05} and raw["margin"] < 0
    dim = ts.gamma_order_claim(NORM_POST, runs, "end point", "x dist0^2")
    assert dim["verdict"] == PASS and dim["values"] == {"norm-post": 1.0, "base": 0.5}
    assert "IDENTITY-BOUND" in raw["statement"]
    # the technique slower: the row decides Theorem 1's direction, and says the technique lost the race
    runs["norm-post"]["memorization_epoch"] = 150
    c = ts.gamma_order_claim(NORM_POST, runs, "end point", "raw")
    assert c["verdict"] == PASS and c["numbers"]["faster"] == "base" and "is the slower here" in c["why"]


def test_different_learning_rates_compare_eta_times_gamma():
    # AdamW (lr 1e-3) faster with gamma 1.0; SGD-momentum (lr 0.5) with 0.01: raw, AdamW's is larger, but
    # eta x gamma (what Theorem 1 item 3 ties to speed) is 1e-3 vs 5e-3: reversed
    runs = {"base": {**_run("base", mem=50, gamma=1.0), "config": {"lr": 1e-3}},
            "momentum": {**_run("momentum", mem=90, gamma=0.01), "config": {"lr": 0.5}}}
    c = ts.gamma_order_claim(SGDM, runs, "end point", "raw")
    assert c["verdict"] == FAIL and c["values"] == {"base": 1e-3, "momentum": 5e-3}
    assert c["numbers"]["compared"] == "eta x gamma" and c["why"].startswith("learning rates differ")
    runs["momentum"]["config"]["lr"] = 1e-3
    assert ts.gamma_order_claim(SGDM, runs, "end point", "raw")["verdict"] == PASS


def test_end_point_gamma_order_is_not_applicable_without_a_gamma_or_convergence():
    runs = {"norm-post": _run("norm-post", mem=50, gamma=0.01), "base": _run("base", mem=100, n_violating=7)}
    c = ts.gamma_order_claim(NORM_POST, runs, "end point", "raw")
    assert c["verdict"] == NA and "base: Definition 1 fails (7 steps" in c["why"]
    runs = {"norm-post": _run("norm-post", mem=50, gamma=0.01), "base": _run("base", gamma=0.5, acc=0.9)}
    c = ts.gamma_order_claim(NORM_POST, runs, "end point", "x dist0^2")
    assert c["verdict"] == NA and "base: did not converge (final train acc 0.900)" in c["why"]


def test_matched_loss_order_reads_the_prefix_up_to_a_common_loss_and_can_reverse():
    # the faster reaches 0.05 in epoch 3 (gamma x d0 2 there), the slower in epoch 5 (9): reversed
    fast = _run("norm-post", mem=3, dist0_sq=4.0, prefix=_prefix([4, 1, 0.04, 0.01], [5, 4, 2, 2]))
    slow = _run("base", mem=5, dist0_sq=1.0, prefix=_prefix([4, 2, 0.5, 0.1, 0.05], [9, 9, 9, 9, 9]))
    runs = {"norm-post": fast, "base": slow}
    dim = ts.gamma_order_claim(NORM_POST, runs, "matched loss", "x dist0^2")
    assert dim["verdict"] == FAIL and "REVERSED" in dim["why"] and dim["values"] == {"norm-post": 2, "base": 9}
    assert "CAN FAIL" in dim["statement"] and dim["numbers"]["matched loss"] == "0.05"
    raw = ts.gamma_order_claim(NORM_POST, runs, "matched loss", "raw")
    assert raw["values"] == {"norm-post": 0.5, "base": 9.0} and raw["verdict"] == FAIL
    slow["prefix"] = _prefix([4, 2, 0.5, 0.1, 0.05], [1, 1, 1, 1, 1])
    assert ts.gamma_order_claim(NORM_POST, runs, "matched loss", "x dist0^2")["verdict"] == PASS
    # no gamma fits the slower's prefix: NOT APPLICABLE, yet the median reading decides
    slow["prefix"] = _prefix([4, 2, 0.5, 0.1, 0.05], [1, 1, None, None, None], [3, 3, 3, 3, 3])
    c = ts.gamma_order_claim(NORM_POST, runs, "matched loss", "x dist0^2")
    assert c["verdict"] == NA and "base: no gamma fits its first 5 epochs" in c["why"]
    med = ts.gamma_order_claim(NORM_POST, runs, "matched loss", "x dist0^2", "paper")
    assert med["verdict"] == FAIL and med["values"] == {"norm-post": 2, "base": 3}


def test_gamma_tracks_speed_is_kendalls_tau_over_a_seeds_converged_variants():
    runs = {v: _run(v, mem=m, gamma=g) for v, m, g in (("a", 10, 0.01), ("b", 20, 0.02), ("c", 30, 0.03))}
    runs["d"] = _run("d", acc=0.9, gamma=9.0)  # not converged: left out
    c = ts.tracks_speed_claim(runs, "end point", "raw")
    assert c["verdict"] == FAIL and c["margin"] == -1.0 and c["compared"] == ["a", "b", "c"]
    assert "identity-bound" in c["claim"] and "d" not in c["numbers"]
    runs["a"]["definition_1"].update(gamma_max=0.05, dimensionless=5.0)
    runs["b"]["definition_1"].update(gamma_max=0.04, dimensionless=4.0)
    assert ts.tracks_speed_claim(runs, "end point", "x dist0^2")["verdict"] == PASS
    for v, g in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        runs[v]["prefix"] = _prefix([4, 1, 0.1], [g, g, g])
    runs["d"]["prefix"] = _prefix([4, 4, 4], [1, 1, 1])
    c = ts.tracks_speed_claim(runs, "matched loss", "x dist0^2")
    assert "can fail" in c["claim"] and c["verdict"] == FAIL and c["margin"] == -1.0
    runs["a"]["definition_1"]["gamma_max"] = None
    runs["b"]["definition_1"]["gamma_max"] = None
    c = ts.tracks_speed_claim(runs, "end point", "raw")
    assert c["verdict"] == NA and "Definition 1 fails" in c["why"]


def test_identity_row_counts_the_traces_and_fails_on_a_broken_one():
    runs = [_run("base", mem=10), _run("gelu", mem=20), _run("sgd", seed=1)]
    c = ts.identity_row(runs)
    assert c["verdict"] == PASS and c["kind"] == "consequence" and c["numbers"]["runs"] == 3
    assert "s0: tau 1 over 2 runs" in c["numbers"]["order by mean gamma = order by 1 / (2 sum eta_k gap_k)"]
    assert "IS ordering them by their accumulated loss gap" in c["statement"]
    runs[1]["speed_identity"]["rel_residual"] = 1e-3
    c = ts.identity_row(runs)
    assert c["verdict"] == FAIL and "transformer/gelu" in c["why"]


def test_related_claim_counts_each_condition_on_converged_paths():
    def cond(name, holds):
        return {"condition": name, "holds": holds, "constants": {}, "share": 1.0 if holds else 0.5}

    runs = [_run("base", mem=10, related=[cond("RSI", True), cond("star-convex path", True)]),
            _run("gelu", mem=20, related=[cond("RSI", True), cond("star-convex path", False)]),
            _run("sgd", related=[cond("RSI", False), cond("star-convex path", False)])]  # not converged
    c = ts.related_claim(runs)
    assert c["verdict"] == FAIL and c["numbers"] == {"RSI": "2 of 2", "star-convex path": "1 of 2"}
    runs[1]["related"][1]["holds"] = True
    assert ts.related_claim(runs)["verdict"] == PASS


def test_claims_are_decided_per_seed_and_summarized_over_seeds():
    runs = [_run("norm-post", seed=s, mem=50, gamma=g, prefix=_prefix([4, 0.1], [1, 1]))
            for s, g in ((0, 0.1), (1, 0.001))]
    runs += [_run("base", seed=s, mem=100, gamma=0.01, prefix=_prefix([4, 0.1], [1, 1])) for s in (0, 1)]
    per = ts.per_seed_claims(runs)
    assert set(per) == {0, 1}
    raw = {s: next(c for c in cs if c["claim"] == "norm post-LN vs none: gamma order (end point, raw)")
           for s, cs in per.items()}
    assert raw[0]["verdict"] == PASS and raw[1]["verdict"] == FAIL
    rows = {c["claim"]: c for c in ts.claims(runs, per)}
    over = rows["norm post-LN vs none: gamma order (end point, raw)"]
    assert over["verdict"] == FAIL and over["numbers"]["holds in"] == "1 of 2 seeds" and "95% CI" in over["numbers"]
    assert over["per_seed"]["s1"]["verdict"] == FAIL
    assert rows["norm post-LN vs none: speed order"]["verdict"] == PASS
    assert not any("AdamW vs Adam" in n for n in rows)  # no adam run: the pair is left out
    report = {"preset": "t", "note": "", "runs": runs, "claims": list(rows.values()),
              "claims_per_seed": {f"s{s}": c for s, c in per.items()}, "over_seeds": ts.seed_table(runs)}
    found = ts.findings(report)
    assert any(x.startswith("**Reversals**") and "norm post-LN vs none (end point, raw, s1): faster norm-post 1.00e-03 "
               "vs base 0.01" in x for x in found)
    md = ts.render(report)
    assert "| norm post-LN vs none: gamma order (end point, raw) | **PASS**" in md and "## Findings" in md


def test_seed_table_gives_mean_range_and_count():
    runs = [_run("base", seed=0, mem=100, gamma=0.1), _run("base", seed=1, mem=140), _run("base", seed=2, mem=120)]
    t = ts.seed_table(runs)["base"]
    assert t["seeds"] == [0, 1, 2]
    assert t["memorization_epoch"] == {"n": 3, "of": 3, "values": [100.0, 140.0, 120.0], "mean": 120.0, "min": 100.0,
                                       "max": 140.0}
    assert t["gamma_max"]["n"] == 1 and t["grokking_epoch"] == {"n": 0, "of": 3, "values": []}
    assert ts._spread(t["memorization_epoch"], 0) == "120 [100, 140] (3 of 3)"


@pytest.mark.slow  # 17 s for seeds 0-1 on the loaded 2-core machine; more with each seed added
def test_the_committed_cpu_report_rebuilds_with_the_knob_claims(tmp_path):
    src = Path(__file__).resolve().parent.parent / "reports" / "transformer-cpu"
    if not (src / "runs").exists():
        pytest.skip("reports/transformer-cpu is not in this checkout")
    committed = json.loads((src / "report.json").read_text())
    folder = tmp_path / "transformer-cpu"
    shutil.copytree(src / "runs", folder / "runs")
    shutil.copy(src / "transformer_suite.json", folder)
    rep = ts.rebuild(folder)
    assert rep["not_measured"] == committed["not_measured"]
    old = [c for c in committed["claims"] if "kind" not in c]  # the rows the report had before the knob claims
    assert len(old) == 3 and rep["claims"][:3] == old
    for old, new in zip(committed["runs"], rep["runs"]):
        assert {k: new[k] for k in ("definition_1", "memorization_epoch", "grokking_epoch", "converged")} == \
            {k: old[k] for k in ("definition_1", "memorization_epoch", "grokking_epoch", "converged")}
    rows = {c["claim"]: c for c in rep["claims"]}
    ident = rows["gamma-speed identity (theta* = last iterate)"]
    assert ident["verdict"] == PASS and ident["numbers"]["runs"] == len(rep["runs"])
    seeds = sorted({r["seed"] for r in rep["runs"]})
    for pair in ts.PAIRS:
        name = ts._pair_label(pair)
        assert rows[f"{name}: speed order"]["verdict"] in (PASS, FAIL)
        for where, form, reading in ts.READINGS:
            row = rows[f"{name}: gamma order ({ts._reading_name(where, form, reading)})"]
            assert row["verdict"] in (PASS, FAIL, NA)
            assert set(row.get("per_seed", {"s0": 0})) <= {f"s{s}" for s in seeds}
    assert rows["the related conditions hold on converged paths"]["numbers"]
    md = (folder / "report.md").read_text()
    for part in ("## Findings", "## Per-knob orders, seed by seed", "## gamma tracks speed, seed by seed",
                 "## Over seeds, per variant", "## Related conditions per run", "identity-bound", "can fail"):
        assert part in md
    assert {p.name for p in (folder / "figures").iterdir()} == {"paths.png", "grokking.png"}
