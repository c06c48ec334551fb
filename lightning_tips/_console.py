"""Tables for the terminal: rich in a terminal, plain ASCII otherwise (logs, CI, files)."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["render_table"]


def render_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, color: bool | None = None) -> str:
    """Render a table as text: rich with colours in a terminal, plain ASCII otherwise.

    Example:
        >>> print(render_table("t", ["a", "b"], [[1, "x"]], color=False))  # doctest: +NORMALIZE_WHITESPACE
          t
        +-------+
        | a | b |
        |---+---|
        | 1 | x |
        +-------+
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    color = sys.stdout.isatty() if color is None else color
    table = Table(title=title, box=box.ROUNDED if color else box.ASCII, show_lines=False)
    for c in columns:
        table.add_column(str(c), overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=160 if color else 200)
    console.print(table)
    return buf.getvalue().rstrip("\n")
