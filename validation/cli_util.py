"""What every ``gpcheck`` command shares: one-line errors and their exit statuses, the checks of
path options, and the summary of a suite report. (validation/cli.py re-exports them.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

#: exit status for bad input (as click uses for usage errors)
EXIT_BAD_INPUT = 2
#: exit status when the file system refuses (disk full, no permission)
EXIT_IO = 3


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


def _choice_error(kind: str, value: str, choices) -> NoReturn:
    fail(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


def _write_index(root) -> None:
    from .index import write_index

    where = write_index(root)
    if where is None:
        click.echo(f"note: {Path(root) / 'README.md'} is not a gpcheck index; left it alone "
                   "(the index of the reports was not written)", err=True)


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
