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
    ps = PRESETS[preset]
    # default: the cpu presets on the CPU (their committed runs ran there); the GPU presets on a GPU when present
    device = opts.get("device") or ("cuda" if ps.sized_for == "gpu" and torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        fail(f"--device {device}: the transformer suite runs on cpu, cuda or cuda:N")
    seeds = opts.get("seeds") or ps.seeds
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    labels = opts.get("labels", "true")
    if labels not in ("true", "random"):
        _choice_error("labels", labels, ("true", "random"))
    if opts.get("plan"):
        from deep.transformer_plan import plan, render

        click.echo(f"transformer suite, preset {preset}: {len(ps.variants)} variants x {seeds} seed(s), "
                   f"{ps.base.epochs} epochs each (base {Config.__name__}: {ps.base})")
        for name, change in ps.variants:
            click.echo(f"  {name}: {change or 'the base'}")
        planned, name, note = plan(preset, seeds, opts["out_root"], device, labels == "random")
        click.echo("")
        click.echo(render(preset, planned, name, note, ps.sized_for), nl=False)
        return
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device on this machine; leave out --device to run on the CPU")
    if ps.sized_for == "gpu" and device == "cpu":
        click.echo(f"note: the {preset} preset is sized for one GPU; on this CPU it takes long (see --plan)", err=True)
    report = run_suite(preset, opts["out_root"], seeds, progress=not opts.get("quiet"), random_labels=labels == "random",
                       device=device)
    folder = Path(opts["out_root"]) / (f"transformer-{preset}" + ("-random-labels" if labels == "random" else ""))
    click.echo(f"report: {folder / 'report.md'}")
    for c in report["claims"]:
        click.echo(f"  {c['verdict']:<15}{c['claim']}: {c.get('why') or c['numbers']}")
