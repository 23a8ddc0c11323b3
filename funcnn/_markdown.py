"""Markdown (GitHub) tables: the one formatter behind every table funcnn prints."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["table"]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of string cells, its columns padded to one width so that it
    also reads as plain text; a column whose non-empty cells are all numbers is
    right-aligned (``---:``). Raises a ValueError when a row's length differs from
    the headers'."""
    headers = [str(h) for h in headers]
    rows = [[str(c) for c in row] for row in rows]
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"table: every row needs one cell per header ({len(headers)})")
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows if r[i])
               and any(r[i] for r in rows) for i in range(len(headers))]
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2)
                          for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *map(line, rows)])
