"""`gpcheck report RUN_DIR`: the report of one measured run, held to numbers recomputed from its files."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import torch.nn.functional as F

from deep.data import DeviceData
from deep.losses import outputs
from deep.measure import measure
from deep.tensordata import TensorData
from gamma_theory import Trace, check_trace, load_trace
from gamma_theory import problems as P
from gamma_theory.schedules import cosine, run_scheduled_path
from validation import deep_report, run_report
from validation.cli import main
from validation.util import fmt3, jsonable, pct

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "reports" / "skip-cpu-cifar10-jpeg-resnet18"
PNG = b"\x89PNG\r\n\x1a\n"
AGAIN = "call deep.measure.measure() again with the same arguments and workdir to measure this run again"


@pytest.fixture(autouse=True)
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 3))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real measured run: a tiny MLP on 48 random uint8 images, 3 epochs (about a second)."""
    g = torch.Generator().manual_seed(0)
    data = DeviceData(torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8, generator=g),
                      torch.randint(0, 3, (48,), generator=g), device="cpu")
    before = torch.are_deterministic_algorithms_enabled()
    try:
        res = measure(_mlp, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5), data, lr=0.05, epochs=3,
                      batch_size=16, workdir=tmp_path_factory.mktemp("measured") / "my-mlp", progress=False)
    finally:
        torch.use_deterministic_algorithms(before)
    assert res.status == "ok" and len(res.trace) == 9
    return Path(res.workdir)


V, T = 11, 3  # the token model's vocabulary (= classes) and sequence length


class TokenNet(torch.nn.Module):
    """Embedding, dropout, a hidden layer: a token classifier whose step draws random numbers."""

    def __init__(self, out=V, dropout=0.2):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 8)
        self.drop = torch.nn.Dropout(dropout)
        self.fc = torch.nn.Linear(8 * T, 16)
        self.out = torch.nn.Linear(16, out)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.fc(self.drop(self.emb(x).flatten(1))))))


def _warmup_cosine(opt):
    """Warm-up over 3 steps, then cosine to a floor of 5%: eta_k differs from the base rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / 3) * (0.5 * (1 + math.cos(math.pi * min(k, 9) / 9)) + 0.05))


def _measure_own(workdir, model_fn, data, loss_fn, lr):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        res = measure(model_fn, lambda p: torch.optim.SGD(p, lr=lr, momentum=0.5), data, lr=lr, epochs=3,
                      batch_size=16, workdir=workdir, seed=1, data_seed=2, loss_fn=loss_fn,
                      scheduler_fn=_warmup_cosine, progress=False)
    finally:
        torch.use_deterministic_algorithms(before)
    assert res.status == "ok" and len(res.trace) == 9
    return Path(res.workdir)


@pytest.fixture(scope="module")
def scheduled_dropout(tmp_path_factory):
    """A real measured run of one's own: tokens (TensorData), dropout, a LambdaLR warm-up plus
    cosine, loss outputs(F.cross_entropy); 3 epochs of 3 steps (about a second)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (48, T), generator=g)
    return _measure_own(tmp_path_factory.mktemp("sched") / "tokens", TokenNet, TensorData(x, x.sum(1) % V),
                        outputs(F.cross_entropy), 0.2)


def _copy(src: Path, tmp_path: Path, name: str | None = None) -> Path:
    dst = tmp_path / (name or src.name)
    shutil.copytree(src, dst)
    return dst


