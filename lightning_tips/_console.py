"""Tables for the terminal, sized to it: rich when it is installed (the ``[rich]`` extra) and the
output is a terminal, plain ASCII otherwise (logs, CI, files, or no rich).

``rich`` is optional on purpose: Lightning switches its progress bar and model summary to the Rich
versions when ``rich`` is importable, and the pack must not change the user's Trainer behind their back.
"""

from __future__ import annotations

import io
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

__all__ = ["render_table", "terminal_width"]

MIN_WIDTH = 40


def terminal_width(default: int = 100) -> int:
    """The terminal's width in columns (``COLUMNS`` when set), ``default`` when there is no terminal."""
    return max(MIN_WIDTH, shutil.get_terminal_size((default, 24)).columns)


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def render_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    color: bool | None = None,
    width: int | None = None,
) -> str:
    """Render a table as text ``width`` columns wide at most (default: the terminal's width), long
    cells wrapped: rich with colours in a terminal when rich is installed, plain ASCII otherwise.

    Example:
        >>> print(render_table("t", ["a", "b"], [[1, "x"]], color=False))  # doctest: +NORMALIZE_WHITESPACE
          t
        +-------+
        | a | b |
        |---+---|
        | 1 | x |
        +-------+
    """
    width = max(MIN_WIDTH, width or terminal_width())
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    color = sys.stdout.isatty() if color is None else color
    if not _rich_available():
        return plain_table(title, [str(c) for c in columns], cells, width)
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # cells are text, not markup: "consequence of [nonfinite-loss]: …" must keep its "[nonfinite-loss]"
    table = Table(title=escape(title), box=box.ROUNDED if color else box.ASCII, show_lines=False)
    for c in columns:
        table.add_column(escape(str(c)), overflow="fold")
    for r in cells:
        table.add_row(*(escape(c) for c in r))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width)
    console.print(table)
    return buf.getvalue().rstrip("\n")


def _column_widths(columns: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    natural = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    budget = width - (3 * len(columns) + 1)  # "| " + " | " separators + " |"
    widths = list(natural)
    while sum(widths) > budget and max(widths) > 6:
        i = widths.index(max(widths))  # shrink the widest column first
        widths[i] -= 1
    return widths


def plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], width: int = 100) -> str:
    """A plain ASCII table at most ``width`` columns wide (when it can be), long cells wrapped.

    Example:
        >>> print(plain_table("t", ["a", "message"], [["1", "a long message that wraps"]], width=24))
        t
        +---+------------------+
        | a | message          |
        +---+------------------+
        | 1 | a long message   |
        |   | that wraps       |
        +---+------------------+
    """
    widths = _column_widths(columns, rows, width)
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def lines(cells: Sequence[str]) -> list[str]:
        wrapped = [textwrap.wrap(c, w, break_long_words=True, break_on_hyphens=False) or [""]
                   for c, w in zip(cells, widths)]
        height = max(len(x) for x in wrapped)
        return ["| " + " | ".join((x[k] if k < len(x) else "").ljust(w) for x, w in zip(wrapped, widths)) + " |"
                for k in range(height)]

    out = [title, rule, *lines(columns), rule]
    for r in rows:
        out += lines(r)
    out.append(rule)
    return "\n".join(out)
