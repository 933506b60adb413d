"""Suites as data, `gpcheck deep` end to end on the smoke preset, and `gpcheck report`."""

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from deep.data import default_jpeg_archive
from deep.suites import SUITES, get_suite
from validation.claims import FAIL, NA, PASS
from validation.cli import main

needs_archive = pytest.mark.skipif(not default_jpeg_archive().exists(),
                                   reason="the shared CIFAR-10 JPEG archive is not beside the repo")


def test_suites_match_the_paper():
    act = get_suite("activation", "paper")
    assert len(act.runs) == 8 and {r.network for r in act.runs} == {"alexnet", "resnet18"}
    assert all(r.lr == 0.05 and r.batch_size == 128 and r.epochs == 150 and r.optimizer == "sgd" for r in act.runs)
    bn = get_suite("bn", "paper")
    assert len(bn.runs) == 12
    assert {r.lr for r in bn.runs if r.network.startswith("vgg")} == {0.01}
    assert {r.lr for r in bn.runs if r.network.startswith("resnet")} == {0.05}
    skip = get_suite("skip", "paper")
    assert sorted(r.name for r in skip.runs) == ["resnet18-all", "resnet18-first", "resnet34-all",
                                                 "resnet34-first", "resnet34-first2"]
    opt = get_suite("optimizer", "paper")
    assert len(opt.runs) == 12 and {r.lr for r in opt.runs} == {0.001}
    smoke = get_suite("bn", "smoke")
    assert all(r.epochs == 2 and r.width == 0.125 for r in smoke.runs)
    for s in SUITES:  # variants of a network share their initialization seed
        assert len({(r.seed, r.data_seed) for r in get_suite(s).runs}) == 1


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="activation, bn, skip, optimizer"):
        get_suite("dropout")
    with pytest.raises(ValueError, match="paper, lite, cpu, long, rate, smoke"):
        get_suite("bn", "huge")