def _report(path) -> tuple[object, dict | None]:
    res = CliRunner().invoke(main, ["report", str(path)])
    rep = Path(path) / "report.json"
    return res, (json.loads(rep.read_text()) if res.exit_code == 0 and rep.exists() else None)


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpcheck: error: "), res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_the_numbers_are_those_recomputed_from_the_trace(measured, tmp_path):
    run = _copy(measured, tmp_path)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    res, rep = _report(run)
    assert res.exit_code == 0, res.output
    trace = load_trace(run / "trace.npz")
    want = check_trace(trace)
    d1 = want.definition_1
    assert rep["run"]["check"] == jsonable(want.to_dict())
    assert rep["run"]["theory"]["holds"] == d1.holds
    if d1.holds:
        assert rep["gamma_max"] == d1.gamma_max
        assert math.isclose(rep["gamma_max_x_dist0_sq"], d1.gamma_max * trace.dist0_sq, rel_tol=1e-15)
        assert f"x ||theta_0 - theta*||^2 = {fmt3(d1.gamma_max * trace.dist0_sq)}" in res.output
    else:
        assert rep["gamma_max"] is None and rep["gamma_max_x_dist0_sq"] is None
    assert rep["dist0_sq"] == trace.dist0_sq
    # the per-step bounds and the convergence gate, from the columns by hand
    num = trace.inner - trace.lr / 2 * trace.update_sq
    gap = trace.loss - trace.loss_star
    up = num[gap > 0] / (trace.dist0_sq * gap[gap > 0])
    q = rep["run"]["bound_quantiles_x_dist0_sq"]
    assert math.isclose(q["q01"], np.quantile(up * trace.dist0_sq, 0.01), rel_tol=1e-12)
    assert math.isclose(q["q05"], np.quantile(up * trace.dist0_sq, 0.05), rel_tol=1e-12)
    epoch_loss = [trace.loss[trace.epoch == e].mean() for e in np.unique(trace.epoch)]
    assert rep["converged"] == bool(epoch_loss[-1] <= 0.05 * epoch_loss[0])
    assert math.isclose(rep["run"]["convergence"]["loss_ratio"], epoch_loss[-1] / epoch_loss[0], rel_tol=1e-12)
    claims = {c["claim"]: c for c in rep["claims"]}
    primary = claims["principle holds on converged paths (Definition 1)"]["verdict"]
    assert primary == ("NOT APPLICABLE" if not rep["converged"] else ("PASS" if d1.holds else "FAIL"))
    assert claims["principle holds on every path (pooled)"]["verdict"] == ("PASS" if d1.holds else "FAIL")
    # the first screen answers the four questions before anything is folded
    md = (run / "report.md").read_text()
    first = md[:md.index("<details>")]
    for q_ in ("Does Definition 1 hold on this path?", "Did it converge?", "Does theta* fit the training data?"):
        assert q_ in first
    assert ("**Yes.** One gamma fits" if d1.holds else "**No.** No gamma > 0 fits") in first
    assert f"{'Yes' if rep['converged'] else 'No'}.** The last epoch's mean training loss" in first
    # the related conditions were recorded (the gradient columns): reported
    assert trace.has_grad and {c["condition"] for c in rep["run"]["related"]} >= {"regularity", "RSI"}
    assert "| my-mlp | " in md
    # written only inside the run folder: report.md, report.json, figures/run.png
    after = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert after - before == {Path("my-mlp/report.md"), Path("my-mlp/report.json"), Path("my-mlp/figures"),
                              Path("my-mlp/figures/run.png")}
    assert (run / "figures" / "run.png").read_bytes()[:8] == PNG


def test_premise_numbers_are_trace_json_s(measured, tmp_path):
    run = _copy(measured, tmp_path)
    res, rep = _report(run)
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "trace.json").read_text())["theta_star_eval"]
    assert rep["run"]["theta_star_eval"] == ev
    md = (run / "report.md").read_text()
    first = md[:md.index("<details>")]
    for mode in ("eval", "train"):
        assert f"loss {fmt3(ev[mode]['loss'])}, accuracy {pct(ev[mode]['accuracy'])}" in first
    assert f"eval mode loss {fmt3(ev['eval']['loss'])}, accuracy {pct(ev['eval']['accuracy'])}" in res.output
    fits = next(c for c in rep["claims"] if c["claim"] == "theta* fits the training set (Fact 1)")
    assert fits["verdict"] == ("PASS" if ev["eval"]["accuracy"] == 1.0 else "FAIL")


