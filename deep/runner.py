"""Run a suite: load the data once, measure every run (skipping finished ones), keep a manifest.

(About 440 lines: the manifest and its locks are the suite folder's crash-safety contract, kept
beside the queue that writes it.)

Data flows one way: this module produces traces; the command line (validation/cli.py) turns
them into verdicts and reports. Nothing here imports ``validation``.

A suite folder ``OUT/<suite>-<preset>-<dataset>/`` holds ``suite.json`` (what was asked),
``runs/<network>-<variant>/`` (one measured run each, see deep/measure.py) and ``manifest.json``:
for every finished run, its status, the sha256 of its ``trace.npz`` and of its ``trace.json``'s
canonical content (deep/verify.py), written when the run finished, so a report and a rerun can
tell a trace or its metadata that was altered or swapped afterwards.

Everything a task writes, wipes or reads as state lies inside its ``--out`` root: a suite or run
folder that is a link, or a link inside one to a folder elsewhere, is refused
(:class:`gamma_theory.files.PathEscape`) before anything is touched.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from gamma_theory.files import BadFile, check_links, inside, not_a_link, read_json, write_json
from gamma_theory.optimizers import make_optimizer

from .data import DataError, DeviceData, balanced_subset, load_split
from .env import resolve_device
from .measure import (EnvironmentMismatch, Extras, ExternalStar, MeasuredRun, RecordingError, ReplayMismatch,
                      StarRefused, measure)
from .models import model_for_run
from .state import StateDamaged, verify_state
from .suites import ASSUMPTIONS, PRESET_TABLE, RunSpec
from .tasks import (DATASET_CHOICES, DATASET_SHAPE, DEFAULT_OUT, LABELS, MANIFEST_FILE,  # noqa: F401 (re-exported)
                    RANDOM_LABELS_SEED, SUITE_FILE, RunTask, SuiteConfig, _digest, describe_outcome, outcomes,
                    queue_desc, report_dir, resolve_datasets, resolve_suites, run_states, star_seed_companion,
                    suite_dirs, suite_tasks, tasks_of, touched, waves)
from .verify import SETUP_JSON, SUITE_JSON, manifest_entry_for, manifest_problem, read_manifest_file, read_trace_json

def load_train_data(dataset: str, n_sub: int | None, device: torch.device, data_root=None, download=False,
                    labels: str = "true"):
    """The training split (a class-balanced subset of ``n_sub`` if given) on ``device``, and a
    description of it. ``labels="random"``: the labels permuted at random (seeded with
    :data:`RANDOM_LABELS_SEED`), so the networks memorize noise. A split that cannot serve (too few
    images or classes, constant images) raises :class:`DataError` saying what is wrong."""
    split = load_split(dataset, "train", root=data_root, download=download)
    label_mode = labels
    if label_mode not in LABELS:
        raise ValueError(f"unknown labels {label_mode!r}; choose one of {', '.join(LABELS)}")
    images, labels = split.images, split.labels
    classes, full = DATASET_SHAPE[dataset]
    where = split.source
    if split.num_classes != classes or len(torch.unique(labels)) != classes:
        raise DataError(f"{where}: {dataset} has {classes} classes, but this copy names {split.num_classes} and "
                        f"uses {len(torch.unique(labels))}; point --data-root at a complete copy")
    need = n_sub if n_sub is not None else 1
    if len(split) < need:
        raise DataError(f"{where}: {len(split)} training images, but the preset trains on a class-balanced "
                        f"subset of {n_sub}; point --data-root at a complete copy of {dataset}")
    desc = f"{split.source}, {len(split)} training images"
    if n_sub is not None and n_sub < len(split):
        try:
            idx = balanced_subset(labels, n_sub, seed=0)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}; point --data-root at a complete copy of {dataset}") from None
        images, labels = images[idx], labels[idx]
        desc += f"; class-balanced subset of {n_sub} (seed 0)"
    elif n_sub is None and len(split) < full:
        desc += f" (NOT the full {full:,} of {dataset})"
        _note(f"gpcheck: warning: {where} holds {len(split)} training images, not the {full:,} of {dataset}; "
              "the report says so")
    if label_mode == "random":
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(RANDOM_LABELS_SEED))
        labels = labels[perm]
        desc += f"; RANDOM LABELS (the labels permuted at random, seed {RANDOM_LABELS_SEED}: the networks memorize noise)"
    data = DeviceData(images, labels, device=device, channels_last=device.type == "cuda")
    if bool((data.std <= 1e-6).any()):
        raise DataError(f"{where}: the training images are constant in a color channel (std "
                        f"{[round(float(s), 6) for s in data.std]}), so they cannot be normalized: "
                        "the data set is not CIFAR; point --data-root at a complete copy")
    return data, split.num_classes, desc


def run_one(spec: RunSpec, data: DeviceData, num_classes: int, workdir: Path, meta: dict, progress: bool,
            extras: Extras = Extras(), cuda_graphs: bool | None = None) -> MeasuredRun:
    def model_fn():
        return model_for_run(spec, num_classes)

    def optimizer_fn(params):
        return make_optimizer(spec.optimizer, params, spec.lr)

    return measure(
        model_fn, optimizer_fn, data, lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
        workdir=workdir, seed=spec.seed, data_seed=spec.data_seed,
        channels_last=data.channels_last, meta={**meta, "run": spec.to_dict()},
        progress=progress, desc=spec.name, extras=extras, cuda_graphs=cuda_graphs,
    )


@contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (created if absent) for the block: two processes
    working on one suite folder never measure the same run, or update the manifest, at once.
    Yields whether the lock is held: with ``blocking=False`` it is not when another process
    holds it, and the block should leave the run to that process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a lock file that is a link is refused, never created or opened through it
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(out: Path) -> dict:
    """``manifest.json`` of a suite folder ({} when there is none); :class:`BadFile` if damaged."""
    path = out / MANIFEST_FILE
    if not path.exists():
        return {}
    m = read_manifest_file(path)
    m.setdefault("runs", {})
    if m["runs"] is None:
        m["runs"] = {}
    return m


_WARNED_MISSING: set = set()  # suite folders whose missing manifest this process has warned about


def _record_in_manifest(out: Path, name: str, run: MeasuredRun | None, error: str | None,
                        was_finished: bool = False) -> None:
    """Record a finished run (its status and the digests of its trace.npz and trace.json) or its
    error. A manifest found missing while the run was finished before (it was deleted) is rebuilt
    from the runs, each recorded once its files verify, with a warning; a damaged one too."""
    with locked(out / ".manifest.lock"):
        try:
            m = read_manifest(out)
        except BadFile as exc:
            print(f"gpcheck: warning: {exc}; writing a new manifest from the runs that verify", file=sys.stderr)
            m = {}
        if not m and was_finished and out not in _WARNED_MISSING:
            _WARNED_MISSING.add(out)
            print(f"gpcheck: warning: {out / MANIFEST_FILE} is missing although runs had finished; it is rebuilt "
                  "from the runs whose files verify", file=sys.stderr)
        runs = m.setdefault("runs", {})
        if error is not None:
            runs[name] = {"status": "error", "error": error}
        else:
            runs[name] = manifest_entry_for(read_trace_json(run.workdir / "trace.json"))
        write_json(out / MANIFEST_FILE, m, sort_keys=True)


def rebuild_manifest(out: Path, names: list[str]) -> None:
    """Write a missing manifest from the runs ``names`` (runs of the suite whose files were just
    verified: their trace digests, companions and spec); an entry already there is kept."""
    with locked(out / ".manifest.lock"):
        try:
            m = read_manifest(out)
        except BadFile:
            return  # damaged meanwhile: left to `gpcheck deep`, which says so and rewrites it
        runs = m.setdefault("runs", {})
        for name in names:
            if name not in runs:
                runs[name] = manifest_entry_for(read_trace_json(out / "runs" / name / "trace.json"))
        write_json(out / MANIFEST_FILE, m, sort_keys=True)


def _check_with_manifest(out: Path, name: str, workdir: Path) -> None:
    """A finished run whose trace.json is not the one the manifest recorded (edited, or swapped
    with its trace) is measured again: its trace.json is removed, with a warning. One that
    cannot be read is left to the run's own check (deep/measure.py), which measures it again."""
    done = workdir / "trace.json"
    if not done.is_file():
        return
    try:
        entry = read_manifest(out).get("runs", {}).get(name)
        info = read_trace_json(done)
    except BadFile:
        return
    if entry is None or entry.get("status") == "error":
        return
    why = manifest_problem(info, entry)
    if why:
        warnings.warn(f"{done} {why}; measuring the run again", stacklevel=2)
        done.unlink(missing_ok=True)


