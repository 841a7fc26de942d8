"""The trees of the direct parallel solvers, drawn from their traces (docs/theory.md §5).

Nothing here knows an algorithm: :func:`tree_trace` runs the real solver on a tiny system and
:func:`plot_tree` draws whatever ``trace.combines`` recorded. Row ``l`` is a vertical line
(its affine map travelling down the steps); a combine ``(target, source)`` of step ``s`` is an
edge from the source at level ``s`` to the target at level ``s + 1``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from .._checks import check_int
from ..solvers import check_method, solve
from ..systems import BlockBidiagonalSystem
from ..trace import Trace

__all__ = ["tree_trace", "plot_tree", "plot_trees", "plot_counts"]


def tree_trace(method: str, k: int, upper: bool = True) -> Trace:
    """The trace of ``method`` on a ``k``-row block bi-diagonal system of width 1.

    Steps, work and combines depend only on ``k`` (and on ``upper``), so a tiny random system
    shows the tree of any size cheaply. Example: ``tree_trace("blelloch", 8).steps == 5``.
    """
    check_method(method)
    k = check_int("k", k, 1)
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(1, 1, generator=gen, dtype=torch.float64) for _ in range(k - 1)]
    rhs = [torch.randn(1, 1, generator=gen, dtype=torch.float64) for _ in range(k)]
    system = BlockBidiagonalSystem(mats, [None] * (k - 1), rhs, upper=upper, symbol="v" if upper else "z")
    return solve(system, method, return_trace=True)[1]


def plot_tree(trace: Trace, k: int | None = None, step: int | None = None, ax=None,
              symbol: str = "v"):
    """Draw the combines of ``trace`` as a tree; highlight step ``step`` (0-based) in red.

    Args:
        trace: a :class:`~trilib.trace.Trace` of a block bi-diagonal solve.
        k: the number of block rows (default: the largest row in the trace + 1).
        step: the step to highlight, ``0 <= step < trace.steps``, or ``None``.
        ax: Matplotlib axes to draw into (a new figure when ``None``).
        symbol: the unknowns' name in the tick labels (``v`` backward, ``z`` forward).

    Returns:
        The axes. Its title gives the method, k, steps and work.
    """
    if k is None:
        k = 1 + max((max(t, s) for pairs in trace.combines for t, s in pairs), default=0)
    if step is not None and not 0 <= step < max(trace.steps, 1):
        raise ValueError(f"step must be in [0, {trace.steps}) for this trace, got {step}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.25 * k + 2), 0.5 * trace.steps + 1.8))
    levels = len(trace.combines)
    ax.vlines(range(k), 0, levels, color="0.85", lw=1, zorder=0)
    for s, pairs in enumerate(trace.combines):
        hot = s == step
        if pairs:      # one collection per step: a k = 64 tree has hundreds of combines
            ax.add_collection(LineCollection([[(src, s), (t, s + 1)] for t, src in pairs],
                                             colors="C3" if hot else "0.45", linewidths=2.2 if hot else 0.8,
                                             zorder=2 if hot else 1))
            targets = [t for t, _ in pairs]
            ax.scatter(targets, [s + 1] * len(targets), s=22 if hot else 8,
                       color="C3" if hot else "0.3", zorder=3)
    ax.scatter(range(k), [0] * k, s=8, color="C0", zorder=3)
    ax.set_ylim(levels + 0.4, -0.4)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylabel("step")
    ax.set_yticks(range(levels + 1))
    every = max(1, -(-k // 16))
    ticks = [r for r in range(k) if r % every == 0 or r == k - 1]
    ax.set_xticks(ticks, [f"${symbol}_{{{r + 1}}}$" for r in ticks], fontsize=7)
    ax.set_title(f"{trace.method}: k={k}, {trace.steps} steps, {trace.work} products", fontsize=9)
    return ax


def plot_trees(methods, k: int, step: int | None = None, upper: bool = True):
    """One tree per method side by side for the same ``k``; ``step`` is highlighted where the
    method has that many steps. Returns the figure."""
    methods = list(methods)
    traces = [tree_trace(m, k, upper) for m in methods]
    height = 0.28 * max(t.steps for t in traces) + 2.6
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), height), squeeze=False)
    for ax, trace in zip(axes[0], traces):
        shown = step if step is not None and step < trace.steps else None
        plot_tree(trace, k, shown, ax, symbol="v" if upper else "z")
    fig.tight_layout()
    return fig


def plot_counts(methods, ks=None):
    """Steps and work against k on log-log axes, one line per method.

    Counts come from running each method (:func:`tree_trace`) for every k in ``ks`` (default:
    about 40 values from 2 to 1024). Work counts block products: n x n matrix products and
    matrix-vector products, each counted once (docs/theory.md §5).

    k starts at 2: for k = 1 every parallel method takes 0 steps and 0 products, which a
    logarithmic axis cannot show (sequential substitution counts its single row as 1 step).

    Args:
        methods: method names (see :func:`trilib.methods`).
        ks: the values of k, each an int >= 2.

    Returns:
        The figure, with the steps on the left axes and the work on the right.

    Example:
        >>> fig = plot_counts(["sequential", "blelloch"], ks=[2, 4, 8])
    """
    if ks is None:
        ks = np.unique(np.geomspace(2, 1024, 40).round())
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 2:
        raise ValueError(f"ks must be ints >= 2 (k = 1 has 0 steps and 0 products, which a log axis "
                         f"cannot show), got {ks}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, method in enumerate(methods):
        traces = [tree_trace(method, k) for k in ks]
        dashes = {"sequential": "--", "parallel_cyclic_reduction": ":"}   # PCR coincides with RD
        style = dict(color=f"C{i}", lw=2.5 if method in dashes else 1.5, ls=dashes.get(method, "-"),
                     label=method)
        left.plot(ks, [t.steps for t in traces], **style)
        right.plot(ks, [t.work for t in traces], **style)
    labels = ((left, "parallel steps"), (right, "work (block products: mat-mat and mat-vec)"))
    for ax, what in labels:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(f"k (layers), from k = {ks[0]}")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    return fig
