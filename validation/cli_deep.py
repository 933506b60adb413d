"""``gpcheck deep``: check its options, resolve the queue once, build the executor, dispatch, and
report every suite folder it changed.

The work is elsewhere: the queue is resolved in :mod:`deep.tasks`, measured by an executor of
:mod:`deep.executors` (this process, ``--jobs`` workers, Slurm, Ray), and reported by
:mod:`validation.deep_report`. Errors and exit statuses are those of every command
(:mod:`validation.cli_util`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from gamma_theory.files import BadFile, PathEscape, read_json

from .cli_util import _choice_error, _close_bars, _out_folder, _path_arg, _print_suite_summary, _write_index, fail

#: CPU threads per run when --threads is not given (README, "Threads"): on a 2-core machine that
#: other work shares, ResNet-18 ran 4x (one step) to 10x (a whole smoke suite) slower with 2 threads
#: than with 1, because OpenMP threads spin-wait on each other; on an idle one 2 threads gain less
#: than 2x, which --jobs 2 (two runs at once, one thread each) also gets
DEFAULT_CPU_THREADS = 1


def _warn_if_busy(threads: int, jobs: int, cores: int) -> None:
    """Warn when runs of several threads start on a machine whose load leaves them no free core."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if threads > 1 and load + threads * jobs > cores + 0.5:
        click.echo(f"gpcheck: warning: the machine is busy (load average {load:.1f} on {cores} cores) and each run "
                   f"uses {threads} threads: OpenMP threads then spin-wait on each other (README, \"Threads\": 4-10x "
                   "slower measured on 2 cores); pass --threads 1", err=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_is_current(out: Path) -> bool:
    """Does the suite's report describe the run folders as they are (each run finished, failed or
    missing as the report says)? Then an invocation that measured nothing leaves it alone."""
    from deep.suites import RunSpec
    from deep.tasks import SUITE_FILE

    try:
        rep = json.loads((out / "report.json").read_text())
        info = read_json(out / SUITE_FILE)
        names = [RunSpec(**r).name for r in info["runs"]]  # the runs the suite folder was measured with
        said = {r["name"]: r["status"] for r in rep["runs"]}
    except (OSError, ValueError, KeyError, TypeError, BadFile):
        return False
    if not (out / "report.md").is_file():
        return False
    for name in names:
        run = out / "runs" / name
        now = ("finished" if (run / "trace.json").is_file() else "error" if (run / "error.json").is_file()
               else "missing")
        was = said.get(name)
        if was is None or now != (was if was in ("error", "missing") else "finished"):
            return False
    return True



@click.command()
@click.option("--suite", required=True, help="activation, bn, skip, optimizer, or all (every suite, in one queue); "
              "transformer: modular addition through grokking (presets smoke, cpu)")
@click.option("--preset", default="smoke", show_default=True, help="paper, lite, cpu, long, rate or smoke")
@click.option("--dataset", default=None,
              help="cifar10, cifar100, both (one queue), or cifar10-jpeg (the offline JPEG copy); default: the "
                   "preset's (cifar10-jpeg for cpu and smoke, cifar10 otherwise)")
@click.option("--data-root", default=None, help="folder with cifar-10-batches-py/ or cifar-100-python/, "
              "or the path of the JPEG archive. CIFAR's python files are pickles, trusted input: gpcheck builds "
              "only numpy arrays and plain values from them and refuses any other object, but use a copy you "
              "trust; the JPEG archive (cifar10-jpeg) is the pickle-free path")
@click.option("--download", is_flag=True, help="download CIFAR through torchvision if it is not under --data-root")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
@click.option("--threads", default=None, type=click.IntRange(1, 1024),
              help="CPU threads of torch, at most the machine's cores: of the run measured, or shared by the "
                   "--jobs workers (threads // jobs each, at least 1). Default on the CPU: 1, or $OMP_NUM_THREADS "
                   "where set (more threads per run are slower on a busy machine; --jobs uses more cores). A run "
                   "resumes only with the thread count it started with")
@click.option("--cuda-graphs/--no-cuda-graphs", default=None,
              help="run the steps of both passes as CUDA graph replays (default: on a GPU, yes; the same bits, "
                   "fewer kernel launches); a run resumes only the way it began")
@click.option("--networks", default=None, metavar="NAME[,NAME...]",
              help="only these networks of the suite (e.g. resnet18), into a folder of its own: "
                   "OUT/<suite>-<preset>-<dataset>-<networks>/ (one suite at a time)")
@click.option("--variants", default=None, metavar="NAME[,NAME...]",
              help="only these variants of the suite (e.g. all), into a folder of its own, as --networks")
@click.option("--seeds", default=None, type=click.IntRange(1, 1000),
              help="initializations (with their samplers) per configuration; default: the preset's "
                   "(1 for paper and smoke, 3 for lite and cpu)")
@click.option("--labels", default="true", show_default=True,
              help="true, or random: the labels permuted at random (seeded), so the networks memorize noise; "
                   "the reports go to OUT/<suite>-<preset>-<dataset>-random-labels/")
@click.option("--star-extend", default=0.0, show_default=True, type=click.FloatRange(0, 10),
              help="also judge every path against a theta* trained this fraction of the epochs longer (0: not)")
@click.option("--star-seed", default=None, type=int, metavar="N",
              help="also judge every run of another seed against theta* = the end point of seed N's run of the same "
                   "network and variant (companion star_seedN; seed N's runs are measured first), into a folder of "
                   "its own: OUT/<suite>-<preset>-<dataset>[-...]-starseedN/ (needs --seeds 2 or more)")
@click.option("--out", "out_root", default="gpcheck-out", show_default=True,
              help="root of the reports: OUT/<suite>-<preset>-<dataset>/ and the index OUT/README.md (the "
                   "committed ones: reports; a folder gpcheck-out is git-ignored)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--plan", is_flag=True, help="print the suite's runs, their steps and the time they will take on this "
                                           "device (from measured ms/step), and run nothing")
@click.option("--executor", default="local", show_default=True,
              help="who measures the runs: local (this machine, --jobs processes), slurm (a submitit job array, "
                   "one task per run; pip install 'gpcheck[slurm]') or ray (Ray tasks, one GPU each; "
                   "pip install 'gpcheck[ray]')")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="local: worker processes on this machine, each taking the runs no other holds, on CUDA pinned "
                   "round-robin to the GPUs, on the CPU sharing the threads (--threads; one each by default); slurm: "
                   "at most this many array tasks at once (1: no limit); ray without --ray-address: the CPUs of "
                   "the local cluster are jobs x threads")