def write_suite_info(out: Path, info: dict, wall_s: float = 0.0) -> None:
    """``suite.json``: keeps the first start time across resumed invocations, and adds ``wall_s``
    to the suite's wall time over all of them (under a lock: workers of one suite share it)."""
    path = out / SUITE_FILE
    with locked(out / ".suite.lock"):
        before = {}
        if path.exists():
            try:
                before = read_json(path, SUITE_JSON, "a suite.json")
            except BadFile as exc:
                print(f"gpcheck: warning: {exc}; it is rewritten whole", file=sys.stderr)
        info["started_utc"] = before.get("started_utc", info["started_utc"])
        info["wall_s"] = float(before.get("wall_s") or 0.0) + wall_s
        write_json(path, info)


def extras_for(preset: str, star_extend: float = 0.0) -> Extras:
    """What pass 2 records besides the path, for the preset named ``preset`` (a queue's tasks carry
    theirs: :attr:`deep.tasks.SuiteConfig.extras`; see :class:`deep.measure.Extras`)."""
    p = PRESET_TABLE[preset]
    return Extras(random_baseline=p.random_baseline, sensitivity=p.sensitivity, star_extend=star_extend)


@dataclass
class _OpenSuite:
    out: Path
    data: DeviceData
    num_classes: int
    meta: dict
    extras: Extras
    info: dict
    cuda_graphs: bool | None = None
    busy_s: float = 0.0
    written: bool = False  #: this process measured (or tried) a run of the suite and wrote suite.json

    def measuring(self) -> None:
        """A run is about to be measured: write ``suite.json`` once (device, threads, command of
        this invocation; the first start time and the wall time so far are kept)."""
        if not self.written:
            write_suite_info(self.out, self.info)
            self.written = True


