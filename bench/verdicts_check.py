"""Rebuild every committed suite report from its traces and compare it with the committed one.

    PYTHONPATH=. python bench/verdicts_check.py [--keep DIR] [FOLDER ...]

Each ``reports/<folder>/`` that holds a ``runs/`` folder is copied into a temporary folder and
rebuilt there with ``validation.deep_report.build_report`` (what ``gpcheck report`` runs); the
committed folder is never written. Then, per report:

* claim by claim, (name, verdict) against the committed ``report.json``: a claim whose verdict
  changed, or that disappeared, is a FAILURE; a claim that is new is listed (allowed);
* the rows that are new in the rebuild (allowed) are listed, then left out of what follows;
* every other top-level key of ``report.json`` (the runs' numbers, the seed table, the rates, the
  sensitivity table...) must be equal (floats to ``RTOL``), except ``report_built_utc``; claims' numbers and reasons too;
  a difference there is listed as a CHANGE (and fails with ``--strict``);

``report.md`` rendered from the rebuilt ``report.json`` against the committed one, and the
README's results block rendered from the rebuilt reports against the committed README; and the
ladder's ``report.md`` re-rendered from its committed ``report.json``
(``validation.readme_results``). Exit status 0 when no verdict changed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


RTOL = 1e-9  #: numbers equal to this relative tolerance
#: angles in degrees equal to this absolute tolerance: a median angle near 0 comes from arccos near 1,
#: and moves by ~1e-14 degrees with the BLAS thread count of the machine that rebuilds the report
ANGLE_ATOL = 1e-9


def same(a, b, key: str = "") -> bool:
    """Equal JSON values, floats to RTOL (angles, keys with "angle" in their name, to ANGLE_ATOL)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=RTOL, abs_tol=ANGLE_ATOL if "angle" in key else 0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], str(k)) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, key) for x, y in zip(a, b))
    return a == b


def _claims(rep: dict) -> dict[str, dict]:
    return {c["claim"]: c for c in rep["claims"]}


def without(rep: dict, names: set[str]) -> dict:
    """``rep`` without the claim rows ``names`` (and their line in the sensitivity table): the
    rebuilt report as it reads without the rows that are new."""
    out = {**rep, "claims": [c for c in rep["claims"] if c["claim"] not in names]}
    if rep.get("sensitivity"):
        sens = rep["sensitivity"]
        out["sensitivity"] = {**sens, "verdicts": {k: v for k, v in sens["verdicts"].items() if k not in names}}
    return out


