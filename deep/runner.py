"""Run a suite: load the data once, measure every run (skipping finished ones), keep a manifest.

Data flows one way: this module produces traces; the command line (validation/cli.py) turns
them into verdicts and reports. Nothing here imports ``validation``.

A suite folder ``OUT/<suite>-<preset>-<dataset>/`` holds ``suite.json`` (what was asked),
``runs/<network>-<variant>/`` (one measured run each, see deep/measure.py) and ``manifest.json``:
for every finished run, its status and the sha256 of its ``trace.npz``, written when the run
finished, so a report can tell a trace that was altered or swapped afterwards.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from gamma_theory.files import BadFile, read_json, write_json
from gamma_theory.optimizers import make_optimizer

from .data import DataError, DeviceData, balanced_subset, load_split
from .env import resolve_device
from .measure import EnvironmentMismatch, Extras, MeasuredRun, RecordingError, ReplayMismatch, measure
from .models import build_model
from .state import StateDamaged
from .suites import ASSUMPTIONS, PRESET_TABLE, RunSpec, get_suite

DATASET_CHOICES = ("cifar10", "cifar100", "cifar10-jpeg", "both")
LABELS = ("true", "random")
#: seed of the permutation behind ``--labels random`` (stated in every report)
RANDOM_LABELS_SEED = 0
#: classes and training images of the full data sets
DATASET_SHAPE = {"cifar10": (10, 50_000), "cifar100": (100, 50_000), "cifar10-jpeg": (10, 50_000)}


def resolve_datasets(dataset: str | None, preset: str) -> list[str]:
    dataset = dataset or PRESET_TABLE[preset].default_dataset
    if dataset not in DATASET_CHOICES:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASET_CHOICES)}")
    return ["cifar10", "cifar100"] if dataset == "both" else [dataset]


def report_dir(out_root: str | os.PathLike, suite: str, preset: str, dataset: str, labels: str = "true") -> Path:
    return Path(out_root) / (f"{suite}-{preset}-{dataset}" + ("-random-labels" if labels == "random" else ""))


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
        print(f"gpcheck: warning: {where} holds {len(split)} training images, not the {full:,} of {dataset}; "
              "the report says so", file=sys.stderr)
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
            extras: Extras = Extras()) -> MeasuredRun:
    def model_fn():
        return build_model(spec.network, num_classes, spec.activation, spec.bn, spec.skip, spec.width, spec.seed)

    def optimizer_fn(params):
        return make_optimizer(spec.optimizer, params, spec.lr)

    return measure(
        model_fn, optimizer_fn, data, lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
        workdir=workdir, seed=spec.seed, data_seed=spec.data_seed,
        channels_last=data.channels_last, meta={**meta, "run": spec.to_dict()},
        progress=progress, desc=spec.name, extras=extras,
    )


@contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (created if absent) for the block: two processes
    working on one suite folder never measure the same run, or update the manifest, at once.
    Yields whether the lock is held: with ``blocking=False`` it is not when another process
    holds it, and the block should leave the run to that process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
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
    path = out / "manifest.json"
    if not path.exists():
        return {}
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("runs", {}), dict):
        raise BadFile(path, "is not a gpcheck manifest")
    return m


def _record_in_manifest(out: Path, name: str, run: MeasuredRun | None, error: str | None) -> None:
    with locked(out / ".manifest.lock"):
        try:
            m = read_manifest(out)
        except BadFile as exc:
            print(f"gpcheck: warning: {exc}; writing a new manifest", file=sys.stderr)
            m = {}
        runs = m.setdefault("runs", {})
        if error is not None:
            runs[name] = {"status": "error", "error": error}
        else:
            info = read_json(run.workdir / "trace.json")
            runs[name] = {"status": run.status, "trace_sha256": info.get("npz_sha256")}
        write_json(out / "manifest.json", m, sort_keys=True)


def write_suite_info(out: Path, info: dict, wall_s: float = 0.0) -> None:
    """``suite.json``: keeps the first start time across resumed invocations, and adds ``wall_s``
    to the suite's wall time over all of them (under a lock: workers of one suite share it)."""
    path = out / "suite.json"
    with locked(out / ".suite.lock"):
        before = {}
        if path.exists():
            try:
                before = read_json(path)
                before = before if isinstance(before, dict) else {}
            except BadFile:
                pass  # a damaged suite.json is rewritten whole
        info["started_utc"] = before.get("started_utc", info["started_utc"])
        info["wall_s"] = float(before.get("wall_s") or 0.0) + wall_s
        write_json(path, info)


