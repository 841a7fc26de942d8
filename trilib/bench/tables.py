"""The one text-table formatter of trilib: every benchmark table (:func:`trilib.bench.table`, the
gated suite's, :func:`trilib.viz.compare.speedup_table`) and the timeline table of
:meth:`trilib.distributed.DistributedResult.table` are laid out here, so they cannot drift apart.

Cells arrive as strings (:func:`cell` formats a number, or a dash where there is none); a column
is as wide as its widest cell or header, the first ``left`` columns are left-aligned and the
rest right-aligned, with ``gap`` spaces between columns.

Example:
    >>> print(text_table(["case", "autograd", "blelloch"], [["k=4", cell(2.0, ".3f"), cell(0.5)],
    ...                                                    ["k=64", cell(6.0, ".3f"), cell(None)]]))
    case    autograd  blelloch
    k=4        2.000      0.50
    k=64       6.000         -
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["cell", "text_table"]


def cell(value, spec: str = ".2f", missing: str = "-", suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``suffix``), or ``missing`` for ``None`` or NaN.

    Example:
        >>> cell(0.12345, ".3f"), cell(float("nan")), cell(1.5, ".1f", suffix=" ms")
        ('0.123', '-', '1.5 ms')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec) + suffix


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None,
               left: int = 1, gap: int = 2, min_width: int = 0) -> str:
    """Lay out a plain-text table.

    Args:
        header: one name per column.
        rows: one sequence of string cells per line, as many as ``header`` has names.
        title: a first line above the header (none when ``None``).
        left: how many leading columns are left-aligned (labels); the others are right-aligned.
        gap: spaces after a left-aligned column and before a right-aligned one (not before the
            first column).
        min_width: the narrowest a right-aligned column may be, its gap included (keeps columns
            of short numbers evenly spaced).

    Returns:
        The lines joined by newlines, without trailing spaces.

    Raises:
        ValueError: a row with a different number of cells than the header.
    """
    header = [str(h) for h in header]
    body = [[str(c) for c in row] for row in rows]
    bad = [i for i, row in enumerate(body) if len(row) != len(header)]
    if bad:
        raise ValueError(f"text_table: row {bad[0]} has {len(body[bad[0]])} cells, the header "
                         f"{len(header)} ({header})")
    widths = []
    for j, h in enumerate(header):
        w = max([len(h), *(len(row[j]) for row in body)])
        widths.append(w + gap if j < left else max(w + (gap if j else 0), min_width))

    def line(cells: Sequence[str]) -> str:
        return "".join(c.ljust(w) if j < left else c.rjust(w)
                       for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join(([title] if title is not None else []) + [line(header)] + [line(r) for r in body])