def compare(old: dict, new: dict) -> tuple[list[str], list[str], list[str]]:
    """(failures, changes, added) between a committed report and its rebuild (the rows that are
    new in the rebuild are listed in ``added``, and left out of every other comparison)."""
    fails, changes, added = [], [], []
    oc, nc = _claims(old), _claims(new)
    new = without(new, set(nc) - set(oc))
    for name, c in oc.items():
        if name not in nc:
            fails.append(f"claim gone: {name!r} (was {c['verdict']})")
        elif nc[name]["verdict"] != c["verdict"]:
            fails.append(f"verdict changed: {name!r}: {c['verdict']} -> {nc[name]['verdict']}")
        else:
            for k in sorted(set(c) | set(nc[name])):
                if not same(c.get(k), nc[name].get(k)):
                    changes.append(f"claim {name!r}: {k} differs")
    added = [f"{n!r}: {c['verdict']}" for n, c in nc.items() if n not in oc]
    if [n for n in nc if n in oc] != [n for n in oc if n in nc]:
        changes.append("claims: the order of the rows changed")
    for k in sorted(set(old) | set(new)):
        if k in ("claims", "report_built_utc"):
            continue
        if not same(old.get(k), new.get(k)):
            changes.append(f"report.json[{k!r}] differs")
    return fails, changes, added


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", help="report folders under reports/ (default: every suite folder)")
    ap.add_argument("--keep", help="rebuild into this folder (kept) instead of a temporary one")
    ap.add_argument("--strict", action="store_true", help="a changed number fails too")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from validation import readme_results
    from validation.deep_report import build_report
    from validation.report_md import render_markdown

    reports = ROOT / "reports"
    # a suite folder without a report.json is a measurement under way: nothing committed to compare
    folders = args.folders or sorted(p.name for p in reports.iterdir()
                                     if (p / "runs").is_dir() and (p / "report.json").is_file()
                                     and not p.name.startswith("transformer-"))  # not a CIFAR suite
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="verdicts-"))
    total_fail = total_change = 0
    rebuilt: dict[str, dict] = {}
    try:
        for folder in folders:
            src, dst = reports / folder, tmp / "reports" / folder
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, symlinks=True)
            old = json.loads((src / "report.json").read_text())
            t0 = time.perf_counter()
            build_report(dst)
            new = json.loads((dst / "report.json").read_text())
            fails, changes, added = compare(old, new)
            total_fail += len(fails)
            total_change += len(changes)
            print(f"{folder}: {len(old['claims'])} claims committed, {len(new['claims'])} rebuilt, "
                  f"{len(fails)} verdict failures, {len(changes)} other changes, {len(added)} new "
                  f"({time.perf_counter() - t0:.0f} s)")
            for line in fails:
                print(f"  FAIL {line}")
            for line in changes:
                print(f"  CHANGE {line}")
            for line in added:
                print(f"  NEW {line}")
            # report.md rendered from the rebuilt report.json without its new rows, at the committed build time
            bare = without(new, {c["claim"] for c in new["claims"]} - {c["claim"] for c in old["claims"]})
            md = render_markdown({**bare, "report_built_utc": old["report_built_utc"]})
            md_same = (src / "report.md").read_text() == md
            print(f"  report.md (without the new rows) {'identical' if md_same else 'DIFFERS'}")
            rebuilt[folder] = bare
        if (reports / "ladder" / "report.json").exists() and not args.folders:  # the ladder's renderer
            from validation import ladder

            lad = json.loads((reports / "ladder" / "report.json").read_text())
            same_md = ladder.render_markdown(lad) == (reports / "ladder" / "report.md").read_text()
            print(f"ladder: report.md re-rendered from its report.json {'identical' if same_md else 'DIFFERS'} "
                  "(its verdicts come from rerunning the problems, `gpcheck ladder`, not from traces)")
            total_change += not same_md
        readme = (ROOT / "README.md").read_text()
        for folder in readme_results.SUITES:  # the README's block reads every evidence report
            if (reports / folder).exists():
                (tmp / "readme" / folder).mkdir(parents=True, exist_ok=True)
                rep = rebuilt.get(folder) or json.loads((reports / folder / "report.json").read_text())
                (tmp / "readme" / folder / "report.json").write_text(json.dumps(rep))
        block = readme_results.render(tmp / "readme")
        same = readme_results.replace_block(readme, block) == readme
        print(f"README results block from the rebuilt reports (without the new rows): "
              f"{'identical' if same else 'DIFFERS'}")
        full = readme_results.render(tmp / "reports") if not args.folders else None
        if full is not None:
            print(f"README results block with the new rows: "
                  f"{'identical' if readme_results.replace_block(readme, full) == readme else 'differs'}")
        if not same:
            committed = readme.split(readme_results.BEGIN, 1)[1].split(readme_results.END, 1)[0].splitlines()
            new_lines = block.split(readme_results.BEGIN, 1)[1].split(readme_results.END, 1)[0].splitlines()
            import difflib

            for line in difflib.unified_diff(committed, new_lines, "README (committed)", "README (rebuilt)", lineterm="", n=0):
                print("  " + line)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"verdict failures: {total_fail}; other changes: {total_change}")
    return 1 if total_fail or (args.strict and total_change) else 0


if __name__ == "__main__":
    sys.exit(main())
