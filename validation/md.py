"""Markdown pieces every report renders with: suite reports (report_md), the ladder's report
(ladder), the README's results block (readme_results)."""

from __future__ import annotations

from .claims import FAIL, PASS
from .util import conditions_note, conditions_table

WHY_SHORT = 240  #: characters of a claim's reason in the first-screen table (all of it further down)


def cell(text) -> str:
    """Text for a Markdown table cell: a literal | (as in ||theta||) would end the cell."""
    return str(text).replace("|", "\\|")


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rule(n: int) -> str:
    """The line under a table's header of ``n`` columns."""
    return "|" + "---|" * n


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [row(header), rule(len(header))] + [row(r) for r in rows]


def short(text: str, n: int = WHY_SHORT) -> str:
    """``text`` cut to ``n`` characters, with an ellipsis where it was cut."""
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def verdict_cell(v: str, evidence: bool = True) -> str:
    """A verdict, bold where it is evidence (PASS or FAIL of a report that is not a smoke test)."""
    return f"**{v}**" if evidence and v in (PASS, FAIL) else v


def related_section(rows: list[tuple[str, list[dict]]]) -> list[str]:
    """The related path conditions of every path (label, its conditions): heading, the note the
    registry writes, the table; nothing when no path has any."""
    if not rows:
        return []
    return ["## Related path conditions", "", conditions_note(), "", *conditions_table(rows)]