_DATA: dict = {}  # (dataset, subset, device, data_root, labels) -> (data, num_classes, desc), per process


def _data_for(ds: str, train_subset: int | None, dev: torch.device, data_root, download: bool, labels: str):
    key = (ds, train_subset, str(dev), data_root, labels)
    if key not in _DATA:
        _DATA[key] = load_train_data(ds, key[1], dev, data_root, download, labels)
    return _DATA[key]


def open_suite(task: RunTask, command: str | None = None) -> _OpenSuite:
    """Load the task's data (once per process) and describe its suite. ``suite.json`` is written
    (:meth:`_OpenSuite.measuring`) only when a run of it is measured: an invocation that finds
    every run finished leaves the facts of the invocations that measured them as they are."""
    cfg = task.config
    dev = resolve_device(task.device)
    extras = cfg.extras
    data, num_classes, data_desc = _data_for(cfg.dataset, cfg.settings.train_subset, dev, task.data_root,
                                             task.download, cfg.labels)
    out = _confined_suite(task)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    info = {
        "suite": cfg.suite, "preset": cfg.preset, "preset_description": cfg.settings.description,
        "dataset": cfg.dataset, "data": data_desc, "n_train": len(data), "num_classes": num_classes,
        "question": cfg.question, "assumptions": ASSUMPTIONS, "device": str(dev),
        "threads": torch.get_num_threads(), "seeds": cfg.seeds, "labels": cfg.labels,
        "random_labels_seed": RANDOM_LABELS_SEED if cfg.labels == "random" else None, "extras": extras.to_dict(),
        "cuda_graphs": dev.type == "cuda" if task.cuda_graphs is None else task.cuda_graphs,
        "command": command or f"gpcheck deep --suite {cfg.suite} --preset {cfg.preset} --dataset {cfg.dataset}",
        "runs": [r.to_dict() for r in cfg.runs],
        **({"networks": list(cfg.networks)} if cfg.networks else {}),
        **({"variants": list(cfg.variants)} if cfg.variants else {}),
        **({"star_seed": cfg.star_seed} if cfg.star_seed is not None else {}),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta = {"suite": cfg.suite, "preset": cfg.preset, "dataset": cfg.dataset, "data": data_desc}
    return _OpenSuite(out, data, num_classes, meta, extras, info, task.cuda_graphs)


def _confined_suite(task: RunTask) -> Path:
    """The task's suite folder, after checking that it, its runs/ and everything in it stay inside
    the task's --out root (:class:`gamma_theory.files.PathEscape` otherwise)."""
    out = inside(task.out.relative_to(task.out_root), task.out_root, "a suite folder")
    not_a_link(out, "a suite folder")
    not_a_link(out / "runs", "the runs folder of a suite")
    check_links(out)
    return out


def check_suite_folders(tasks: list[RunTask]) -> None:
    """Before any work: every suite folder of ``tasks`` stays inside its --out root, with no run
    folder that is a link and no link to a folder elsewhere (:class:`gamma_theory.files.PathEscape`)."""
    firsts = {t.out: t for t in tasks}
    for t in firsts.values():
        out = _confined_suite(t)
        if (out / "runs").is_dir():
            for run in (out / "runs").iterdir():
                not_a_link(run, "a run folder")


def _suite_of(task: RunTask, opened: dict, command: str | None) -> _OpenSuite:
    key = (task.config, task.device, task.data_root, task.download, task.cuda_graphs)
    if key not in opened:
        t0 = time.perf_counter()
        opened[key] = open_suite(task, command)
        opened[key].busy_s += time.perf_counter() - t0
    return opened[key]


def measure_task(task: RunTask, blocking: bool = True, progress: bool = False, command: str | None = None,
                 _opened: dict | None = None) -> bool:
    """Measure one task under its run's lock (skipping it when finished, resuming it from its
    checkpoints when interrupted); False when another process holds the run and not ``blocking``."""
    s = _suite_of(task, {} if _opened is None else _opened, command)
    t0 = time.perf_counter()
    try:
        star = star_seed_extras(task, s.extras, blocking)
        if star is None:  # seed N's end point is not there yet (--star-seed N)
            if not blocking:
                return False  # tried again, waiting, after the rest of the queue
            _note(f"gpcheck: {task.name} is not measured: {_star_run_state(task)[1]}; rerun the same command once "
                  "it has finished")
            return True
        extras, star_info = star
        meta = s.meta if star_info is None else {**s.meta, "star_seed": star_info}
        return _measure_if_free(task.spec, s.out, s.data, s.num_classes, meta, progress, extras, blocking,
                                s.cuda_graphs, s.measuring)
    finally:
        s.busy_s += time.perf_counter() - t0


# -- --star-seed N: the runs of the other seeds judged against seed N's end points ------------------
def _star_run_state(task: RunTask) -> tuple[str, object]:
    """Where seed N's run of the task's network and variant stands (``--star-seed N``):
    ``("ready", ExternalStar)`` when it finished without diverging and its ``theta_star.pt``
    verifies (the digest its ``.sha256`` holds); ``("unusable", why)`` when it diverged or ended in
    an error (the task is measured without that companion, and its trace says why);
    ``("waiting", why)`` when it has not finished (or its theta* is not intact)."""
    cfg = task.config
    other = cfg.star_run(task.spec)
    n = cfg.star_seed
    wd = cfg.out / "runs" / other.name
    who = f"seed {n}'s run {other.name}"
    done, err = wd / "trace.json", wd / "error.json"
    if not done.is_file():
        if err.is_file():
            try:
                e = read_json(err)
                what = f"{e['error']}: {str(e['message']).splitlines()[0]}"
            except (BadFile, KeyError, TypeError, IndexError):
                what = "its error.json is damaged"
            return "unusable", f"{who} ended in an error ({what})"
        return "waiting", f"{who} has not finished"
    try:
        info = read_trace_json(done)
    except BadFile as exc:
        return "waiting", f"{who} does not verify ({exc})"
    if info.get("status") == "diverged":
        d = info.get("diverged") or {}
        return "unusable", (f"{who} diverged ({d.get('reason')} in epoch {d.get('epoch')}): its last iterate is no "
                            "end point of training")
    star = wd / "theta_star.pt"
    try:
        verify_state(star)
        sha = star.with_name(star.name + ".sha256").read_text().split()[0]
    except (StateDamaged, OSError, IndexError) as exc:
        return "waiting", (f"{who} finished, but its end point {star} is not there intact ({exc}); delete {wd} to "
                           "measure it again")
    return "ready", ExternalStar(star_seed_companion(n), str(star), sha)


def _recorded_extras(workdir: Path) -> dict | None:
    """The extras the run folder's ``setup.json`` recorded when the run started (None: not started,
    or a setup.json that does not verify, which the run's claim wipes)."""
    if not (workdir / "setup.json").is_file():
        return None
    try:
        return read_json(workdir / "setup.json", SETUP_JSON, "a run's setup.json").get("extras") or {}
    except BadFile:
        return None


def star_seed_extras(task: RunTask, extras: Extras, blocking: bool) -> tuple[Extras, dict | None] | None:
    """The extras ``task`` is measured with, and what its trace records about ``--star-seed N``
    (``{"seed", "run", "companion", "why"}``; None for a run that is judged against no other seed).

    A run of another seed than N is also judged against seed N's end point of its network and
    variant (companion ``star_seed<N>``, :func:`_star_run_state`). When that run diverged or ended
    in an error, the task is measured without it, and ``why`` says so. The choice is made once, when
    the run starts: a run folder that recorded its settings keeps them (a finished run is reused
    as it was measured, wherever its theta* file now lies). None when seed N's run has not
    finished: with ``blocking``, after waiting for the process that holds it."""
    other = task.config.star_run(task.spec)
    if other is None:
        return extras, None
    n = task.config.star_seed
    name = star_seed_companion(n)
    info = {"seed": n, "run": other.name, "companion": None, "why": None}
    recorded = _recorded_extras(task.workdir)
    if recorded is not None:
        stars = [ExternalStar(**d) for d in recorded.get("external_stars") or [] if d.get("name") == name]
        if stars:
            return replace(extras, external_stars=(*extras.external_stars, stars[0])), {**info, "companion": name}
        state, what = _star_run_state(task)
        if state != "unusable":
            now = what if state == "waiting" else "now it can"
            what = (f"it started before seed {n}'s end point could serve ({now}); delete {task.workdir} to measure it "
                    "against it")
        return extras, {**info, "why": what}
    state, what = _star_run_state(task)
    if state == "waiting" and blocking:
        with locked(task.config.out / "runs" / f".{other.name}.lock"):  # its holder measures it meanwhile
            pass
        state, what = _star_run_state(task)
    if state == "ready":
        return replace(extras, external_stars=(*extras.external_stars, what)), {**info, "companion": name}
    if state == "unusable":
        return extras, {**info, "why": what}
    return None


def run_queue(tasks: list[RunTask], *, progress: bool = True, command: str | None = None,
              add_wall: bool = True) -> list[Path]:
    """Measure ``tasks`` in this process; returns their suite folders.

    First every run no other process holds; then, waiting, the ones that were held (by now usually
    finished by their holder, so they are only checked). Two invocations, or the workers of
    ``--jobs``, so share one queue without measuring a run twice. A run that fails (a replay
    mismatch, a damaged run folder that could not be remeasured, an op without a deterministic
    kernel, ...) is written to its ``error.json`` and the queue goes on. ``add_wall=False`` (a
    worker of an executor): the caller adds the suites' wall time itself.
    """
    opened: dict = {}
    t_start = time.perf_counter()
    bar = _suite_bar(tasks, progress, queue_desc(tasks))
    finished = False
    try:
        held = [t for t in bar if not measure_task(t, False, progress, command, opened)]
        for t in held:
            measure_task(t, True, progress, command, opened)
        finished = True
    finally:  # an interrupted invocation's time counts too (its checkpoints are what a rerun resumes)
        if bar is not tasks:
            bar.close()  # before any error is printed: the bar keeps its own line
        for s in opened.values():
            if not s.written:  # nothing of it measured here: suite.json stays as the measuring invocation left it
                continue
            if finished:
                s.info["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            # one suite alone: the invocation's wall time; in a queue of many, the time spent on it
            wall = time.perf_counter() - t_start if len(opened) == 1 else s.busy_s
            s.info["last_invocation_wall_s"] = wall
            write_suite_info(s.out, s.info, wall if add_wall else 0.0)
    return suite_dirs(tasks)


def run_suite(suite_name: str, preset: str = "smoke", dataset: str | None = None, *, data_root=None,
              download: bool = False, device: str | None = None, out_root: str | os.PathLike = DEFAULT_OUT,
              progress: bool = True, command: str | None = None, seeds: int | None = None, labels: str = "true",
              star_extend: float = 0.0, add_wall: bool = True, cuda_graphs: bool | None = None) -> list[Path]:
    """Measure every run of the suite on each data set; returns the suite folders (see
    :func:`run_queue`)."""
    tasks = suite_tasks(suite_name, preset, dataset, out_root, seeds=seeds, labels=labels, star_extend=star_extend,
                        data_root=data_root, download=download, device=device, cuda_graphs=cuda_graphs)
    return run_queue(tasks, progress=progress, command=command, add_wall=add_wall)


def execute_task(task: RunTask) -> dict:
    """Measure one task in a process of an executor (a Slurm array task, a Ray task); returns
    ``{"run", "suite_dir", "status"}`` with status ``ok``, ``error`` (the run's ``error.json``
    says why), or ``failed: <one line>`` for what no run can survive (the data, a run folder of
    other settings). Sets the task's CPU threads first."""
    from .measure import RunMismatch

    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        measure_task(task, blocking=True, _opened=_EXECUTOR_OPENED)
    except (DataError, RunMismatch, ValueError) as exc:
        return {"run": task.name, "suite_dir": str(task.out), "status": f"failed: {' '.join(str(exc).split())}"}
    status = "error" if (task.workdir / "error.json").is_file() else "ok"
    return {"run": task.name, "suite_dir": str(task.out), "status": status}


_EXECUTOR_OPENED: dict = {}  # suites opened by this executor process (a Ray worker runs many tasks)


def _measure_if_free(spec: RunSpec, out: Path, data, num_classes: int, meta: dict, progress: bool, extras: Extras,
                     blocking: bool, cuda_graphs: bool | None = None, measuring=lambda: None) -> bool:
    """Measure one run under its lock; False when another process holds it (and not ``blocking``).
    A run that fails (a replay mismatch, a damaged run folder that could not be remeasured, an op
    without a deterministic kernel, out of memory) is written to its ``error.json``. A run found
    finished is only verified; its manifest entry is rewritten only where it lacks what the
    manifest now records (the same bytes otherwise). ``measuring()`` is called before a run is
    measured (or found damaged and measured again)."""
    workdir = not_a_link(out / "runs" / spec.name, "a run folder")
    err = workdir / "error.json"
    with locked(out / "runs" / f".{spec.name}.lock", blocking) as got:
        if not got:
            return False
        done_before = _digest(workdir / "trace.json")
        if done_before is None:
            measuring()
        err.unlink(missing_ok=True)
        _check_with_manifest(out, spec.name, workdir)
        was_finished = (workdir / "trace.json").is_file()
        try:
            run = run_one(spec, data, num_classes, workdir, meta, progress, extras, cuda_graphs)
        except (ReplayMismatch, EnvironmentMismatch, RecordingError, StateDamaged, StarRefused, RuntimeError) as exc:
            measuring()
            workdir.mkdir(parents=True, exist_ok=True)
            write_json(err, {"error": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
            _record_in_manifest(out, spec.name, None, f"{type(exc).__name__}: {exc}")
            _note(f"gpcheck: {spec.name} failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                  f"details in {err}; the suite goes on")
            return True
        if done_before is None or _digest(workdir / "trace.json") != done_before:
            measuring()
    _record_in_manifest(out, spec.name, run, None, was_finished)
    return True


def _note(line: str) -> None:
    """One line on stderr, on a line of its own above any progress bar (tqdm clears and redraws them)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _suite_bar(runs, progress: bool, desc: str):
    if not progress:
        return runs
    from tqdm.auto import tqdm

    return tqdm(runs, desc=desc, unit="run", dynamic_ncols=True)