@click.option("--ray-address", default=None, help="ray: address of an existing cluster (default: start one here)")
@click.option("--slurm-partition", default=None, help="slurm: the partition")
@click.option("--slurm-time", default=1440, show_default=True, type=click.IntRange(1, 100_000),
              help="slurm: minutes per task; a task out of time is requeued and resumes from its checkpoints")
@click.option("--slurm-arg", "slurm_args", multiple=True, metavar="KEY=VALUE",
              help="slurm: any other submitit slurm_ parameter, e.g. account=abc or mem_gb=32 (repeatable)")
@click.option("--slurm-cluster", default="slurm", show_default=True,
              help="slurm, or local: submitit's local executor (the same job array as processes on this machine)")
def deep(**opts) -> None:
    """Measure a suite of the paper's CIFAR experiments exactly and write its report.

    Rerunning the same command skips finished runs and resumes an interrupted one from its last
    checkpoint, with an identical result; a run found damaged is measured again. Any number of
    invocations and executors may share one output folder: each run is measured once. Writes only
    inside OUT. ``--suite transformer``: modular addition through grokking (deep/transformer_suite.py).
    """
    if opts.get("suite") == "transformer":
        from .cli_transformer import run_transformer

        return run_transformer(opts)
    _dispatch(_parse(**opts))


@dataclass
class _Deep:
    """The options of one ``gpcheck deep``, checked, with the queue resolved once."""

    configs: list  #: one :class:`deep.tasks.SuiteConfig` per suite folder
    dev: object  #: torch.device the runs of this machine use
    device: str | None
    threads: int | None
    plan: bool
    out_root: str
    quiet: bool
    executor: str
    jobs: int
    data_root: str | None
    download: bool
    cuda_graphs: bool | None
    ray_address: str | None
    slurm: dict  #: cluster, time, partition, extra