@pytest.mark.parametrize("args, match", [
    (["--suite", "dropout"], "unknown suite 'dropout'; choose one of: activation, bn, skip, optimizer"),
    (["--suite", "bn", "--preset", "huge"], "unknown preset 'huge'; choose one of: paper, lite, cpu, long, rate, smoke"),
    (["--suite", "bn", "--dataset", "mnist"], "unknown data set 'mnist'"),
    (["--suite", "bn", "--device", "quantum"], "unknown device 'quantum'"),
    (["--suite", "bn", "--preset", "paper"], "needs a GPU"),
    (["--suite", "bn", "--dataset", "cifar100", "--data-root", "/nonexistent"], "pass --download"),
    (["--suite", "bn", "--labels", "shuffled"], "unknown labels 'shuffled'; choose one of: true, random"),
    (["--suite", "bn", "--seeds", "0"], "Invalid value for '--seeds'"),
    (["--suite", "bn", "--star-extend", "-1"], "Invalid value for '--star-extend'"),
])
def test_bad_input_is_one_line_and_exit_2(args, match, tmp_path):
    import torch

    if "paper" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(main, ["deep", *args, "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output


def _expected_order_verdict(claim, runs):
    """Re-derive an order claim's verdict from the per-run numbers in report.json."""
    net = claim["claim"].split()[0]
    groups = claim["statement"].split(": ", 1)[1]
    groups = groups.split(" increases " if "gamma" in claim["claim"] else " faster ")[1]
    groups = groups.split(" (mean")[0].split(", compared")[0].split(" < ")
    groups = [g.strip("()").split(", ") for g in groups]
    vals, comparable = {}, True
    for r in runs:
        if r["name"].startswith(net + "-") and r.get("check"):
            v = r["name"][len(net) + 1:]
            if "speed" in claim["claim"]:
                vals[v] = -math.inf if r["status"] == "diverged" else -r["convergence"]["mean_loss"]
            else:
                g = r["theory"]["gamma_max"] if "(theory)" in claim["claim"] else r["paper"]["gamma_median"]
                comparable &= r["status"] == "ok" and r["convergence"]["converged"] and g is not None
                vals[v] = g
    if not comparable or any(v not in vals or vals[v] is None for g in groups for v in g):
        return NA
    ok = all(max(vals[v] for v in lo) < min(vals[v] for v in hi) for lo, hi in zip(groups, groups[1:]))
    return PASS if ok else FAIL


@needs_archive
@pytest.mark.parametrize("suite", SUITES)
def test_smoke_suite_end_to_end(suite, tmp_path):
    res = CliRunner().invoke(main, ["deep", "--suite", suite, "--preset", "smoke", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / f"{suite}-smoke-cifar10-jpeg"
    rep = json.loads((out / "report.json").read_text())
    spec = get_suite(suite, "smoke")
    assert [r["name"] for r in rep["runs"]] == [r.name for r in spec.runs]
    for r in rep["runs"]:
        assert r["status"] in ("ok", "diverged"), r
        if r["status"] == "ok":
            c = r["check"]
            assert r["verdict"] == ("PASS" if c["holds"] else "FAIL")
            assert c["recording_identity"]["holds"]
            assert r["replay_verified"]["final"] == "bitwise equal to theta*"
            assert (out / "runs" / r["name"] / "trace.npz").exists()
    names = [c["claim"] for c in rep["claims"]]
    assert names[:4] == ["principle holds on converged paths (Definition 1)", "principle holds on every path (pooled)",
                         "gamma-speed identity (theta* = last iterate)", "distance never grows (Theorem 1 item 1)"]
    assert "a random theta* is rejected (baseline)" in names
    for r in rep["runs"]:  # every measured run carries its random baseline and the earlier theta*
        if r["status"] == "ok":
            assert set(r["companions"]) >= {"random"}, r["name"]
            assert all(x["steps"] <= r["steps"] for x in r["companions"].values())
            assert [c["holds"] is not None for c in r["related"]] == [True] * 5  # pass 2 records g_k
    assert rep["sensitivity"]["theta_stars"][0] == "last iterate"
    assert all("fragile" in c for c in rep["claims"])
    assert not any("correlation" in n for n in names)  # networks are never pooled
    for c in rep["claims"]:
        assert c["verdict"] in (PASS, FAIL, NA) and c["why"]
        if c["claim"].endswith((" speed order", "gamma order (theory)", "gamma order (paper)")):
            assert c["verdict"] == _expected_order_verdict(c, rep["runs"]), c
        if c["claim"] == "principle holds on every path (pooled)":
            judged = [r for r in rep["runs"] if r.get("check")]
            assert (c["verdict"] == PASS) == all(r["check"]["definition_1"]["holds"] for r in judged)
    md = (out / "report.md").read_text()
    assert f"`{suite}` suite" in md and "| claim | kind | verdict |" in md
    assert "## Related path conditions" in md and "## Sensitivity to theta*" in md
    assert md.count("**Not evidence.**") == 1 and "**PASS**" not in md and "**FAIL**" not in md  # smoke
    assert all(f"| {r['run']['network']} | {r['run']['variant']} |" in md for r in rep["runs"])
    assert json.loads((out / "manifest.json").read_text())["runs"].keys() == {r.name for r in spec.runs}
    assert (out / rep["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # `gpcheck report` rebuilds the same verdicts from the traces alone
    for f in ("report.json", "report.md", "suite.json"):
        (out / f).unlink()
    shutil.rmtree(out / "figures")
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "report.json").read_text())
    assert [(c["claim"], c["verdict"], c["numbers"]) for c in again["claims"]] == \
           [(c["claim"], c["verdict"], c["numbers"]) for c in rep["claims"]]
    assert (out / again["figure"]).exists()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_archive
def test_rerun_skips_finished_runs(tmp_path):
    """A rerun that measures nothing says so, and leaves the output folder byte for byte as it was;
    a report rebuilt from the reused traces keeps the facts of the invocation that measured them."""
    args = ["deep", "--suite", "skip", "--preset", "smoke", "--out", str(tmp_path), "--quiet"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    out = tmp_path / "skip-smoke-cifar10-jpeg"
    assert f"{out}: 5 runs: measured 5, resumed 0, reused 0 (already finished)" in first.output
    assert "NOT EVIDENCE: the smoke preset tests the machinery" in first.output  # the banner, in the terminal
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/trace.npz")}
    files = _files(tmp_path)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert f"{out}: 5 of 5 runs were already finished; nothing measured" in again.output
    assert "report unchanged" in again.output and "NOT EVIDENCE" in again.output
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/trace.npz")}
    assert _files(tmp_path) == files  # suite.json, manifest, report, figure, index: the same bytes

    # the report is rebuilt when it is missing, from suite.json as the measuring invocation wrote it
    info = json.loads((out / "suite.json").read_text())
    info.update(device="cpu (the measuring machine)", started_utc="2000-01-01T00:00:00+00:00")
    (out / "suite.json").write_text(json.dumps(info))
    suite_json = (out / "suite.json").read_bytes()
    (out / "report.json").unlink()
    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0, third.output
    assert "nothing measured" in third.output and "report unchanged" not in third.output
    assert (out / "suite.json").read_bytes() == suite_json
    rep = json.loads((out / "report.json").read_text())
    assert rep["device"] == "cpu (the measuring machine)" and rep["started_utc"] == "2000-01-01T00:00:00+00:00"


def test_outcomes_of_an_invocation_are_read_from_the_run_folders(tmp_path):
    """measured (from scratch), resumed (from an earlier invocation's progress), reused (finished
    before), error, not finished: what the terminal says an invocation did."""
    from deep.runner import describe_outcome, outcomes, run_states, suite_tasks, touched

    tasks = suite_tasks("skip", "smoke", None, tmp_path)
    wd = {t.name: t.workdir for t in tasks}
    names = list(wd)
    for n in names[:2]:  # finished before
        wd[n].mkdir(parents=True)
        (wd[n] / "trace.json").write_text("{}")
    (wd[names[2]] / "checkpoints").mkdir(parents=True)  # progress of an interrupted run
    (wd[names[2]] / "checkpoints" / "epoch0001.pt").write_bytes(b"x")
    before = run_states(tasks)
    assert describe_outcome(outcomes(before, tasks)[tasks[0].out]) == \
        "5 runs: measured 0, resumed 0, reused 2 (already finished), 3 not finished"
    (wd[names[2]] / "trace.json").write_text("{}")  # resumed
    wd[names[3]].mkdir(parents=True)
    (wd[names[3]] / "trace.json").write_text("{}")  # measured from scratch
    wd[names[4]].mkdir(parents=True)
    (wd[names[4]] / "error.json").write_text("{}")  # failed
    counts = outcomes(before, tasks)[tasks[0].out]
    assert describe_outcome(counts) == "5 runs: measured 1, resumed 1, reused 2 (already finished), 1 ended in an " \
                                       "error"
    assert touched(counts)
    now = run_states(tasks)
    (wd[names[0]] / "trace.json").write_text('{"again": 1}')  # a finished trace measured again counts as measured
    counts = outcomes(now, tasks)[tasks[0].out]
    assert counts["measured"] == 1 and counts["reused"] == 3
    for n in names:  # every run finished: an invocation that changes nothing touched nothing
        (wd[n] / "error.json").unlink(missing_ok=True)
        (wd[n] / "trace.json").write_text("{}")
    untouched = outcomes(run_states(tasks), tasks)[tasks[0].out]
    assert not touched(untouched) and describe_outcome(untouched) == \
        "5 of 5 runs were already finished; nothing measured"


def test_report_on_a_folder_without_runs(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no runs/ folder" in res.output


def test_smoke_suite_on_cifar100_in_torchvision_format(tmp_path):
    """The whole pipeline on a CIFAR-100 folder in torchvision's format, written by the test."""
    from cifar_files import _write_cifar100

    _write_cifar100(tmp_path / "data", np.random.default_rng(0), n_train=300)
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "smoke", "--dataset", "cifar100",
                                    "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "rep"), "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "skip-smoke-cifar100" / "report.json").read_text())
    assert rep["dataset"] == "cifar100" and "torchvision CIFAR100" in rep["data"]
    assert [r["status"] for r in rep["runs"]] == ["ok"] * 5
    assert json.loads((tmp_path / "rep" / "skip-smoke-cifar100" / "suite.json").read_text())["num_classes"] == 100


@needs_archive
def test_a_failing_run_is_reported_and_the_suite_goes_on(tmp_path, monkeypatch):
    import deep.runner as runner

    real = runner.run_one

    def flaky(spec, *a, **k):
        if spec.name == "resnet34-first2":
            raise RuntimeError("deterministic kernel missing (simulated)")
        return real(spec, *a, **k)

    monkeypatch.setattr(runner, "run_one", flaky)
    res = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "smoke", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 1
    assert "resnet34-first2 failed (RuntimeError: deterministic kernel missing (simulated))" in res.output
    rep = json.loads((tmp_path / "skip-smoke-cifar10-jpeg" / "report.json").read_text())
    status = {r["name"]: r["status"] for r in rep["runs"]}
    assert status.pop("resnet34-first2") == "error" and set(status.values()) == {"ok"}
    assert {c["claim"]: c["verdict"] for c in rep["claims"]}["resnet34 gamma order (theory)"] == NA


def test_orders_follow_what_the_paper_says_per_data_set():
    skip = get_suite("skip")
    assert "resnet18" not in skip.orders_for("cifar10-jpeg")  # "comparable" on CIFAR-10
    assert skip.orders_for("cifar100")["resnet18"] == [["first"], ["all"]]
    bn = get_suite("bn")
    assert bn.orders_for("cifar10")["resnet18"] == [["none"], ["first", "all"]]
    assert bn.orders_for("cifar100")["resnet18"] == [["none"], ["first"], ["all"]]
    assert bn.orders_for("cifar100")["vgg11"] == [["none"], ["first", "all"]]


def _cifar10_pickles(root, images, labels):
    import pickle

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, (x, y) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5)), 1):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), "labels": y.tolist()}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": images[:10].reshape(10, -1), "labels": labels[:10].tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


