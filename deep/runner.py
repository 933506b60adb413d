"""Run a suite: load the data once, measure every run (skipping finished ones), then report."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from gamma_theory.optimizers import make_optimizer

from .data import DeviceData, balanced_subset, load_split
from .env import resolve_device
from .measure import EnvironmentMismatch, ReplayMismatch, measure
from .models import build_model
from .suites import ASSUMPTIONS, PRESET_TABLE, RunSpec, get_suite

DATASET_CHOICES = ("cifar10", "cifar100", "cifar10-jpeg", "both")


def resolve_datasets(dataset: str | None, preset: str) -> list[str]:
    dataset = dataset or PRESET_TABLE[preset].default_dataset
    if dataset not in DATASET_CHOICES:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASET_CHOICES)}")
    return ["cifar10", "cifar100"] if dataset == "both" else [dataset]


def report_dir(out_root: str | os.PathLike, suite: str, preset: str, dataset: str) -> Path:
    return Path(out_root) / f"{suite}-{preset}-{dataset}"


def load_train_data(dataset: str, n_sub: int | None, device: torch.device, data_root=None, download=False):
    """The training split (a class-balanced subset of ``n_sub`` if given) on ``device``, and a
    description of it."""
    split = load_split(dataset, "train", root=data_root, download=download)
    images, labels = split.images, split.labels
    desc = f"{split.source}, {len(split)} training images"
    if n_sub is not None and n_sub < len(split):
        idx = balanced_subset(labels, n_sub, seed=0)
        images, labels = images[idx], labels[idx]
        desc += f"; class-balanced subset of {n_sub} (seed 0)"
    data = DeviceData(images, labels, device=device, channels_last=device.type == "cuda")
    return data, split.num_classes, desc


def run_one(spec: RunSpec, data: DeviceData, num_classes: int, workdir: Path, meta: dict, progress: bool):
    def model_fn():
        return build_model(spec.network, num_classes, spec.activation, spec.bn, spec.skip, spec.width)

    def optimizer_fn(params):
        return make_optimizer(spec.optimizer, params, spec.lr)

    return measure(
        model_fn, optimizer_fn, data, lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
        workdir=workdir, seed=spec.seed, data_seed=spec.data_seed,
        channels_last=data.channels_last, meta={**meta, "run": spec.to_dict()},
        progress=progress, desc=spec.name,
    )


def run_suite(suite_name: str, preset: str = "smoke", dataset: str | None = None, *, data_root=None,
              download: bool = False, device: str | None = None, out_root: str | os.PathLike = "reports",
              progress: bool = True, command: str | None = None) -> list[Path]:
    """Measure every run of the suite on each data set and write its report; returns the report dirs."""
    from validation.deep_report import build_report  # validation depends on deep, not the reverse at import

    suite = get_suite(suite_name, preset)
    datasets = resolve_datasets(dataset, preset)
    dev = resolve_device(device)
    out_dirs = []
    for ds in datasets:
        out = report_dir(out_root, suite_name, preset, ds)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        data, num_classes, data_desc = load_train_data(ds, PRESET_TABLE[preset].train_subset, dev, data_root, download)
        info = {
            "suite": suite_name, "preset": preset, "preset_description": PRESET_TABLE[preset].description,
            "dataset": ds, "data": data_desc, "n_train": len(data), "num_classes": num_classes,
            "question": suite.question, "assumptions": ASSUMPTIONS, "device": str(dev),
            "command": command or f"gpcheck deep --suite {suite_name} --preset {preset} --dataset {ds}",
            "runs": [r.to_dict() for r in suite.runs],
        }
        suite_json = out / "suite.json"
        info["started_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if suite_json.exists():  # keep the first start time across resumed invocations
            info["started_utc"] = json.loads(suite_json.read_text()).get("started_utc", info["started_utc"])
        suite_json.write_text(json.dumps(info, indent=2))
        bar = _suite_bar(suite.runs, progress, f"{suite_name}/{preset}/{ds}")
        t0 = time.perf_counter()
        for spec in bar:
            workdir = out / "runs" / spec.name
            err = workdir / "error.json"
            err.unlink(missing_ok=True)
            meta = {"suite": suite_name, "preset": preset, "dataset": ds, "data": data_desc}
            try:
                run_one(spec, data, num_classes, workdir, meta, progress)
            except (ReplayMismatch, EnvironmentMismatch, RuntimeError) as exc:
                # The run cannot be trusted (replay mismatch) or could not run (e.g. an op without a
                # deterministic kernel, out of memory): the report says so and the suite goes on.
                workdir.mkdir(parents=True, exist_ok=True)
                err.write_text(json.dumps({"error": type(exc).__name__, "message": str(exc),
                                           "traceback": traceback.format_exc()}, indent=2))
                print(f"gpcheck: {spec.name} failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                      f"details in {err}; the suite goes on", file=sys.stderr)
        info["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["last_invocation_wall_s"] = time.perf_counter() - t0
        suite_json.write_text(json.dumps(info, indent=2))
        build_report(out)
        out_dirs.append(out)
    return out_dirs


def _suite_bar(runs, progress: bool, desc: str):
    if not progress:
        return runs
    from tqdm.auto import tqdm

    return tqdm(runs, desc=desc, unit="run", dynamic_ncols=True)