def _parse(suite, preset, dataset, data_root, download, device, threads, cuda_graphs, networks, variants, seeds,
           labels, star_extend, star_seed, out_root, quiet, plan, executor, jobs, ray_address, slurm_partition,
           slurm_time, slurm_args, slurm_cluster) -> _Deep:
    """Check every option (one line and exit 2 for bad input) and resolve the suites once."""
    import torch

    from deep.env import resolve_device
    from deep.executors import EXECUTORS
    from deep.suites import PRESET_TABLE, PRESETS, SUITES
    from deep.tasks import DATASET_CHOICES, LABELS, check_star_seed, resolve_suites

    _path_arg("--out", out_root, "reports")
    _path_arg("--data-root", data_root, "/data/cifar")
    if not math.isfinite(star_extend):
        fail(f"--star-extend {star_extend}: give a number from 0 to 10")
    if suite not in SUITES + ("all",):
        _choice_error("suite", suite, SUITES + ("all",))
    if preset not in PRESETS:
        _choice_error("preset", preset, PRESETS)
    if dataset is not None and dataset not in DATASET_CHOICES:
        _choice_error("data set", dataset, DATASET_CHOICES)
    if labels not in LABELS:
        _choice_error("labels", labels, LABELS)
    if executor not in EXECUTORS:
        _choice_error("executor", executor, EXECUTORS)
    if slurm_cluster not in ("slurm", "local"):
        _choice_error("slurm cluster", slurm_cluster, ("slurm", "local"))
    extra = {}
    for kv in slurm_args:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip() or not k.replace("_", "").isalnum():
            fail(f"--slurm-arg {kv!r}: give KEY=VALUE, e.g. --slurm-arg account=abc")
        extra[k.strip()] = v
    suites = list(SUITES) if suite == "all" else [suite]
    if networks is not None or variants is not None:
        networks, variants = ((None if v is None else tuple(n.strip() for n in v.split(",") if n.strip()))
                              for v in (networks, variants))
        if suite == "all":
            fail("--networks and --variants pick networks and variants of one suite; give --suite activation, bn, "
                 "skip or optimizer with them")
    try:
        check_star_seed(star_seed, PRESET_TABLE[preset].seeds if seeds is None else seeds)
    except ValueError as exc:
        fail(str(exc))
    try:  # the one resolution of the suites, presets and filters: every later step reads these values
        configs = resolve_suites(suites, preset, dataset, out_root, seeds=seeds, labels=labels,
                                 star_extend=star_extend, networks=networks, variants=variants, star_seed=star_seed)
    except ValueError as exc:
        if networks is None and variants is None:
            fail(str(exc))
        fail(f"--{'networks' if 'network' in str(exc) else 'variants'}: {exc}")
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    here = executor == "local" or (executor == "ray" and not ray_address) or (executor == "slurm" and
                                                                             slurm_cluster == "local")
    cores = os.cpu_count() or 1
    if threads is not None and here and threads > cores:
        fail(f"--threads {threads}: this machine has {cores} CPU core(s); give at most {cores} (1, the default, "
             "is fastest per core on a shared machine; --jobs runs several runs at once)")
    if threads is None and dev.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        threads = DEFAULT_CPU_THREADS
    if here and dev.type == "cpu" and not plan:
        _warn_if_busy(threads or torch.get_num_threads(), jobs, cores)
    if Path(out_root).exists() and not Path(out_root).is_dir():
        fail(f"--out {out_root}: is a file, not a folder")
    if cuda_graphs and dev.type != "cuda" and executor == "local":
        fail(f"--cuda-graphs: CUDA graphs need a GPU, and the runs would go to {dev}; drop the flag, or pass "
             "--device cuda on a machine with one")
    return _Deep(configs, dev, device, threads, plan, out_root, quiet, executor, jobs, data_root, download,
                 cuda_graphs, ray_address, {"cluster": slurm_cluster, "time": slurm_time,
                                            "partition": slurm_partition, "extra": extra})


def _dispatch(o: _Deep) -> None:
    if o.plan:
        return _print_plan(o)
    import torch

    from deep.executors import build_executor
    from deep.tasks import tasks_of

    _out_folder(o.out_root)
    remote = o.executor != "local"
    preset = o.configs[0].preset
    if preset == "paper" and o.dev.type == "cpu" and o.device is None and not remote:
        fail("the paper preset trains ResNets and VGGs for 150 epochs: it needs a GPU, and this machine has "
             "none. Pass --device cpu to run it on the CPU anyway, or use --preset lite, cpu or smoke.")
    if preset == "paper" and o.dev.type == "cpu" and not remote:
        click.echo("warning: running the paper preset on the CPU; expect weeks.", err=True)
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    argv = " ".join(["gpcheck", "deep"] + sys.argv[2:]) if len(sys.argv) > 2 else None
    # tasks on this machine use its device; on cluster nodes (whose GPUs this host may not have) each
    # task asks for one GPU unless --device cpu, and resolves --device where it runs
    slurm = o.slurm
    on_cluster = (o.executor == "slurm" and slurm["cluster"] == "slurm") or (o.executor == "ray" and o.ray_address)
    cuda = o.device != "cpu" if on_cluster else o.dev.type == "cuda"
    tasks = tasks_of(o.configs, data_root=o.data_root, download=o.download, device=o.device, threads=o.threads,
                     cuda_graphs=o.cuda_graphs)
    executor = build_executor(o.executor, jobs=o.jobs, threads=o.threads, cuda=cuda,
                              gpus=torch.cuda.device_count() if cuda else 0, quiet=o.quiet, command=argv,
                              out_root=o.out_root, ray_address=o.ray_address, slurm_cluster=slurm["cluster"],
                              slurm_time=slurm["time"], slurm_partition=slurm["partition"], slurm_extra=slurm["extra"])
    _measure_and_report(executor, tasks, argv, o.out_root)