@pytest.mark.parametrize("case, match", [
    ("two classes", "cifar10-jpeg has 10 classes, but this copy names 2"),
    ("too few", "10 training images, but the preset trains on a class-balanced subset of 256"),
    ("black", "constant in a color channel"),
])
def test_data_that_cannot_serve_the_preset_is_refused(tmp_path, case, match):
    """A 10-image 2-class archive, or a CIFAR folder of black images, trained and exited 0 before."""
    from test_data import _make_archive

    args = ["deep", "--suite", "skip", "--preset", "smoke", "--out", str(tmp_path / "out"), "--quiet"]
    env = {"GPCHECK_CACHE": str(tmp_path / "cache")}
    if case == "two classes":
        _make_archive(tmp_path / "a.tar.gz", n_train=5)
        args += ["--data-root", str(tmp_path / "a.tar.gz")]
    else:
        n = 10 if case == "too few" else 300
        rng = np.random.default_rng(0)
        images = np.zeros((n, 3, 32, 32), np.uint8) if case == "black" else rng.integers(0, 256, (n, 3, 32, 32), np.uint8)
        _cifar10_pickles(tmp_path / "data", images, np.arange(n) % 10)
        args += ["--dataset", "cifar10", "--data-root", str(tmp_path / "data")]
    res = CliRunner().invoke(main, args, env=env)
    assert res.exit_code == 2 and match in res.output, res.output
    assert res.output.startswith("gpcheck: error:") and res.output.strip().count("\n") == 0
    assert not list((tmp_path / "out").rglob("trace.npz"))


