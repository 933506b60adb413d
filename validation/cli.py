"""The ``gpcheck`` command.

(About 415 lines: one short function per subcommand besides ``deep``, which lives in
:mod:`validation.cli_deep`; splitting further would scatter the exit-status contract below.)

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
import warnings
from pathlib import Path

import click  # noqa: E402
import numpy as np  # noqa: E402

from gamma_theory import TraceError, check_trace, load_trace  # noqa: E402
from gamma_theory.files import BadFile, PathEscape, check_links, write_text  # noqa: E402

from .cli_deep import deep  # noqa: E402
from .cli_util import (  # noqa: E402, F401 (re-exported: the commands' shared helpers)
    EXIT_BAD_INPUT,
    EXIT_IO,
    _choice_error,
    _close_bars,
    _out_folder,
    _path_arg,
    _print_suite_summary,
    _write_index,
    fail,
)
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

def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gpcheck")
    except Exception:  # not installed: running from a checkout
        return "0.1.0+checkout"


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
        f"  x dist0_sq:       {_dimensionless(d1['gamma_max'], trace.dist0_sq)}",
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


def _dimensionless(gamma_max, dist0_sq: float) -> str:
    """Definition 1's largest gamma x ||theta_0 - theta*||^2 (1 for a star-convex path), as a line of
    `gpcheck check` reads it: n/a where no gamma fits."""
    if gamma_max is None:
        return "n/a (no gamma > 0 fits every step)"
    return (f"{fmt3(float(gamma_max) * dist0_sq)}  (largest gamma x ||theta_0 - theta*||^2, dimensionless: "
            "1 for a star-convex path)")


@main.command()
@click.argument("path", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="print check_trace(...).to_dict() as JSON")
def check(path: str, as_json: bool) -> None:
    """Check one trace file (.npz): Definition 1, Theorem 1 items 1-3, the recording identity.

    Exit status 0 whatever the verdict (a FAIL is a finding), 2 for a file that cannot be judged.
    """
    if Path(path).is_dir():
        from .run_report import folder_kind

        if folder_kind(path) == "run":
            fail(f"{path}: is a run folder, not a trace file; judge its trace with `gpcheck check "
                 f"{Path(path) / 'trace.npz'}`, or write its report with `gpcheck report {path}`")
    trace = load_trace(path)
    result = check_trace(trace)
    if as_json:
        click.echo(json.dumps(jsonable(result.to_dict()), indent=2))
    else:
        click.echo(_summary(path, trace, result))


# -- gpcheck deep: validation/cli_deep.py ---------------------------------------------------------
main.add_command(deep)


# -- gpcheck report ------------------------------------------------------------------------------
_REPORT_WHAT = ("give a suite folder written by `gpcheck deep` (e.g. reports/bn-smoke-cifar10-jpeg) or a measured run "
                "folder written by deep.measure.measure() (e.g. "
                "reports/skip-cpu-cifar10-jpeg-resnet18/runs/resnet18-all)")


@main.command()
@click.argument("path", type=click.Path(path_type=str))
def report(path: str) -> None:
    """Rebuild a suite report, or write the report of one measured run.

    PATH a suite folder (it has runs/): rebuild its report.md, report.json and figure from the
    traces in PATH/runs/ alone. Every trace is checked against the digests in its trace.json and
    in the suite's manifest; a run whose files do not verify is an ERROR row that says what to do.

    PATH a run folder (what deep.measure.measure() writes, or SUITE/runs/NAME): write its
    report.md, report.json and figures/run.png: Definition 1 with its dimensionless gamma, Theorem 1,
    the convergence gate, theta* on the training data, the related conditions and the companions
    (the random theta* of the baseline), after the same verification. Writes only inside PATH.
    """
    from .run_report import RunReportError, build_run_report, folder_kind, summary_lines

    _path_arg("PATH", path, "reports/bn-smoke-cifar10-jpeg")
    if not Path(path).is_dir():
        fail(f"{path}: no such folder; {_REPORT_WHAT}")
    kind = folder_kind(path)
    if kind == "run":
        try:
            rep = build_run_report(path)
        except RunReportError as exc:
            fail(str(exc))
        for line in summary_lines(rep):
            click.echo(line)
        return
    if kind is None:
        fail(f"{path}: neither a suite folder (no runs/ folder) nor a measured run folder (no trace.json); "
             f"{_REPORT_WHAT}")
    suite_file = Path(path) / "transformer_suite.json"
    if suite_file.exists():  # the transformer suite's folder: its report from the runs finished in it
        from deep.transformer_suite import rebuild

        try:
            rep = rebuild(path)
        except ValueError as exc:
            fail(str(exc))
        click.echo(f"report: {Path(path) / 'report.md'} ({len(rep['runs'])} runs finished, "
                   f"{len(rep['not_measured'])} not measured)")
        return
    from .deep_report import ReportError, build_report

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