def extras_for(preset: str, star_extend: float = 0.0) -> Extras:
    """What pass 2 records besides the path, for ``preset`` (see :class:`deep.measure.Extras`)."""
    p = PRESET_TABLE[preset]
    return Extras(random_baseline=p.random_baseline, sensitivity=p.sensitivity, star_extend=star_extend)


def run_suite(suite_name: str, preset: str = "smoke", dataset: str | None = None, *, data_root=None,
              download: bool = False, device: str | None = None, out_root: str | os.PathLike = "reports",
              progress: bool = True, command: str | None = None, seeds: int | None = None, labels: str = "true",
              star_extend: float = 0.0, add_wall: bool = True) -> list[Path]:
    """Measure every run of the suite on each data set; returns the suite folders.

    A run that fails (a replay mismatch, a damaged run folder that could not be remeasured, an op
    without a deterministic kernel, ...) is written to its ``error.json`` and the suite goes on.
    ``add_wall=False`` (a worker of ``--jobs``): the caller adds the suite's wall time itself.
    """
    suite = get_suite(suite_name, preset, seeds)
    seeds = len({r.seed for r in suite.runs})
    extras = extras_for(preset, star_extend)
    datasets = resolve_datasets(dataset, preset)
    dev = resolve_device(device)
    out_dirs = []
    for ds in datasets:
        out = report_dir(out_root, suite_name, preset, ds, labels)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        data, num_classes, data_desc = load_train_data(ds, PRESET_TABLE[preset].train_subset, dev, data_root, download,
                                                       labels)
        info = {
            "suite": suite_name, "preset": preset, "preset_description": PRESET_TABLE[preset].description,
            "dataset": ds, "data": data_desc, "n_train": len(data), "num_classes": num_classes,
            "question": suite.question, "assumptions": ASSUMPTIONS, "device": str(dev),
            "threads": torch.get_num_threads(), "seeds": seeds, "labels": labels,
            "random_labels_seed": RANDOM_LABELS_SEED if labels == "random" else None, "extras": extras.to_dict(),
            "command": command or f"gpcheck deep --suite {suite_name} --preset {preset} --dataset {ds}",
            "runs": [r.to_dict() for r in suite.runs],
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_suite_info(out, info)
        meta = {"suite": suite_name, "preset": preset, "dataset": ds, "data": data_desc}
        t0 = time.perf_counter()
        # First every run no other process holds; then, waiting, the ones that were held (by now
        # usually finished by their holder, so they are only checked). Two invocations, or the
        # workers of --jobs, so share a suite without measuring a run twice.
        held = [spec for spec in _suite_bar(suite.runs, progress, f"{suite_name}/{preset}/{ds}")
                if not _measure_if_free(spec, out, data, num_classes, meta, progress, extras, blocking=False)]
        for spec in held:
            _measure_if_free(spec, out, data, num_classes, meta, progress, extras, blocking=True)
        info["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["last_invocation_wall_s"] = time.perf_counter() - t0
        write_suite_info(out, info, info["last_invocation_wall_s"] if add_wall else 0.0)
        out_dirs.append(out)
    return out_dirs


def read_suite_runs(suite_name: str, preset: str, seeds: int | None = None) -> list[str]:
    """The names of a suite's runs, in order."""
    return [r.name for r in get_suite(suite_name, preset, seeds).runs]


def _measure_if_free(spec: RunSpec, out: Path, data, num_classes: int, meta: dict, progress: bool, extras: Extras,
                     blocking: bool) -> bool:
    """Measure one run under its lock; False when another process holds it (and not ``blocking``).
    A run that fails (a replay mismatch, a damaged run folder that could not be remeasured, an op
    without a deterministic kernel, out of memory) is written to its ``error.json``."""
    workdir = out / "runs" / spec.name
    err = workdir / "error.json"
    with locked(out / "runs" / f".{spec.name}.lock", blocking) as got:
        if not got:
            return False
        err.unlink(missing_ok=True)
        try:
            run = run_one(spec, data, num_classes, workdir, meta, progress, extras)
        except (ReplayMismatch, EnvironmentMismatch, RecordingError, StateDamaged, RuntimeError) as exc:
            workdir.mkdir(parents=True, exist_ok=True)
            write_json(err, {"error": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
            _record_in_manifest(out, spec.name, None, f"{type(exc).__name__}: {exc}")
            print(f"gpcheck: {spec.name} failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                  f"details in {err}; the suite goes on", file=sys.stderr)
            return True
    _record_in_manifest(out, spec.name, run, None)
    return True


def _suite_bar(runs, progress: bool, desc: str):
    if not progress:
        return runs
    from tqdm.auto import tqdm

    return tqdm(runs, desc=desc, unit="run", dynamic_ncols=True)
