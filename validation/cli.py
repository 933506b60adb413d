"""The ``gpcheck`` command.

Every command is a plain function registered with ``@main.command()``. Errors are one line,
``gpcheck: error: <message>``, on stderr, never a traceback. Exit statuses:

* 0: done (a FAIL verdict is a finding, not an error);
* 1: ``gpcheck deep``: some runs ended in an error (each is an ERROR row of its report);
* 2: bad input: an unknown name, a bad option value, a file that is not what it should be
  (:func:`fail`; a :class:`~gamma_theory.TraceError` escaping a command is turned into it);
* 3: the file system refused: a full disk, a folder that cannot be written (an ``OSError``
  escaping a command, with the path it concerns);
* 130: interrupted; finished runs and checkpoints are kept.

Adding a command later (``deep``, ``report``, ...)::

    @main.command()
    @click.argument("path")
    def report(path):
        ...
        if bad:
            fail(f"{path}: what is wrong")
"""

from __future__ import annotations

import os
import signal
import sys


# SIGTERM while the command starts (importing torch takes seconds) would end it with status 143
# and no word. Until a command runs, it ends it as Ctrl-C does, with one line and status 130
# (nothing has been written yet); then it raises KeyboardInterrupt, which each command handles as
# Ctrl-C. Only when this module is the command (``python -m validation.cli``, or the ``gpcheck``
# script), so a program that imports it keeps its own handlers.
_RUNNING = False


def _term_while_starting(signum, frame):
    if _RUNNING:
        raise KeyboardInterrupt
    os.write(2, b"gpcheck: interrupted while starting; nothing was written\n")
    os._exit(130)


if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "gpcheck":
    try:
        signal.signal(signal.SIGTERM, _term_while_starting)
    except ValueError:  # not the main thread
        pass

import json  # noqa: E402
import math
import warnings
from pathlib import Path
from typing import NoReturn

import click  # noqa: E402
import numpy as np  # noqa: E402

from gamma_theory import TraceError, check_trace, load_trace  # noqa: E402
from gamma_theory.files import BadFile, PathEscape, check_links, read_json, write_text  # noqa: E402

from .util import (  # noqa: E402
    feasible_set,
    fmt3,
    identity_cell,
    item1_cell,
    item2_cell,
    item3_cell,
    jsonable,
    pct,
)

#: exit status for bad input (as click uses for usage errors)
EXIT_BAD_INPUT = 2
#: exit status when the file system refuses (disk full, no permission)
EXIT_IO = 3


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gpcheck")
    except Exception:  # not installed: running from a checkout
        return "0.1.0+checkout"


