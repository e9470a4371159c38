"""Tables that fit the terminal: the table itself when its columns fit the width, else one block
per row (its first cell as a heading, then ``header value`` pairs), so that at 80 columns no
header is cut to ``fun… rea… fli…``; and the few ways of writing a number, a time or a queue's
stats that the commands share."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from swell.brokers.base import QueueStats
from swell.scaling.hotkeys import HotKey

FOLD_AT = 30
"""A column whose cells may fold (``overflow="fold"``: errors, results) counts this wide at most:
its long cells wrap inside the table rather than sending it to blocks."""


def fit(table: Table, width: int) -> RenderableType:
    """``table`` if its columns fit in ``width`` with every header and short cell whole (a title
    wider than the table above it, not wrapped inside it); else the same rows as blocks."""
    need = natural_width(table)
    if need > width:
        return blocks(table, width)
    if table.title and _width(table.title) > need:
        title, table.title = _text(table.title), None
        return Group(title, table)
    return table


def _text(cell: RenderableType) -> Text:
    if isinstance(cell, Text):
        return cell
    return Text.from_markup(cell) if isinstance(cell, str) else Text(str(cell))


def _width(cell: RenderableType) -> int:
    return max((Text(line).cell_len for line in _text(cell).plain.splitlines()), default=0)


def natural_width(table: Table) -> int:
    """The width ``table`` needs for every header on one line and every cell unwrapped (cells
    of folding columns counted up to ``FOLD_AT``)."""
    total = 1  # the left edge
    for col in table.columns:
        head = _width(col.header)
        widest = max([head, *(_width(c) for c in col.cells)])
        if col.overflow == "fold":
            widest = min(widest, max(head, FOLD_AT))
        total += widest + 3  # padding on both sides and the border after it
    return total


def blocks(table: Table, width: int) -> Group:
    """Each row of ``table`` as a block: its first cell in bold (the one above, if it is empty),
    then ``header value`` pairs, as many to a line as fit; empty cells are left out."""
    out: list[RenderableType] = []
    if table.title:
        out.append(_text(table.title))
    for i, first in enumerate(table.columns[0].cells if table.columns else ()):
        heading = _text(first).copy()
        if heading.plain:  # else the row goes on under the heading above (a topic's next sub)
            if heading.plain.replace(",", "").isdigit():  # a number says little alone: "partition 3"
                heading = Text.assemble(_text(table.columns[0].header).plain, " ", heading)
            heading.stylize("bold")
            out.append(heading)
        out.extend(row_lines(table, i, width))
    return Group(*out)


def row_lines(table: Table, row: int, width: int) -> list[RenderableType]:
    """Row ``row`` of ``table`` but its first cell, as indented ``header value`` lines."""
    pairs = []
    for col in table.columns[1:]:
        cell = _text(list(col.cells)[row])
        if cell.plain.strip():
            pairs.append((_text(col.header).plain, cell))
    return _lines(pairs, width - 2)


def _lines(pairs: Iterable[tuple[str, Text]], width: int) -> list[RenderableType]:
    """``header value`` pairs packed into indented lines of at most ``width`` cells; a value too
    long for a line goes below its header, indented, and wraps there."""
    lines: list[RenderableType] = []
    line = Text("  ")
    for header, value in pairs:
        pair = Text.assemble((header, "dim"), " ", value)
        if line.cell_len > 2 and line.cell_len + 2 + pair.cell_len > width + 2:
            lines.append(line)
            line = Text("  ")
        if pair.cell_len > width or "\n" in value.plain:
            lines += [Text.assemble("  ", (header, "dim")), Padding(value, (0, 0, 0, 4))]
            continue
        if line.cell_len > 2:
            line.append("  ")
        line.append_text(pair)
    if line.cell_len > 2:
        lines.append(line)
    return lines


# -- values -----------------------------------------------------------------------------------
def age(s: float) -> str:
    """A duration, in the unit that reads best: ``40 ms``, ``12.5 s``, ``3.0 min``, ``2.5 h``."""
    if s < 1:
        return f"{s * 1000:.0f} ms" if s else "-"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def when(t: float, ms: bool = False) -> str:
    """An instant (epoch seconds) in UTC: ``2026-01-02 03:04:05`` (``.678`` with ``ms``)."""
    out = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if ms else "%Y-%m-%d %H:%M:%S")
    return out[:-3] if ms else out


def hot_keys(keys: Iterable[HotKey]) -> str:
    """Hot keys, comma-separated: ``k 12.5/s (40% of partition 3)``."""
    return ", ".join(f"{k.key} {k.rate_per_s:,.1f}/s ({k.share:.0%} of partition {k.partition})"
                     for k in keys)


def stats_table(rows: Iterable[QueueStats], title: str = "queues") -> Table:
    """Queues' stats, a row each: ready, in flight, delayed, age of the oldest."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("queue")
    for col in ("ready", "in flight", "delayed", "oldest"):
        table.add_column(col, justify="right")
    for s in rows:
        table.add_row(s.queue, f"{s.depth:,}", f"{s.in_flight:,}", f"{s.delayed:,}",
                      age(s.oldest_age_s))
    return table
