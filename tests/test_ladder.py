"""`gpcheck ladder`: the reports say what the numbers say, and the closed form holds."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gamma_theory import Trace, check_trace, load_trace
from gamma_theory import problems as P
from validation.figures import decimate, plot_paths
from validation.ladder import run_ladder
from validation.util import feasible_set, fmt3, jsonable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ladder_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder")
    report = run_ladder(out_dir=str(out), seed=0, progress=False)
    return out, report


def _strict(text):
    def no_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=no_constant)


def test_report_json_structure(ladder_out):
    out, report = ladder_out
    on_disk = _strict((out / "report.json").read_text())
    assert on_disk == report
    for key in ("command", "timestamp_utc", "seed", "environment", "wall_s", "runs", "n_runs", "n_pass"):
        assert key in report, key
    assert report["command"].startswith("gpcheck ladder")
    assert report["timestamp_utc"].endswith("Z")
    for key in ("python", "torch", "numpy", "platform"):
        assert report["environment"][key]
    rungs = P.ladder(0)
    assert [(r["rung"], r["optimizer"]) for r in report["runs"]] == [
        (p.name, o) for p in rungs for o in P.optimizer_names()]
    assert report["n_runs"] == len(rungs) * len(P.optimizer_names())
    by_name = {p.name: p for p in rungs}
    for r in report["runs"]:
        p = by_name[r["rung"]]
        assert r["description"] == p.description
        assert r["lr"] == p.lr[r["optimizer"]]
        assert r["epochs"] == p.epochs and r["batch_size"] == p.batch_size
        assert r["theta_star_rule"] == p.theta_star_rule
        assert r["wall_s"] > 0
        c = r["check"]
        assert set(c) == {"holds", "definition_1", "theorem_1", "recording_identity"}
        assert set(c["theorem_1"]) == {"distance_monotone", "loss_convergence", "rate_bound"}


def test_verdicts_follow_the_numbers(ladder_out):
    _, report = ladder_out
    for r in report["runs"]:
        c = r["check"]
        t1 = c["theorem_1"]
        holds = (c["definition_1"]["holds"] and t1["distance_monotone"]["holds"]
                 and t1["loss_convergence"]["holds"] is not False and t1["rate_bound"]["holds"] is True)
        assert r["verdict"] == ("PASS" if holds else "FAIL"), r["rung"] + "/" + r["optimizer"]
        assert c["holds"] == holds
    assert report["n_pass"] == sum(r["verdict"] == "PASS" for r in report["runs"])


def test_saved_traces_recheck_to_the_same_numbers(ladder_out):
    out, report = ladder_out
    for r in report["runs"]:
        path = out / r["trace"]
        assert path.name == f"{r['rung']}-{r['optimizer']}.npz" and path.parent.name == "traces"
        assert jsonable(check_trace(load_trace(path)).to_dict()) == r["check"]


def test_markdown_has_a_row_per_run_and_the_figure(ladder_out):
    out, report = ladder_out
    md = (out / "report.md").read_text()
    assert md.startswith("# ")
    assert f"`{report['command']}`" in md and report["command"].startswith("gpcheck ladder --out ")
    assert "## Findings" in md
    assert "](figures/ladder.png)" in md
    verdicts, related = md.split("## Related path conditions")
    rows = [line for line in verdicts.splitlines() if line.startswith("| ") and not line.startswith("| rung")]
    assert len(rows) == len(report["runs"])
    # the related conditions: a row per run, a column per condition, each from the saved trace
    rel = [line for line in related.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert len(rel) == len(report["runs"])
    for r in report["runs"]:
        assert [c["condition"] for c in r["related"]] == ["regularity", "star-convex path", "RSI", "alpha-beta",
                                                          "Definition 1 (gradient)"]
        assert all(c["holds"] is not None for c in r["related"])  # the ladder records gradients
    for r in report["runs"]:
        row = next(x for x in rows if x.startswith(f"| {r['rung']} | {r['optimizer']} |"))
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert len(cells) == 12
        d1 = r["check"]["definition_1"]
        assert cells[3] == feasible_set(d1)
        assert cells[4] == fmt3(d1["gamma_max"])
        assert cells[6] == str(d1["n_violating"])
        assert cells[-1] == f"**{r['verdict']}**"
        if r["verdict"] == "FAIL":
            assert f"- {r['rung']}/{r['optimizer']}: FAIL" in md
    png = out / "figures" / "ladder.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(out.rglob("*.tmp"))


def test_least_squares_sgd_passes_with_the_closed_form_gamma(ladder_out):
    _, report = ladder_out
    run = next(r for r in report["runs"] if r["rung"] == "least_squares" and r["optimizer"] == "sgd")
    assert run["verdict"] == "PASS"
    prob = P.ladder(0)[0]
    assert prob.name == "least_squares"
    res = P.run_path(prob, "sgd", seed=0)
    L = P.ls_batch_smoothness(prob.data["X"], res.batches)
    lr = res.trace.lr
    assert lr < 2.0 / L
    floor = (2.0 - lr * L) / res.trace.dist0_sq
    gamma_max = float(run["check"]["definition_1"]["gamma_max"])
    assert gamma_max >= floor * (1 - 1e-12)
    assert math.isclose(run["closed_form"]["gamma_floor"], floor, rel_tol=1e-12)


def test_fmt3():
    assert fmt3(0.0239102) == "2.39e-02"
    assert fmt3(0.958) == "0.958" and fmt3(14.33) == "14.3" and fmt3(433) == "433"
    assert fmt3(12345.0) == "1.23e+04" and fmt3(0) == "0" and fmt3(None) == "n/a"
    assert fmt3("inf") == "inf" and fmt3(float("nan")) == "nan"
    assert feasible_set({"holds": True, "gamma_low": 0.0, "gamma_high": 0.0239}) == "(0, 2.39e-02]"
    assert feasible_set({"holds": True, "gamma_low": 0.5, "gamma_high": "inf"}) == "[0.5, inf)"
    assert feasible_set({"holds": False}) == "empty"


def test_decimate_keeps_extremes():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 500.0)
    y[12_345] = -50.0
    y[777] = np.nan
    xs, ys = decimate(x, y, 2000)
    assert len(xs) <= 2000 and np.all(np.diff(xs) > 0)
    assert ys.min() == -50.0 and np.isfinite(ys).all()


def test_plot_paths_copes_with_short_and_diverged_runs(tmp_path):
    n = 30
    diverged = Trace(loss=np.r_[np.linspace(1, 50, 20), [np.inf] * 10], loss_star=np.zeros(n),
                     inner=np.r_[np.ones(20), [np.nan] * 10], update_sq=np.ones(n),
                     dist_sq=np.r_[np.linspace(1, 40, 20), [np.inf] * 10], lr=0.1, dist0_sq=1.0,
                     epoch=np.arange(n) // 10)
    one = Trace(loss=[1.0], loss_star=[0.0], inner=[1.0], update_sq=[1.0], dist_sq=[1.0], lr=0.1, dist0_sq=1.0)
    neg = Trace(loss=[1.0, 0.5], loss_star=[0.0, 1.0], inner=[-1.0, 1.0], update_sq=[1.0, 1.0],
                dist_sq=[1.0, 1.3], lr=0.1, dist0_sq=1.0)
    out = plot_paths({"diverged": {"a": diverged, "b": neg}, "short": {"one": one}, "empty": {}},
                     tmp_path / "f" / "x.png", title="edge cases")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["x.png"]


def test_every_file_the_report_cites_exists(ladder_out):
    """The closed-form finding cited ARCHITECTURE.md, a file the project does not have."""
    import re

    out, _ = ladder_out
    md = (out / "report.md").read_text()
    repo = Path(__file__).resolve().parents[1]
    cited = set(re.findall(r"\b((?:[\w-]+/)*[\w-]+\.(?:py|md))\b", md)) - {"report.md"}
    assert "gamma_theory/problems.py" in cited and "tests/test_least_squares.py" in cited
    assert all((repo / c).is_file() for c in cited), sorted(c for c in cited if not (repo / c).is_file())