def test_seeds_multiply_runs_seed_major():
    one, three = get_suite("skip", "cpu", 1), get_suite("skip", "cpu")
    assert len(three.runs) == 3 * len(one.runs)  # the cpu preset's default: 3 seeds
    assert [r.name for r in three.runs[:len(one.runs)]] == [r.name for r in one.runs]  # seed 0 keeps its names
    assert [(r.seed, r.data_seed) for r in three.runs[-len(one.runs):]] == [(2, 2)] * len(one.runs)
    assert three.runs[-1].name.endswith("-s2")
    assert len(get_suite("skip", "paper").runs) == len(one.runs)  # paper: one seed by default


@pytest.mark.slow  # run on purpose by .ci/run (see there)
@needs_archive
def test_random_labels_and_seeds_end_to_end(tmp_path):
    """--labels random --seeds 2: the reports sit in their own folder, every configuration runs
    from two seeds, the labels are a seeded permutation (same class counts), and the report says so."""
    import torch

    from deep.runner import load_train_data

    args = ["deep", "--suite", "skip", "--preset", "smoke", "--seeds", "2", "--labels", "random", "--out",
            str(tmp_path), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / "skip-smoke-cifar10-jpeg-random-labels"
    rep = json.loads((out / "report.json").read_text())
    assert rep["labels"] == "random" and rep["seeds"] == 2 and "RANDOM LABELS" in rep["data"]
    names = [r["name"] for r in rep["runs"]]
    assert names == [r.name for r in get_suite("skip", "smoke", 2).runs] and "resnet18-all-s1" in names
    assert {r["run"]["seed"] for r in rep["runs"]} == {0, 1}
    assert all(r["seeds"] == 2 for r in rep["over_seeds"])
    orders = [c for c in rep["claims"] if " order" in c["claim"]]
    assert orders and all(set(c["per_seed"]) == {"s0", "s1"} for c in orders)
    md = (out / "report.md").read_text()
    assert "RANDOM LABELS" in md and "## Over seeds" in md and "## A random theta* (baseline)" in md
    true, _, _ = load_train_data("cifar10-jpeg", 256, torch.device("cpu"))
    rand, _, _ = load_train_data("cifar10-jpeg", 256, torch.device("cpu"), labels="random")
    again, _, _ = load_train_data("cifar10-jpeg", 256, torch.device("cpu"), labels="random")
    assert torch.equal(rand.labels, again.labels) and not torch.equal(rand.labels, true.labels)
    assert torch.equal(torch.bincount(rand.labels), torch.bincount(true.labels))
    assert torch.equal(rand.images, true.images)
    # the paper's Fig. 12 for two of these runs: the replay reproduces each run, and with 2 epochs
    # the plane holds the whole path, so the picture keeps every distance of the trace
    from deep.picture import PictureError, path_picture

    res = CliRunner().invoke(main, ["picture", str(out / "runs" / "resnet18-all"), str(out / "runs" / "resnet34-all-s1"),
                                    "--grid", "3", "--subset", "32", "--quiet"])
    assert res.exit_code == 0, res.output
    fig = out / "figures" / "picture-resnet18-all-resnet34-all-s1.png"
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "picture-resnet18-all-resnet34-all-s1.png)" in (out / "report.md").read_text()  # the report links it
    pics = json.loads(fig.with_suffix(".json").read_text())["pictures"]
    for p in pics:
        tr = json.loads((out / "runs" / p["name"] / "trace.json").read_text())
        assert len(p["coords"]) == tr["epochs_measured"] + 1 and p["coords"][-1] == [0.0, 0.0]
        assert sum(p["explained_variance"]) == pytest.approx(1.0, abs=1e-9)
        # how much of each drawn SGD direction lies in the plane, and theta*'s loss at the origin
        assert len(p["sgd_inplane"]) == len(p["sgd_dirs"]) and all(0 <= x <= 1 + 1e-9 for x in p["sgd_inplane"])
        norms = [math.hypot(*d) for d in p["sgd_dirs"]]  # the projection's length; the share needs ||g|| too
        assert all(n > 0 for n in norms) and p["star_loss"] > 0
        from gamma_theory import load_trace

        t = load_trace(out / "runs" / p["name"] / "trace.npz")
        assert np.hypot(*p["coords"][0]) ** 2 == pytest.approx(t.dist0_sq, rel=1e-6)
        assert p["replay_max_rel_err"] <= 1e-9 and len(p["sgd_dirs"]) == tr["epochs_measured"]
    with pytest.raises(PictureError, match="does not reproduce the run"):  # the true labels: another run
        path_picture(out / "runs" / "resnet18-all", true, 10, grid=3, subset=16)
    res = CliRunner().invoke(main, ["picture", str(tmp_path)])
    assert res.exit_code == 2 and "not a finished run folder" in res.output
    if not torch.cuda.is_available():  # a run measured on a GPU is replayed on one, or refused in a line
        tj = out / "runs" / "resnet18-all" / "trace.json"
        info = json.loads(tj.read_text())
        info["env"] = {**info["env"], "device": "cuda:0", "device_name": "NVIDIA H200"}
        tj.write_text(json.dumps(info))
        from deep.verify import manifest_entry_for  # as its manifest would record it: else the edit is refused

        mf = out / "manifest.json"
        mf.write_text(json.dumps({"runs": {**json.loads(mf.read_text())["runs"], "resnet18-all": manifest_entry_for(info)}}))
        res = CliRunner().invoke(main, ["picture", str(tj.parent), "--quiet"])
        assert res.exit_code == 2 and "measured on a GPU (NVIDIA H200)" in res.output and "Traceback" not in res.output


def test_networks_filter_keeps_only_those_networks_and_their_orders():
    full, only = get_suite("skip", "cpu", 8), get_suite("skip", "cpu", 8, ["resnet18"])
    assert {r.network for r in only.runs} == {"resnet18"}
    assert [r for r in full.runs if r.network == "resnet18"] == only.runs and len(only.runs) == 16
    assert list(only.networks) == ["resnet18"] and set(only.expected_order) == {"resnet18"}
    assert set(only.orders_for("cifar100")) == {"resnet18"} and not set(only.orders_for("cifar10")) - {"resnet18"}
    with pytest.raises(ValueError, match="no network 'resnet99'.*resnet18, resnet34"):
        get_suite("skip", "cpu", 1, ["resnet99"])


def test_networks_filter_gets_a_folder_of_its_own(tmp_path):
    from deep.runner import suite_tasks

    tasks = suite_tasks("skip", "smoke", None, tmp_path, networks=("resnet18",))
    assert {t.out.name for t in tasks} == {"skip-smoke-cifar10-jpeg-resnet18"}
    assert [t.name for t in tasks] == [r.name for r in get_suite("skip", "smoke").runs if r.network == "resnet18"]


def test_variants_filter_and_the_rate_preset():
    one = get_suite("bn", "rate", None, ["resnet18"], ["all"])
    assert [r.name for r in one.runs] == ["resnet18-all"]
    assert (one.runs[0].epochs, one.runs[0].width) == (100, 0.25) and one.networks == {"resnet18": ["all"]}
    with pytest.raises(ValueError, match="no variant 'al'.*all"):
        get_suite("bn", "cpu", 1, None, ["al"])
