"""Plain-text tables for the console and logs, drawn by rich (no colours, no wrapping)."""

from __future__ import annotations

import io
from collections.abc import Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """Header, a rule, one line per row; ``numeric`` columns are right-aligned."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style=None)
    for i, name in enumerate(header):
        right = bool(numeric[i]) if numeric is not None else False
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console = Console(file=io.StringIO(), width=100_000, color_system=None, highlight=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