def _print_plan(o: _Deep) -> None:
    """``--plan``: every run of the queue, its steps and its time on this device; runs nothing."""
    import torch

    from deep.env import cpu_name
    from deep.plan import concurrency_advice, plan_config, render_plan, star_seed_plan_line, summary_line

    dev = o.dev
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    unit = "GPU-hours" if dev.type == "cuda" else "hours"
    everything, timings = [], {}  # steps timed here are timed once per network, width and batch
    for c in o.configs:
        planned = plan_config(c, name, device=dev.type, timings=timings)
        everything += planned
        star = "" if c.star_seed is None else f", star seed {c.star_seed}"
        click.echo(render_plan(planned, f"Plan: `{c.suite}` suite, `{c.preset}` preset, {c.dataset}{star}, on {name} "
                               f"({dev})", name, dev.type == "cuda") + "\n")
        if c.star_seed is not None:
            click.echo(star_seed_plan_line(c) + "\n")
    if dev.type == "cuda":
        click.echo(concurrency_advice(name, max(1, torch.cuda.device_count())) + "\n")
    if len(everything) > len(planned):
        click.echo(f"All of the queue ({sum(r.steps for r in everything):,} steps per pass): "
                   + summary_line(everything, name, unit)
                   + (" On N GPUs (--jobs N), about 1/N of it in wall time." if dev.type == "cuda" else ""))


def _measure_and_report(executor, tasks: list, argv: str | None, out_root: str) -> None:
    """Hand the queue to ``executor``, then build the report of every suite folder it changed."""
    from deep.data import DataError
    from deep.executors import ExecutorError, Interrupted, WorkersKilled, finish_suites
    from deep.measure import RunMismatch
    from deep.runner import check_suite_folders
    from deep.tasks import describe_outcome, outcomes, run_states, touched

    from .deep_report import ReportError, build_report

    errors, killed = 0, None
    try:  # before any worker starts: nothing it would write or wipe leads out of --out
        check_suite_folders(tasks)
    except PathEscape as exc:
        fail(str(exc))
    # `kill` (SIGTERM) stops the command as Ctrl-C does: workers are stopped, not orphaned, and
    # the time spent is recorded
    try:
        before_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        before_term = _NOT_SET
    before = run_states(tasks)  # what this invocation did is read from the run folders after it

    def changed(ts):  # the tasks of the suites this invocation changed (measured, resumed, failed, begun)
        counts = outcomes(before, ts)
        return [t for t in ts if touched(counts[t.out])]

    try:
        try:
            ran = executor.run(tasks)
        except WorkersKilled as exc:  # the others finished their runs: their reports are built
            ran, killed = exc.walls, exc
        if any(w is not None for w in ran.values()):  # None: this process measured it and kept its wall time
            # a suite this invocation measured nothing of keeps the facts of those that measured it
            finish_suites(changed(tasks), ran, argv, executor.record)
        dirs = list(ran)
        counts = outcomes(before, tasks)
        for out in dirs:
            click.echo(f"{out}: {describe_outcome(counts[out])}")
            if not touched(counts[out]) and _report_is_current(out):
                click.echo(f"report unchanged: {out}/report.md (nothing measured; `gpcheck report {out}` rebuilds it)")
            else:
                build_report(out)
            errors += _print_suite_summary(out)
        _write_index(out_root)
        if killed is not None:
            fail(str(killed), killed.status)
    except ExecutorError as exc:
        fail(str(exc), exc.status)
    except (DataError, RunMismatch, PathEscape, ReportError) as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):  # its workers have stopped: their time counts
            finish_suites(changed(tasks), exc.walls, argv, executor.record)
        _close_bars()
        counts = outcomes(before, tasks)
        for out, c in counts.items():
            click.echo(f"{out}: {describe_outcome(c)}", err=True)
        click.echo("interrupted: finished runs and checkpoints are kept; rerun the same command to resume.",
                   err=True)
        sys.exit(130)
    finally:
        if before_term is not _NOT_SET:
            signal.signal(signal.SIGTERM, before_term)
    if errors:
        sys.exit(1)


_NOT_SET = object()

