"""Suite reports from hand-made run folders: diverged and failed runs are reported, the suite goes on."""

import json

import numpy as np

from deep.suites import get_suite
from gamma_theory import Trace
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