def fail(msg: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``gpcheck: error: <msg>`` as one line on stderr and exit with ``status`` (2)."""
    one_line = " ".join(str(msg).split())
    _close_bars()
    click.echo(f"gpcheck: error: {one_line}", err=True)
    sys.exit(status)


def _close_bars() -> None:
    """Close every progress bar still open, so that what follows starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")  # no bar can be open if tqdm was never imported
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()


def _out_folder(path: str) -> None:
    """Create the ``--out`` folder before any work, or stop with one line that names it and says
    what to do (exit 3: the file system refused)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--out {path}: cannot create this folder ({exc.strerror or exc}); pass --out a folder you can "
             "write (it is created if missing)", EXIT_IO)


def _path_arg(option: str, value: str | None, example: str) -> None:
    """Refuse a path that gpcheck cannot use as given: empty (it would mean the current folder),
    or not valid UTF-8 (gpcheck records its paths in JSON files, which hold UTF-8)."""
    if value is None:
        return
    if value == "" or not value.strip():
        fail(f"{option} is empty; give a folder, e.g. {option} {example} (use . for the current folder)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(value).decode("utf-8", "backslashreplace")
        fail(f"{option} {shown}: the path is not valid UTF-8; gpcheck records its paths in JSON files, which hold "
             "UTF-8: give a path with a UTF-8 name")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = f"gpcheck: warning: {' '.join(str(message).split())}"
    if "tqdm" in sys.modules:  # on a line of its own above any progress bar (cleared and redrawn)
        sys.modules["tqdm"].tqdm.write(text, file=sys.stderr)
    else:
        click.echo(text, err=True)


def _stop_on_sigint() -> None:
    """Ctrl-C and ``kill -INT`` stop every command, also one started in the background from a
    script: a shell without job control starts such a command with SIGINT ignored, and Python
    keeps it ignored, so the handler is installed explicitly. (Not from another thread than the
    main one: an embedding program keeps its handlers.)"""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass


class _Group(click.Group):
    """A group that turns usage errors, bad input and file-system exceptions from any command into
    one line."""

    def main(self, args=None, prog_name=None, **extra):
        global _RUNNING
        _RUNNING = True
        extra.pop("standalone_mode", None)
        _stop_on_sigint()
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `gpcheck`: the help, not an error
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.exceptions.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "gpcheck"
            fail(f"{exc.format_message()} (see `{where} --help`)")
        except click.exceptions.Abort:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except (TraceError, BadFile, PathEscape) as exc:
            fail(str(exc))
        except ValueError as exc:
            if "null byte" in str(exc):  # os functions refuse such paths before any file is touched
                fail("a path on the command line contains a NUL character")
            raise
        except OSError as exc:
            where = exc.filename if exc.filename is not None else ""
            what = exc.strerror or str(exc)
            fail(f"{where}: {what}" if where else what, EXIT_IO)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="gpcheck")
def main() -> None:
    """Put the gamma-optimization principle to the test: record paths, check Definition 1 and
    Theorem 1, and report where they hold and where they break."""


# -- gpcheck ladder ------------------------------------------------------------------------------
@main.command()
@click.option("--out", "out_dir", default="gpcheck-out/ladder", show_default=True,
              help="folder for report.md, report.json, traces/ and figures/ (the committed ones: reports/ladder)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="seed of the data and the sampling (0 to 2**32-1)")
def ladder(out_dir: str, seed: int) -> None:
    """Run every rung of the problem ladder with every optimizer, check and report.

    Writes only inside OUT: report.md, report.json, traces/ and figures/."""
    from .ladder import run_ladder

    _out_folder(out_dir)
    report = run_ladder(out_dir=out_dir, seed=seed, progress=True)
    click.echo(f"report: {out_dir}/report.md  (json: {out_dir}/report.json, figure: {out_dir}/{report['figure']})")
    width = max(len(f"{r['rung']}/{r['optimizer']}") for r in report["runs"])
    for r in report["runs"]:
        name = f"{r['rung']}/{r['optimizer']}"
        c = r.get("check")
        if c is None:
            detail = "diverged"
        else:
            d1 = c["definition_1"]
            detail = (f"gamma_max {fmt3(d1['gamma_max'])}" if d1["holds"]
                      else f"gamma_max n/a ({d1['n_violating']} violating steps)")
        click.echo(f"  {name:<{width}}  {r['verdict']}  {detail}")
    click.echo(f"{report['n_pass']} of {report['n_runs']} PASS in {report['wall_s']:.1f} s")


# -- gpcheck check -------------------------------------------------------------------------------
def _summary(path: str, trace, result) -> str:
    d = jsonable(result.to_dict())
    d1 = d["definition_1"]
    t1 = d["theorem_1"]
    dm, lc, rb = t1["distance_monotone"], t1["loss_convergence"], t1["rate_bound"]
    n_epochs = len(np.unique(trace.epoch))
    viol = d1["violating_steps"][:10]
    viol_text = str(d1["n_violating"])
    if d1["n_violating"]:
        viol_text += (f" ({d1['n_own_infeasible']} infeasible on their own, {d1['n_conflicting']} "
                      f"in conflict); first: {', '.join(map(str, viol))}")
    if d1.get("n_undecidable"):
        viol_text += (f"; {d1['n_undecidable']} step(s) undecidable at float64 (|num| within round-off of 0: "
                      f"{', '.join(map(str, d1['undecidable_steps'][:10]))})")
        if d1.get("rests_on_undecidable"):
            viol_text += "; the verdict rests on them alone"
    lines = [
        f"trace: {path}",
        f"  {len(trace)} steps, {n_epochs} epoch(s), lr {fmt3(trace.lr)}, dist0_sq {fmt3(trace.dist0_sq)}",
        f"verdict: {'PASS' if d['holds'] else 'FAIL'} "
        "(PASS: Definition 1 feasible set non-empty and Theorem 1 items 1-3 hold)",
        "Definition 1 (gamma-optimization principle, inequality (2) at every step)",
        f"  holds:            {'yes' if d1['holds'] else 'no'}",
        f"  feasible gamma:   {feasible_set(d1)}",
        f"  largest gamma:    {fmt3(d1['gamma_max'])}",
        (f"  share positive:   {pct(d1['share_positive'])} of {d1['n_upper']} steps with gap > 0 "
         if d1["n_upper"] else "  share positive:   n/a: no step has gap > 0, so no step bounds gamma from above ")
        + f"({d1['n_lower']} with gap < 0, {d1['n_zero']} with gap = 0)",
        f"  violating steps:  {viol_text}",
        "Theorem 1",
        f"  item 1, distance never grows:          {item1_cell(dm)}",
        f"  item 2, losses converge ({lc['mode']}):  {item2_cell(lc)}  "
        f"(last/first epoch gap, must be <= {pct(lc['rel_tol'])})",
        f"  item 3, rate 1/(2 eta gamma K):        {item3_cell(rb)}",
        f"recording identity (max rel residual):   {identity_cell(d['recording_identity'])}",
    ]
    return "\n".join(lines)


@main.command()
@click.argument("path", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="print check_trace(...).to_dict() as JSON")
def check(path: str, as_json: bool) -> None:
    """Check one trace file (.npz): Definition 1, Theorem 1 items 1-3, the recording identity.

    Exit status 0 whatever the verdict (a FAIL is a finding), 2 for a file that cannot be judged.
    """
    trace = load_trace(path)
    result = check_trace(trace)
    if as_json:
        click.echo(json.dumps(jsonable(result.to_dict()), indent=2))
    else:
        click.echo(_summary(path, trace, result))


# -- gpcheck deep --------------------------------------------------------------------------------
def _choice_error(kind: str, value: str, choices) -> NoReturn:
    fail(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


@main.command()
@click.option("--suite", required=True, help="activation, bn, skip, optimizer, or all (every suite, in one queue)")
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
def deep(suite, preset, dataset, data_root, download, device, threads, cuda_graphs, networks, variants, seeds, labels,
         star_extend,
         out_root,
         quiet, plan, executor, jobs, ray_address, slurm_partition, slurm_time, slurm_args, slurm_cluster) -> None:
    """Measure a suite of the paper's CIFAR experiments exactly and write its report.

    Rerunning the same command skips finished runs and resumes an interrupted one from its last
    checkpoint, with an identical result; a run found damaged is measured again. Any number of
    invocations and executors may share one output folder: each run is measured once. Writes only
    inside OUT.
    """
    import torch

    from deep.data import DataError
    from deep.env import resolve_device
    from deep.executors import EXECUTORS, ExecutorError, Interrupted, WorkersKilled, finish_suites, run_queue_with
    from deep.measure import RunMismatch
    from deep.runner import (DATASET_CHOICES, LABELS, check_suite_folders, describe_outcome, outcomes,
                             resolve_datasets, run_queue, run_states, suite_tasks, touched)
    from deep.suites import PRESETS, SUITES, get_suite

    from .deep_report import ReportError, build_report

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
            get_suite(suite, preset, 1, networks, variants)
        except ValueError as exc:
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
    if plan:
        from deep.env import cpu_name
        from deep.plan import plan_suite, render_plan, summary_line

        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
        unit = "GPU-hours" if dev.type == "cuda" else "hours"
        everything, timings = [], {}  # steps timed here are timed once per network, width and batch
        for s in suites:
            for ds in resolve_datasets(dataset, preset):
                planned = plan_suite(s, preset, ds, name, out_root, seeds, labels, star_extend, device=dev.type,
                                     timings=timings, networks=networks, variants=variants)
                everything += planned
                click.echo(render_plan(planned, f"Plan: `{s}` suite, `{preset}` preset, {ds}, on {name} ({dev})",
                                       name, dev.type == "cuda") + "\n")
        if dev.type == "cuda":
            from deep.plan import concurrency_advice

            click.echo(concurrency_advice(name, max(1, torch.cuda.device_count())) + "\n")
        if len(everything) > len(planned):
            click.echo(f"All of the queue ({sum(r.steps for r in everything):,} steps per pass): "
                       + summary_line(everything, name, unit)
                       + (" On N GPUs (--jobs N), about 1/N of it in wall time." if dev.type == "cuda" else ""))
        return
    _out_folder(out_root)
    remote = executor != "local"
    if preset == "paper" and dev.type == "cpu" and device is None and not remote:
        fail("the paper preset trains ResNets and VGGs for 150 epochs: it needs a GPU, and this machine has "
             "none. Pass --device cpu to run it on the CPU anyway, or use --preset lite, cpu or smoke.")
    if preset == "paper" and dev.type == "cpu" and not remote:
        click.echo("warning: running the paper preset on the CPU; expect weeks.", err=True)
    if threads is not None:
        torch.set_num_threads(threads)
    argv = " ".join(["gpcheck", "deep"] + sys.argv[2:]) if len(sys.argv) > 2 else None
    # tasks on this machine use its device; on cluster nodes (whose GPUs this host may not have) each
    # task asks for one GPU unless --device cpu, and resolves --device where it runs
    on_cluster = (executor == "slurm" and slurm_cluster == "slurm") or (executor == "ray" and ray_address)
    cuda = device != "cpu" if on_cluster else dev.type == "cuda"
    tasks = suite_tasks(suites, preset, dataset, out_root, seeds=seeds, labels=labels, star_extend=star_extend,
                        data_root=data_root, download=download, device=device, threads=threads,
                        cuda_graphs=cuda_graphs, networks=networks, variants=variants)
    desc = f"{'+'.join(suites)}/{preset}/{'+'.join(resolve_datasets(dataset, preset))}"
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
        if executor == "local" and jobs == 1:
            dirs = run_queue(tasks, progress=not quiet, command=argv)
        else:
            try:
                walls = run_queue_with(executor, tasks, jobs=jobs, cuda=cuda, threads=threads, quiet=quiet,
                                       desc=desc, gpus=torch.cuda.device_count() if cuda else 0, out_root=out_root,
                                       ray_address=ray_address, slurm_cluster=slurm_cluster, slurm_time=slurm_time,
                                       slurm_partition=slurm_partition, slurm_extra=extra)
            except WorkersKilled as exc:  # the others finished their runs: their reports are built
                walls, killed = exc.walls, exc
            # a suite this invocation measured nothing of keeps the facts of those that measured it
            finish_suites(changed(tasks), walls, argv, {"executor": executor, "jobs": jobs} |
                          ({"cluster": slurm_cluster} if executor == "slurm" else {}))
            dirs = list(walls)
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
            finish_suites(changed(tasks), exc.walls, argv, {"executor": executor, "jobs": jobs})
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


def _write_index(root) -> None:
    from .index import write_index

    where = write_index(root)
    if where is None:
        click.echo(f"note: {Path(root) / 'README.md'} is not a gpcheck index; left it alone "
                   "(the index of the reports was not written)", err=True)


def _report_is_current(out: Path) -> bool:
    """Does the suite's report describe the run folders as they are (each run finished, failed or
    missing as the report says)? Then an invocation that measured nothing leaves it alone."""
    from deep.runner import read_suite_runs

    try:
        rep = json.loads((out / "report.json").read_text())
        info = read_json(out / "suite.json")
        names = read_suite_runs(info["suite"], info["preset"], info.get("seeds"))
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


def _print_suite_summary(out) -> int:
    """Print the claims of a suite report; return how many runs ended in an error."""
    from deep.suites import PRESET_TABLE

    rep = json.loads((Path(out) / "report.json").read_text())
    click.echo(f"report: {out}/report.md")
    preset = PRESET_TABLE.get(rep.get("preset"))
    if preset is not None and not preset.evidence:
        click.echo(f"  NOT EVIDENCE: the {preset.name} preset tests the machinery end to end; its networks are tiny "
                   "and train for a few steps, so these verdicts say nothing for or against the paper")
    for c in rep["claims"]:
        click.echo(f"  {c['verdict']:<14} {c['claim']}: {c['why']}")
    errors = [r["name"] for r in rep["runs"] if r["status"] == "error"]
    if errors:
        click.echo(f"  {len(errors)} run(s) ended in an error: {', '.join(errors)} (see report.md)", err=True)
    return len(errors)


# -- gpcheck report ------------------------------------------------------------------------------
@main.command()
@click.argument("path", type=click.Path(path_type=str))
def report(path: str) -> None:
    """Rebuild a suite report (report.md, report.json, figure) from the traces in PATH alone.

    Every trace is checked against the digests in its trace.json and in the suite's manifest;
    a run whose files do not verify is an ERROR row that says what to do. Writes only inside PATH.
    """
    from .deep_report import ReportError, build_report

    _path_arg("PATH", path, "reports/bn-smoke-cifar10-jpeg")
    if not Path(path).is_dir():
        fail(f"{path}: no such folder; give a suite folder such as reports/bn-smoke-cifar10-jpeg")
    try:
        build_report(path)
    except ReportError as exc:
        fail(str(exc))
    _print_suite_summary(Path(path))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--grid", default=21, show_default=True, type=click.IntRange(3, 201),
              help="contour grid points per axis")
@click.option("--subset", default=256, show_default=True, type=click.IntRange(8, 1_000_000),
              help="training images (a seeded random subset) for the contours and the SGD directions")
@click.option("--data-root", default=None, help="where CIFAR-10/100 lie, for runs on those data sets")
@click.option("--out", "out_path", default=None,
              help="the figure's path (default: SUITE/figures/picture-<runs>.png, numbers beside it as .json)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def picture(runs, grid, subset, data_root, out_path, quiet) -> None:
    """The paper's Fig. 12 for finished runs (RUNS: run folders, e.g.
    reports/optimizer-cpu-cifar10-jpeg/runs/resnet18-momentum): each path in the plane of its
    first two principal components, the SGD directions along it, and the loss contours.

    Replays each run's pass 1 bit for bit (on the machine and thread count it ran with) and
    refuses a replay that does not match the recorded trace. Costs one pass 1 per run plus
    GRID^2 forward passes over SUBSET images.
    """
    import torch

    from deep.data import DataError
    from deep.picture import PictureError, path_picture, picture_run
    from deep.runner import load_train_data
    from deep.suites import PRESET_TABLE

    from .deep_report import ReportError, _suite_info
    from .figures import plot_picture

    for run in runs:
        _path_arg("RUNS", run, "reports/optimizer-cpu-cifar10-jpeg/runs/resnet18-momentum")
    _path_arg("--out", out_path, "pictures/fig12.png")
    _path_arg("--data-root", data_root, "/data/cifar")
    pics, suite_dir, data_key, data = [], None, None, None
    for run in runs:
        rd = Path(run)
        if not (rd / "trace.json").is_file():
            fail(f"{run}: not a finished run folder (no trace.json); give e.g. "
                 "reports/optimizer-cpu-cifar10-jpeg/runs/resnet18-momentum")
        suite_dir = rd.parent.parent
        try:  # the suite's own validated reader, as `gpcheck report` uses it; the run's, as the replay does
            info = _suite_info(suite_dir)
            run_info, _ = picture_run(rd)
        except (ReportError, PictureError) as exc:
            fail(str(exc))
        if not info:
            fail(f"{suite_dir}: no suite.json; {run} is not in a suite folder written by `gpcheck deep`")
        threads = (run_info.get("env") or {}).get("num_threads")
        if threads and (run_info.get("env") or {}).get("device") == "cpu":
            torch.set_num_threads(int(threads))  # the replay is bitwise only with the run's thread count
        env = run_info.get("env") or {}
        where = torch.device(str(env.get("device") or "cpu"))
        if where.type == "cuda" and not torch.cuda.is_available():
            fail(f"{run}: measured on a GPU ({env.get('device_name')}); its picture replays it bit for bit, "
                 "so draw it on a machine with that GPU")
        key = (info.get("dataset"), info.get("preset"), info.get("labels") or "true", str(where))
        if key != data_key:
            try:  # on the device the run trained on, as the suite loaded it (channels-last on CUDA)
                data, num_classes, _ = load_train_data(key[0], PRESET_TABLE[key[1]].train_subset,
                                                       where, data_root, False, key[2])
            except DataError as exc:
                fail(str(exc))
            data_key = key
        try:
            pics.append(path_picture(rd, data, num_classes, grid=grid, subset=subset, progress=not quiet))
        except PictureError as exc:
            fail(str(exc))
    names = "-".join(p.name for p in pics)
    out = Path(out_path) if out_path else suite_dir / "figures" / f"picture-{names}.png"
    if out_path is None:
        check_links(suite_dir)  # the figure goes into the suite folder, never through a link out of it
    title = (f"{info.get('suite')} suite, {info.get('preset')} preset: paths in the plane of their first two principal "
             f"components (Fig. 12); contours over {pics[0].subset} training images")
    plot_picture(pics, out, title)
    write_text(out.with_suffix(".json"), json.dumps(jsonable({"command": " ".join(["gpcheck", *sys.argv[1:]]),
                                                              "pictures": [p.to_dict() for p in pics]}), indent=1))
    for p in pics:
        click.echo(f"{p.name}: PC1 {100 * p.explained[0]:.1f}%, PC2 {100 * p.explained[1]:.1f}% of the variance; "
                   f"mean cos(SGD direction, the run's epoch step) {np.nanmean(p.sgd_cos_to_step):.3f}; replay "
                   f"matches the trace to {p.replay_max_rel_err:.1e}")
    click.echo(f"picture: {out}")
    if out_path is None and (suite_dir / "runs").is_dir():  # the suite's report links its pictures
        from .deep_report import build_report

        try:
            build_report(suite_dir)
            click.echo(f"report: {suite_dir / 'report.md'} (with the picture)")
        except ReportError as exc:
            click.echo(f"note: the report of {suite_dir} was not rebuilt ({exc})", err=True)


@main.command("make-jpeg")
@click.option("--from", "source", required=True, metavar="CIFAR10_ROOT",
              help="CIFAR-10 in torchvision's format: the folder holding cifar-10-batches-py/ (what "
                   "torchvision.datasets.CIFAR10(root, download=True) fills), or that folder itself")
@click.option("--out", "out_path", required=True, metavar="FILE", help="the archive to write, e.g. cifar10-jpeg.tar.gz")
@click.option("--quiet", is_flag=True, help="no progress bar")
def make_jpeg(source: str, out_path: str, quiet: bool) -> None:
    """Build the offline JPEG copy of CIFAR-10 (cifar10-jpeg.tar.gz, what the cpu, smoke and lite
    presets read) from CIFAR-10 in torchvision's format.

    Every image is encoded as the shared archive's were (Pillow, JPEG quality 75, 4:2:0 chroma),
    named train/<class>/NNNN.jpg and test/<class>/NNNN.jpg (numbered from 0000 per class in the
    batch files' order), and packed in a reproducible tar (sorted members, mtime 0, uid/gid 0) in
    gzip -n -9. Prints the sha256 of the tar and of the file, and whether they equal the shared
    archive's. Written atomically: an interrupted build leaves nothing."""
    from deep.data import SHARED_TAR_SHA256, DataError, build_jpeg_archive

    src = Path(source)
    if not ((src / "cifar-10-batches-py").is_dir() or (src.name == "cifar-10-batches-py" and src.is_dir())):
        fail(f"--from {source}: no cifar-10-batches-py/ there; give the folder that torchvision's "
             "CIFAR10(root, download=True) filled (it holds cifar-10-batches-py/), or that folder itself")
    if Path(out_path).is_dir():
        fail(f"--out {out_path}: is a folder; give the archive's file name, e.g. {Path(out_path) / 'cifar10-jpeg.tar.gz'}")
    try:
        info = build_jpeg_archive(src, out_path, progress=not quiet)
    except DataError as exc:
        fail(str(exc))
    n = info["images"]
    click.echo(f"wrote {out_path}: {n['train'] + n['test']:,} images (train {n['train']:,}, test {n['test']:,}), "
               f"{info['bytes']:,} bytes")
    click.echo(f"  tar sha256 {info['tar_sha256']} ({info['tar_bytes']:,} bytes): "
               + ("identical to the shared archive's" if info["tar_equals_shared"]
                  else f"not the shared archive's ({SHARED_TAR_SHA256[:12]}...)"))
    click.echo(f"  file sha256 {info['sha256']} ({info['compressor']})"
               + (": identical to the shared archive" if info["file_equals_shared"] else ""))
    click.echo(f"use it with: gpcheck deep --suite SUITE --data-root {out_path}  (or set GPCHECK_CIFAR10_JPEG)")


@main.command()
@click.argument("root", default="reports", type=click.Path(path_type=str))
def index(root: str) -> None:
    """Rebuild ROOT/README.md, the index of every report under ROOT (a README.md that gpcheck did
    not write is left alone)."""
    if not Path(root).is_dir():
        fail(f"{root}: no such folder")
    from .index import write_index

    where = write_index(root)
    if where is None:
        fail(f"{Path(root) / 'README.md'} is not a gpcheck index; it was left alone")
    click.echo(f"index: {where}")


if __name__ == "__main__":
    main()
