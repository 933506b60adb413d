"""``gpcheck deep ... --star-seed N``: every run of another seed is also judged against theta* =
seed N's end point of its network and variant (companion ``star_seed<N>``), in a suite folder of
its own, with seed N's runs measured first; the report's row "gamma tracks speed vs another
seed's end point" reads those companions, and says why where a configuration has none."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deep.executors import Interrupted, LocalExecutor, in_waves
from deep.measure import Extras
from deep.plan import plan_config, theta_star_forwards
from deep.runner import _star_run_state, locked, star_seed_extras
from deep.state import save_state
from deep.tasks import check_star_seed, report_dir, resolve_suites, star_seed_companion, suite_tasks, tasks_of, waves
from gamma_theory.files import sha256_file, write_json
from validation.claims import CONVERGED_FRACTION, FAIL, NA, PASS, RunNumbers
from validation.cli import main
from validation.companion_claims import STAR_SEED, STAR_SEED_CLAIM, star_seed_claims
from validation.run_summary import StarSeedRuns, star_seed_runs

from smoke_util import COLUMNS, gpcheck, needs_archive, traces_of


# -- the folder, the options ---------------------------------------------------------------------
def test_a_star_seed_suite_has_a_folder_of_its_own(tmp_path):
    assert report_dir(tmp_path, "skip", "cpu", "cifar10-jpeg", star_seed=0).name == "skip-cpu-cifar10-jpeg-starseed0"
    assert report_dir(tmp_path, "skip", "cpu", "cifar10-jpeg", "random", ("resnet18",), ("all",), 2).name == \
        "skip-cpu-cifar10-jpeg-resnet18-all-starseed2-random-labels"
    assert report_dir(tmp_path, "skip", "cpu", "cifar10-jpeg").name == "skip-cpu-cifar10-jpeg"  # unchanged without
    (c,) = resolve_suites("skip", "smoke", None, tmp_path, seeds=3, networks=("resnet18",), star_seed=1)
    assert c.out.name == "skip-smoke-cifar10-jpeg-resnet18-starseed1" and c.star_seed == 1
    (plain,) = resolve_suites("skip", "smoke", None, tmp_path, seeds=3, networks=("resnet18",))
    assert plain.out != c.out and plain.star_seed is None
    # the companion's name is the one the report reads
    assert STAR_SEED.fullmatch(star_seed_companion(7)).group(1) == "7"


def test_the_run_whose_end_point_a_run_is_judged_against(tmp_path):
    (c,) = resolve_suites("skip", "smoke", None, tmp_path, seeds=3, networks=("resnet18",), star_seed=1)
    by = {r.name: r for r in c.runs}
    assert c.star_run(by["resnet18-first"]).name == "resnet18-first-s1"
    assert c.star_run(by["resnet18-all-s2"]).name == "resnet18-all-s1"
    assert c.star_run(by["resnet18-all-s1"]) is None  # seed N's own runs: judged against no other
    (plain,) = resolve_suites("skip", "smoke", None, tmp_path, seeds=3)
    assert all(plain.star_run(r) is None for r in plain.runs)


def test_a_task_carries_its_star_seed_through_the_queue_format(tmp_path):
    from deep.tasks import RunTask

    (t, *_) = suite_tasks("skip", "smoke", None, tmp_path, seeds=2, star_seed=0)
    back = RunTask.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.config.star_seed == 0 and back.out == t.out


@pytest.mark.parametrize("star, seeds, says", [
    (0, 1, "there is 1 seed: add --seeds 2 or more"),
    (3, 3, "the runs have seeds 0 to 2 (--seeds 3); give one of them"),
    (-1, 2, "the runs have seeds 0 to 1"),
])
def test_a_bad_star_seed_is_one_line(tmp_path, star, seeds, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_star_seed(star, seeds)
    r = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "smoke", "--seeds", str(seeds),
                                  "--star-seed", str(star), "--plan", "--out", str(tmp_path)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpcheck: error: --star-seed") and says in lines[0], r.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_preset_s_seeds_count_when_seeds_is_not_given(tmp_path):
    r = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "smoke", "--star-seed", "0", "--plan",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "there is 1 seed" in r.output  # smoke runs one seed
    check_star_seed(2, 3)  # cpu's 3 seeds take any of 0, 1, 2
    check_star_seed(None, 1)


# -- scheduling: seed N first ----------------------------------------------------------------------
def test_seed_n_runs_go_first_in_a_wave_of_their_own(tmp_path):
    tasks = suite_tasks("skip", "smoke", None, tmp_path, seeds=3, star_seed=1)
    first, second = waves(tasks)
    assert [t.spec.seed for t in first] == [1] * 5 and {t.spec.seed for t in second} == {0, 2}
    assert [t.name for t in first] == [t.name for t in tasks if t.spec.seed == 1]  # queue order kept
    assert [t.name for t in second] == [t.name for t in tasks if t.spec.seed != 1]
    plain = suite_tasks("skip", "smoke", None, tmp_path, seeds=3)
    assert waves(plain) == [plain]  # without --star-seed: the queue as it is
    # a queue of several folders: every seed-N run of each before any run that waits for one
    both = tasks + plain
    w1, w2 = waves(both)
    assert set(w1) == set(plain) | {t for t in tasks if t.spec.seed == 1} and set(w2) == set(second)
    assert w1[:5] == first


def test_waves_run_one_after_the_other_and_walls_count_from_the_start(tmp_path):
    tasks = suite_tasks("skip", "smoke", None, tmp_path, seeds=2, networks=("resnet18",), star_seed=0)
    seen = []

    def run_wave(wave):
        seen.append([t.name for t in wave])
        time.sleep(0.05)
        return {tasks[0].out: 0.05}

    walls = in_waves(tasks, run_wave)
    assert seen == [["resnet18-first", "resnet18-all"], ["resnet18-first-s1", "resnet18-all-s1"]]
    assert walls[tasks[0].out] >= 0.1  # the second wave's own 0.05 s, moved by when it started

    def interrupted(wave):
        seen.append(len(wave))
        raise Interrupted({tasks[0].out: 0.01})

    seen.clear()
    with pytest.raises(Interrupted) as exc:
        in_waves(tasks, interrupted)
    assert seen == [2] and exc.value.walls == {tasks[0].out: pytest.approx(0.01, abs=0.05)}  # no second wave


def test_one_process_measures_seed_n_first(tmp_path, monkeypatch):
    from deep import runner

    tasks = suite_tasks("skip", "smoke", None, tmp_path, seeds=3, networks=("resnet18",), star_seed=2)
    got = []
    monkeypatch.setattr(runner, "run_queue", lambda ts, **kw: got.extend(ts) or [ts[0].out])
    LocalExecutor(jobs=1).run(tasks)
    assert [t.spec.seed for t in got] == [2, 2, 0, 0, 1, 1] and set(got) == set(tasks)


# -- which end point a run is judged against -------------------------------------------------------
def _fake_star_run(wd: Path, status: str = "ok") -> Path:
    """A finished seed-N run folder as far as the runner reads it: trace.json, theta_star.pt (+ .sha256)."""
    wd.mkdir(parents=True, exist_ok=True)
    save_state({"w": torch.arange(3.0)}, wd / "theta_star.pt")
    info = ({"status": "ok", "npz_sha256": "0" * 64} if status == "ok"
            else {"status": "diverged", "diverged": {"reason": "non-finite loss", "epoch": 3, "step": 7}})
    write_json(wd / "trace.json", info)
    return wd / "theta_star.pt"


@pytest.fixture
def star_task(tmp_path):
    (c,) = resolve_suites("skip", "smoke", None, tmp_path, seeds=2, networks=("resnet18",), variants=("all",),
                          star_seed=0)
    seed0, seed1 = tasks_of([c])
    return seed0, seed1


def test_a_run_is_judged_against_seed_n_s_end_point_with_its_digest(star_task):
    seed0, seed1 = star_task
    assert star_seed_extras(seed0, Extras(), False) == (Extras(), None)  # seed N itself: as it is
    assert star_seed_extras(seed1, Extras(), False) is None  # seed 0 not finished: wait
    assert _star_run_state(seed1) == ("waiting", "seed 0's run resnet18-all has not finished")
    star = _fake_star_run(seed0.workdir)
    extras, info = star_seed_extras(seed1, Extras(), False)
    (ext,) = extras.external_stars
    assert (ext.name, ext.path, ext.sha256) == ("star_seed0", str(star.resolve()), sha256_file(star))
    assert info == {"seed": 0, "run": "resnet18-all", "companion": "star_seed0", "why": None}
    assert extras.random_baseline and extras.sensitivity == Extras().sensitivity  # the preset's extras kept


def test_a_diverged_or_failed_seed_n_run_gives_no_companion_and_says_why(star_task):
    seed0, seed1 = star_task
    _fake_star_run(seed0.workdir, "diverged")
    extras, info = star_seed_extras(seed1, Extras(), False)
    assert extras.external_stars == () and info["companion"] is None
    assert "seed 0's run resnet18-all diverged (non-finite loss in epoch 3)" in info["why"]
    (seed0.workdir / "trace.json").unlink()
    write_json(seed0.workdir / "error.json", {"error": "ReplayMismatch", "message": "epoch 2 differs\nmore",
                                              "traceback": ""})
    extras, info = star_seed_extras(seed1, Extras(), False)
    assert extras.external_stars == () and info["why"] == ("seed 0's run resnet18-all ended in an error "
                                                          "(ReplayMismatch: epoch 2 differs)")


def test_a_damaged_end_point_is_not_used(star_task):
    seed0, seed1 = star_task
    star = _fake_star_run(seed0.workdir)
    star.write_bytes(star.read_bytes()[:-1] + b"x")
    assert star_seed_extras(seed1, Extras(), False) is None
    state, why = _star_run_state(seed1)
    assert state == "waiting" and "is not there intact" in why and "altered" in why


def test_a_started_run_keeps_the_choice_it_was_started_with(star_task):
    seed0, seed1 = star_task
    star = _fake_star_run(seed0.workdir)
    seed1.workdir.mkdir(parents=True)
    recorded = {"name": "star_seed0", "path": "/elsewhere/theta_star.pt", "sha256": "a" * 64}
    setup = {"lr": 0.05, "epochs": 2, "batch_size": 64, "seed": 1, "data_seed": 1, "checkpoint_every": 1,
             "n_train": 256, "extras": {**Extras().to_dict(), "external_stars": [recorded]}}
    write_json(seed1.workdir / "setup.json", setup)
    extras, info = star_seed_extras(seed1, Extras(), False)  # the folder as it was measured (a clone, say)
    assert [s.to_dict() for s in extras.external_stars] == [recorded] and info["companion"] == "star_seed0"
    write_json(seed1.workdir / "setup.json", {**setup, "extras": Extras().to_dict()})
    extras, info = star_seed_extras(seed1, Extras(), False)  # started without it: stays without, says why
    assert extras.external_stars == () and "started before seed 0's end point could serve" in info["why"]
    assert str(seed1.workdir) in info["why"] and star.exists()


def test_a_waiting_run_waits_for_the_process_that_measures_seed_n(star_task):
    seed0, seed1 = star_task
    held, release = threading.Event(), threading.Event()

    def other_process():
        with locked(seed0.out / "runs" / f".{seed0.name}.lock"):
            held.set()
            release.wait(5)
            _fake_star_run(seed0.workdir)

    th = threading.Thread(target=other_process)
    th.start()
    held.wait(5)
    assert star_seed_extras(seed1, Extras(), False) is None  # not blocking: left for later
    threading.Timer(0.2, release.set).start()
    extras, info = star_seed_extras(seed1, Extras(), True)  # blocking: waits for the holder, then uses it
    th.join()
    assert info["companion"] == "star_seed0" and len(extras.external_stars) == 1


# -- --plan: the extra forward -----------------------------------------------------------------------
def test_the_plan_counts_one_more_theta_star_forward_for_the_judged_runs(tmp_path):
    ex = Extras().to_dict()
    assert theta_star_forwards(40, ex, 1) == pytest.approx(theta_star_forwards(40, ex) + 1)
    with_star = {**ex, "external_stars": [{"name": "star_seed0", "path": "/x", "sha256": "0" * 64}]}
    assert theta_star_forwards(40, with_star) == pytest.approx(theta_star_forwards(40, ex) + 1)
    (c,) = resolve_suites("skip", "cpu", None, tmp_path / "out", seeds=2, networks=("resnet18",), star_seed=0)
    planned = {r.name: r for r in plan_config(c, "NVIDIA H200", bench_results=tmp_path / "none", device="cuda",
                                              committed=None)}
    f = theta_star_forwards(40, c.extras.to_dict())
    assert f"{f:.2f} theta* forwards" in planned["resnet18-all"].source
    assert f"{f + 1:.2f} theta* forwards" in planned["resnet18-all-s1"].source
    assert planned["resnet18-all-s1"].ms_per_step > planned["resnet18-all"].ms_per_step


def test_the_plan_adds_a_measured_run_s_cost_per_theta_star(tmp_path):
    """From measured runs without the external theta*: their ms/step, plus for the judged runs
    pass 2's cost beyond pass 1 per theta* it judged."""
    (c,) = resolve_suites("skip", "cpu", None, tmp_path, seeds=2, networks=("resnet18",), variants=("all",),
                          star_seed=0)
    extras = c.extras.to_dict()
    wd = tmp_path / "elsewhere" / "runs" / "resnet18-all"
    wd.mkdir(parents=True)
    write_json(wd / "trace.json", {"run": {"network": "resnet18", "width": 0.25, "epochs": 40},
                                   "setup": {"batch_size": 128, "extras": extras, "epochs": 40},
                                   "env": {"device_name": "AMD EPYC"}, "pass1": {"ms_per_step": 700.0},
                                   "pass2": {"ms_per_step": 2000.0}})
    planned = {r.name: r for r in plan_config(c, "AMD EPYC", bench_results=tmp_path / "none", committed=None)}
    f = theta_star_forwards(40, extras)
    assert planned["resnet18-all"].ms_per_step == 2700.0
    assert "median of 1 measured run(s)" in planned["resnet18-all"].source
    assert planned["resnet18-all-s1"].ms_per_step == pytest.approx(2700.0 + 1300.0 / f)
    assert "1 theta* more per pass-2 step" in planned["resnet18-all-s1"].source
    r = CliRunner().invoke(main, ["deep", "--suite", "skip", "--preset", "cpu", "--networks", "resnet18", "--variants",
                                  "all", "--seeds", "2", "--star-seed", "0", "--plan", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "star seed 0" in r.output and "--star-seed 0: the 1 runs of seed 0 are measured first" in r.output


# -- the report's row -----------------------------------------------------------------------------
def _path(seed, variant, gamma_bar, speed, converged=True, status="ok"):
    return RunNumbers("net", variant, status, converged=converged, d1_holds=True, speed=speed, seed=seed,
                      gamma_bar=gamma_bar, end_ratio=0.7, ends_at_star=False,
                      name=f"net-{variant}" + (f"-s{seed}" if seed else ""))


def test_an_unusable_end_point_leaves_its_variant_out_with_the_reason():
    runs = [RunNumbers("net", "a", "missing", seed=0), RunNumbers("net", "b", "missing", seed=0),
            RunNumbers("net", "c", "missing", seed=0),
            _path(1, "a", 2.0, 0.2), _path(1, "b", 1.0, 0.4), _path(1, "c", 0.5, 0.1)]
    (c,) = star_seed_claims(StarSeedRuns({0: runs}, {}))
    assert c["verdict"] == FAIL and c["numbers"]["kendall_tau"] < 1  # c: fastest, smallest gamma
    (c,) = star_seed_claims(StarSeedRuns({0: runs}, {0: {("net", "c"): "seed 0's run net-c did not converge"}}))
    assert c["verdict"] == PASS and "c: seed 0's run net-c did not converge" in c["why"]
    (c,) = star_seed_claims(StarSeedRuns({0: runs[:3]}, {0: {("net", "a"): "seed 0's run net-a diverged"}}))
    assert c["verdict"] == NA and "seed 0's run net-a diverged" in c["why"]  # no path judged: says why
    assert c["numbers"] == {"seed 0's end point of net/a": "seed 0's run net-a diverged"}


def _summary(name, seed, variant, companions=(), star_seed=None, final=0.01):
    path = {"dist0": 1.0, "steps": 4, "theory": {"holds": True, "gamma_max": 1.0, "n_violating": 0},
            "paper": {"gamma_median": 1.0, "share_positive": 1.0}, "min_gap": 0.0, "distance_holds": True,
            "identity": {"gamma_bar": 0.7, "end_ratio": 0.9, "ends_at_star": False},
            "convergence": {"converged": final <= CONVERGED_FRACTION * 2.0, "mean_loss": 0.3, "final_loss": final,
                            "first_epoch_loss": 2.0, "loss_ratio": final / 2.0}}
    return {"name": name, "status": "ok", "check": {}, "run": {"network": "net", "variant": variant, "seed": seed},
            **path, "companions": {c: path for c in companions}, **({"star_seed": star_seed} if star_seed else {})}


def test_the_report_reads_why_a_configuration_has_no_companion():
    why = "seed 0's run net-b diverged (nan in epoch 1): its last iterate is no end point of training"
    summaries = [_summary("net-a", 0, "a"), _summary("net-b", 0, "b"), _summary("net-c", 0, "c", final=1.5),
                 _summary("net-a-s1", 1, "a", ["star_seed0"], {"seed": 0, "companion": "star_seed0", "why": None}),
                 _summary("net-b-s1", 1, "b", [], {"seed": 0, "companion": None, "why": why}),
                 _summary("net-c-s1", 1, "c", ["star_seed0"], {"seed": 0, "companion": "star_seed0", "why": None})]
    got = star_seed_runs(summaries)
    assert sorted(got) == [0] and [r.status for r in got[0]] == ["missing", "missing", "missing", "ok", "missing", "ok"]
    assert got.unusable[0][("net", "b")] == why
    assert got.unusable[0][("net", "c")].startswith("seed 0's run net-c did not converge (last/first epoch loss "
                                                    "1.5/2 = 0.75 > 0.05)")
    assert ("net", "a") not in got.unusable[0]
    # the seed is known from the traces even where no run recorded the companion
    assert sorted(star_seed_runs(summaries[:2] + summaries[4:5])) == [0]
    assert star_seed_runs([_summary("net-a", 0, "a")]) == {}


def test_the_report_row_name():
    (c,) = star_seed_claims({})
    assert c["claim"] == STAR_SEED_CLAIM == "gamma tracks speed vs another seed's end point" and c["verdict"] == NA


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow  # about 60-70 s on 2 busy cores, and as much again for --jobs 2
@needs_archive
def test_smoke_with_a_star_seed_end_to_end(tmp_path):
    args = ["deep", "--suite", "skip", "--preset", "smoke", "--seeds", "2", "--star-seed", "0", "--quiet"]
    r = gpcheck(args + ["--out", str(tmp_path / "a")], env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = tmp_path / "a" / "skip-smoke-cifar10-jpeg-starseed0"
    assert json.loads((out / "suite.json").read_text())["star_seed"] == 0
    for run in sorted(p for p in (out / "runs").iterdir() if p.is_dir()):
        info = json.loads((run / "trace.json").read_text())
        seed = info["run"]["seed"]
        if seed == 0:
            assert "star_seed0" not in info["companions"] and "star_seed" not in info
            continue
        entry = info["companions"]["star_seed0"]
        own = out / "runs" / run.name.removesuffix("-s1") / "theta_star.pt"
        assert entry["source"] == {"kind": "external", "path": str(own.resolve()), "sha256": sha256_file(own)}
        assert info["star_seed"] == {"seed": 0, "run": own.parent.name, "companion": "star_seed0", "why": None}
    rep = json.loads((out / "report.json").read_text())
    rows = [c for c in rep["claims"] if c["claim"].endswith(STAR_SEED_CLAIM)]
    assert [c["claim"] for c in rows] == [f"resnet18 {STAR_SEED_CLAIM}", f"resnet34 {STAR_SEED_CLAIM}"]
    for c in rows:  # smoke's 2 epochs converge nowhere: NOT APPLICABLE, with each variant's numbers and why
        assert c["verdict"] == NA and "did not converge (last/first epoch loss" in c["why"], c
        assert all("gamma_bar" in v and "end_ratio" in v for k, v in c["numbers"].items()), c["numbers"]
    assert f"resnet18 {STAR_SEED_CLAIM}" in (out / "report.md").read_text()
    # a rerun measures nothing; --jobs 2 gives the same bits
    again = gpcheck(args + ["--out", str(tmp_path / "a")], env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "10 of 10 runs were already finished; nothing measured" in again.stdout
    two = gpcheck(args + ["--jobs", "2", "--out", str(tmp_path / "b")], env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr
    b = tmp_path / "b" / "skip-smoke-cifar10-jpeg-starseed0"
    assert traces_of(b) == traces_of(out)
    for run in (b / "runs").glob("*-s1"):  # each judged against its own folder's seed 0, with the same bits
        comp = json.loads((run / "trace.json").read_text())["companions"]["star_seed0"]
        want = json.loads((out / "runs" / run.name / "trace.json").read_text())["companions"]["star_seed0"]
        assert comp["source"]["sha256"] == want["source"]["sha256"] and str(b) in comp["source"]["path"]
        with np.load(run / comp["file"]) as x, np.load(out / "runs" / run.name / want["file"]) as y:
            assert all(np.array_equal(x[k], y[k]) for k in COLUMNS)