def test_the_random_theta_star_and_the_other_companions_are_judged(measured, tmp_path):
    run = _copy(measured, tmp_path)
    res, rep = _report(run)
    assert res.exit_code == 0, res.output
    listed = json.loads((run / "trace.json").read_text())["companions"]
    rows = {r["companion"]: r for r in rep["companion_rows"]}
    assert set(rows) == set(listed) and "random" in rows
    for name, c in listed.items():
        want = check_trace(load_trace(run / c["file"])).definition_1
        assert rows[name]["holds"] == want.holds and rows[name]["gamma_max"] == want.gamma_max
        assert rows[name]["steps"] == c["steps"]
    base = next(c for c in rep["claims"] if c["kind"] == "baseline")
    assert base["verdict"] == ("FAIL" if rows["random"]["holds"] else "PASS")
    md = (run / "report.md").read_text()
    assert "**A random theta* (baseline):** " + ("Definition 1 holds against it too" if rows["random"]["holds"]
                                                 else "rejected") in md
    for name, r in rows.items():  # epoch companions named as suite reports name them: "67%" of 3 epochs
        assert r["label"] == (f"{round(100 * int(name[5:]) / 3)}%" if name.startswith("epoch") else name)
        assert f"| {r['label']} | " in md


@pytest.mark.parametrize("damage", ["trace bytes", "trace.json removed", "companion bytes", "trace.json edited",
                                    "error.json"])
