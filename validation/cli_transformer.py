"""``gpcheck deep --suite transformer``: the transformer suite (deep/transformer_suite.py) from the
deep command's options; the CIFAR-only options are refused in one line."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_util import _choice_error, fail

#: the deep command's options that the transformer suite reads (the rest must keep their defaults)
_READ = {"suite", "preset", "seeds", "threads", "out_root", "quiet", "plan", "device"}
_DEFAULTS = {"dataset": None, "data_root": None, "download": False, "cuda_graphs": None, "networks": None,
             "variants": None, "star_extend": 0.0, "executor": "local", "jobs": 1,
             "ray_address": None, "slurm_partition": None}


def run_transformer(opts: dict) -> None:
    import torch

    from deep.transformer_suite import PRESETS, Config, run_suite

    bad = [k for k, v in _DEFAULTS.items() if k in opts and opts[k] != v]
    if bad:
        fail(f"--{bad[0].replace('_', '-')} is for the CIFAR suites; the transformer suite takes --preset, --seeds, "
             "--threads, --out, --plan and --quiet")
    preset = opts["preset"]
    if preset not in PRESETS:
        _choice_error("preset", preset, tuple(PRESETS))
    if opts.get("device") not in (None, "cpu"):
        fail("the transformer suite runs on the CPU here (its presets are sized for 2 cores); leave out --device")
    ps = PRESETS[preset]
    seeds = opts.get("seeds") or ps.seeds
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    if opts.get("plan"):
        click.echo(f"transformer suite, preset {preset}: {len(ps.variants)} variants x {seeds} seed(s), "
                   f"{ps.base.epochs} epochs each (base {Config.__name__}: {ps.base})")
        for name, change in ps.variants:
            click.echo(f"  {name}: {change or 'the base'}")
        return
    labels = opts.get("labels", "true")
    if labels not in ("true", "random"):
        _choice_error("labels", labels, ("true", "random"))
    report = run_suite(preset, opts["out_root"], seeds, progress=not opts.get("quiet"), random_labels=labels == "random")
    folder = Path(opts["out_root"]) / (f"transformer-{preset}" + ("-random-labels" if labels == "random" else ""))
    click.echo(f"report: {folder / 'report.md'}")
    for c in report["claims"]:
        click.echo(f"  {c['verdict']:<15}{c['claim']}: {c.get('why') or c['numbers']}")