def test_a_damaged_folder_is_one_line_and_exit_2(measured, tmp_path, damage):
    run = _copy(measured, tmp_path)
    if damage == "trace bytes":
        data = bytearray((run / "trace.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (run / "trace.npz").write_bytes(bytes(data))
        words = ["trace.npz", "sha256 differs", AGAIN]
    elif damage == "trace.json removed":
        (run / "trace.json").unlink()
        words = ["no trace.json", "cannot be verified"]
    elif damage == "companion bytes":
        p = run / "companions" / "random.npz"
        p.write_bytes(p.read_bytes()[:-7])
        words = ["random.npz", AGAIN]
    elif damage == "trace.json edited":
        info = json.loads((run / "trace.json").read_text())
        info["status"] = "finished"
        (run / "trace.json").write_text(json.dumps(info))
        words = ["trace.json", "status"]
    else:
        for f in ("trace.json", "trace.npz"):
            (run / f).unlink()
        (run / "error.json").write_text(json.dumps({"error": "ReplayMismatch", "message": "pass 2 left pass 1"}))
        words = ["ReplayMismatch: pass 2 left pass 1", "fix the cause and measure it again"]
    res, _ = _report(run)
    _one_line_error(res, *words)
    assert not (run / "report.md").exists() and not (run / "figures").exists()


def test_an_unfinished_run_and_a_folder_that_is_neither(measured, tmp_path):
    run = tmp_path / "unfinished"
    run.mkdir()
    shutil.copy(measured / "setup.json", run / "setup.json")
    _one_line_error(_report(run)[0], "not finished", "resumes")
    (tmp_path / "empty").mkdir()
    _one_line_error(_report(tmp_path / "empty")[0], "neither a suite folder (no runs/ folder) nor a measured run "
                    "folder", "deep.measure.measure()", "gpcheck deep")
    _one_line_error(_report(tmp_path / "absent")[0], "no such folder", "run folder")


def test_a_suite_folder_still_goes_through_build_report_unchanged(tmp_path, monkeypatch):
    suite = _copy(REPO / "reports" / "skip-smoke-cifar10-jpeg", tmp_path, "cli")
    direct = _copy(REPO / "reports" / "skip-smoke-cifar10-jpeg", tmp_path, "direct")
    calls = []
    real = deep_report.build_report

    def spy(path):
        calls.append(str(path))
        return real(path)

    def no_run_report(path):
        raise AssertionError("a suite folder must not get a run report")

    monkeypatch.setattr(deep_report, "build_report", spy)
    monkeypatch.setattr(run_report, "build_run_report", no_run_report)
    res = CliRunner().invoke(main, ["report", str(suite)])
    assert res.exit_code == 0, res.output
    assert calls == [str(suite)] and f"report: {suite}/report.md" in res.output
    real(direct)
    got, want = (json.loads((d / "report.json").read_text()) for d in (suite, direct))
    for d in (got, want):
        d.pop("report_built_utc")
    assert got == want
    assert not list(suite.rglob("run.png"))


def test_a_committed_run_folder_gives_its_suite_report_s_numbers(tmp_path):
    """The committed resnet18-all run, alone and inside a copy of its suite (verified against the
    suite's manifest there): the numbers its suite report holds for it."""
    suite_rep = json.loads((COMMITTED / "report.json").read_text())
    want = next(r for r in suite_rep["runs"] if r["name"] == "resnet18-all")
    alone = _copy(COMMITTED / "runs" / "resnet18-all", tmp_path)
    res, rep = _report(alone)
    assert res.exit_code == 0, res.output
    assert rep["suite"] is None
    for key in ("theory", "paper", "theta_star_eval", "bound_quantiles_x_dist0_sq", "steps"):
        assert rep["run"][key] == want[key], key
    assert rep["run"]["convergence"]["converged"] == want["convergence"]["converged"]
    assert rep["run"]["companions"]["random"]["theory"] == want["companions"]["random"]["theory"]
    assert (alone / "figures" / "run.png").read_bytes()[:8] == PNG

    suite = tmp_path / "suite"
    (suite / "runs").mkdir(parents=True)
    for f in ("suite.json", "manifest.json"):
        shutil.copy(COMMITTED / f, suite / f)
    inside = _copy(COMMITTED / "runs" / "resnet18-all", suite / "runs")
    res, rep = _report(inside)
    assert res.exit_code == 0, res.output
    assert rep["suite"]["suite"] == "skip" and rep["run"]["theory"] == want["theory"]
    assert "A run of the `skip` suite, `cpu` preset" in (inside / "report.md").read_text()
    manifest = json.loads((suite / "manifest.json").read_text())
    manifest["runs"]["resnet18-all"]["trace_sha256"] = "0" * 64  # the manifest recorded another trace
    (suite / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(_report(inside)[0], "manifest.json", "rerun `gpcheck deep")


def test_a_scheduled_run_says_which_readings_change_meaning(tmp_path):
    """A run folder holding a least-squares path under a cosine schedule (no gradient columns)."""
    prob = P.least_squares(n=8, d=20, batch_size=2, epochs=10, seed=1)
    eta = cosine(prob.lr["sgd"], 40, floor=0.01 * prob.lr["sgd"], warmup=4)
    res = run_scheduled_path(prob, "sgd", eta, seed=1)
    trace = res.trace
    assert not trace.constant_lr
    run = tmp_path / "cosine"
    Trace(**{k: getattr(trace, k) for k in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch",
                                            "eta")}, lr=trace.lr, dist0_sq=trace.dist0_sq,
          meta={"status": "ok", "diverged": None}).save(run / "trace")
    out, rep = _report(run)
    assert out.exit_code == 0, out.output
    assert rep["schedule"]["eta_min"] == float(trace.eta.min()) and rep["schedule"]["sum_eta"] == float(trace.eta.sum())
    want = check_trace(load_trace(run / "trace.npz"))
    assert rep["run"]["check"] == jsonable(want.to_dict())
    assert rep["run"]["check"]["theorem_1"]["rate_bound"].get("eta_weighted") is True
    md = (run / "report.md").read_text()
    assert "**Under a learning-rate schedule.**" in md[:md.index("<details>")]
    assert "Schedule: which readings change meaning" in md and "gamma H_K" in md
    assert "under a learning-rate schedule" in out.output
    # no gradient columns: regularity (the update's columns) is judged, the others say why not
    assert "| cosine | yes, γ " in md or "| cosine | no" in md
    assert "| not measured |" in md and "the trace has no gradient columns" in md
    assert "No companion theta* was recorded" in md


def test_a_run_with_a_schedule_and_dropout_says_so(scheduled_dropout, measured, tmp_path):
    """measure() with scheduler_fn and dropout: the report reads the trace's eta column, says which
    readings change meaning, and states in one line how the step's randomness was replayed and
    which masks theta* saw (trace meta random_step); a constant-rate deterministic run says neither."""
    run = _copy(scheduled_dropout, tmp_path)
    res, rep = _report(run)
    assert res.exit_code == 0, res.output
    trace = load_trace(run / "trace.npz")
    eta = trace.eta_k
    assert not trace.constant_lr and len(set(eta.tolist())) > 3
    # the numbers: the checks read eta_k (the trace as check_trace reads it), the schedule's own figures
    assert rep["run"]["check"] == jsonable(check_trace(trace).to_dict())
    assert rep["run"]["check"]["theorem_1"]["rate_bound"].get("eta_weighted") is True
    sc = rep["schedule"]
    assert (sc["eta_first"], sc["eta_last"], sc["eta_min"], sc["eta_max"]) == (float(eta[0]), float(eta[-1]),
                                                                               float(eta.min()), float(eta.max()))
    assert sc["sum_eta"] == float(eta.sum()) and sc["base_lr"] == 0.2 == trace.lr
    md = (run / "report.md").read_text()
    first = md[:md.index("<details>")]
    assert first.index("**Under a learning-rate schedule.**") < first.index("Does Definition 1 hold")
    assert f"eta_k runs from {fmt3(eta[0])} to {fmt3(eta[-1])}" in first and "rate 1/(2 gamma H_K)" in first
    assert "Schedule: which readings change meaning" in md
    assert f"under a learning-rate schedule: eta_k from {fmt3(eta[0])} to {fmt3(eta[-1])}" in res.output
    # the step's randomness: trace.json's own statement, in one line of the page and of the output
    rs = json.loads((run / "trace.json").read_text())["random_step"]
    assert rep["random_step"] == rs and "dropout masks" in rs["theta_star"]
    said = [ln for ln in md.splitlines() if rs["theta_star"] in ln]
    assert len(said) == 1 and said[0].startswith("**Randomness in the step.**") and rs["replayed"] in said[0]
    assert said[0] in first
    out = [ln for ln in res.output.splitlines() if rs["theta_star"] in ln]
    assert len(out) == 1 and "dropout" in out[0] and rs["replayed"] in out[0]
    # a classification: theta*'s accuracy (eval: no dropout; train: dropout on) is trace.json's
    ev = json.loads((run / "trace.json").read_text())["theta_star_eval"]
    assert rep["run"]["theta_star_eval"] == ev
    assert f"loss {fmt3(ev['train']['loss'])}, accuracy {pct(ev['train']['accuracy'])}" in first
    # the deterministic constant-rate run says neither
    plain = _copy(measured, tmp_path)
    res, rep = _report(plain)
    assert res.exit_code == 0, res.output
    assert rep["schedule"] is None and rep["random_step"] is None
    md = (plain / "report.md").read_text()
    assert "Randomness in the step" not in md and "Under a learning-rate schedule" not in md
    assert "Schedule: which readings change meaning" not in md
    assert "dropout masks" not in res.output and "under a learning-rate schedule" not in res.output


def test_a_loss_that_does_not_classify_has_no_accuracy(tmp_path):
    """A regression (floats, outputs(F.mse_loss)): trace meta theta_star_eval has a loss per mode and no
    accuracy keys; the report gives the losses, says why Fact 1's accuracy row is not applicable,
    and still judges theta* in the measurement's mode."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 6, generator=g)
    y = x @ torch.randn(6, 2, generator=g)
    mk = lambda: torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))  # noqa: E731
    run = _measure_own(tmp_path / "regression", mk, TensorData(x, y), outputs(F.mse_loss), 0.05)
    res, rep = _report(run)
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "trace.json").read_text())["theta_star_eval"]
    assert set(ev["eval"]) == set(ev["train"]) == {"loss"}
    assert rep["random_step"] is None  # no dropout: nothing random in the step
    claims = {c["claim"]: c for c in rep["claims"]}
    fact1 = claims["theta* fits the training set (Fact 1)"]
    assert fact1["verdict"] == "NOT APPLICABLE" and "not a classification" in fact1["why"]
    trace = load_trace(run / "trace.npz")
    first_loss = trace.loss[trace.epoch == trace.epoch[0]].mean()
    star = trace.loss_star[trace.epoch == trace.epoch[-1]].mean()
    batch = claims["theta* fits the training set (measurement's mode)"]["verdict"]
    assert batch == ("PASS" if star <= 0.05 * first_loss else "FAIL")
    md = (run / "report.md").read_text()
    first = md[:md.index("<details>")]
    assert "**By its loss only:**" in first and "accuracy n/a" not in md
    assert (f"evaluation mode (BN running statistics, no dropout): loss {fmt3(ev['eval']['loss'])}; in training mode"
            in first)
    assert (f"eval mode loss {fmt3(ev['eval']['loss'])}; training mode loss {fmt3(ev['train']['loss'])} (no accuracy: "
            "the loss is not a classification)") in res.output
    assert "| theta* accuracy | none (the loss is not a classification) |" in md
