"""Computation graphs (docs/theory.md §3): the DAG beside the sparsity pattern of its backward system,
both coloured by level set (the rows ``level_schedule`` solves in the same step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np

from ..systems import GraphSystem
from .sparsity import spy

__all__ = ["level_colors", "draw_dag", "spy_levels", "dag_and_spy", "plot_graph_steps"]


def _check(system) -> GraphSystem:
    if not isinstance(system, GraphSystem):
        raise TypeError(f"system must be a trilib.GraphSystem (from trilib.backward_system on a "
                        f"non-FNN module), got {type(system).__name__}")
    return system


def level_colors(system: GraphSystem, cmap: str = "viridis") -> list[tuple]:
    """One RGBA colour per block row: the colour of its backward level set."""
    _check(system)
    colours = plt.get_cmap(cmap)(np.linspace(0.1, 0.9, max(system.depth, 1)))
    out = [None] * system.k
    for s, level in enumerate(system.levels):
        for i in level:
            out[i] = tuple(colours[s])
    return out


def draw_dag(system: GraphSystem, ax=None, labels: bool = True, cmap: str = "viridis"):
    """Draw the DAG left to right (input side left, output right), nodes coloured by level set.

    Node ``i`` is labelled ``v_i`` (1-based, as in the spy plot); column = its level, so the
    nodes of one column are solved together by ``level_schedule``. Returns the axes.
    """
    _check(system)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    pos = {}
    for s, level in enumerate(system.levels):
        for rank, i in enumerate(level):
            pos[i] = (system.depth - 1 - s, rank - (len(level) - 1) / 2)
    colours = level_colors(system, cmap)
    nx.draw_networkx_edges(system.graph, pos, ax=ax, arrows=True, arrowsize=8, width=0.8,
                           edge_color="0.45", connectionstyle="arc3,rad=0.25", node_size=260)
    nx.draw_networkx_nodes(system.graph, pos, ax=ax, node_color=colours, node_size=260,
                           edgecolors="0.2", linewidths=0.6)
    if labels:
        nx.draw_networkx_labels(system.graph, pos, ax=ax, font_size=7,
                                labels={i: f"{system.symbol}{i + 1}" for i in range(system.k)})
    half = max(len(level) for level in system.levels) / 2 + 0.5
    ax.set_ylim(-max(half, 1.5), max(half, 1.5))
    ax.set_xlim(-0.6, system.depth - 0.4)
    ax.set_title(f"DAG: k={system.k} nodes, depth={system.depth} levels", fontsize=10)
    ax.set_axis_off()
    return ax


def spy_levels(system: GraphSystem, sample: int = 0, ax=None, cmap: str = "viridis"):
    """The pattern of ``I - N`` (one sample), each block row in the colour of its level set."""
    _check(system)
    return spy(system, sample, ax=ax, row_colors=level_colors(system, cmap), max_labels=12)


def dag_and_spy(system: GraphSystem, sample: int = 0, figsize=(10, 4.4)):
    """:func:`draw_dag` beside :func:`spy_levels`; returns the figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [1.3, 1]})
    draw_dag(system, ax=left)
    spy_levels(system, sample, ax=right)
    fig.tight_layout()
    return fig


def plot_graph_steps(depths: Sequence[int], steps: Mapping[str, Sequence[int]], ax=None,
               xlabel: str = "graph depth (levels)"):
    """Parallel steps against depth, one line per method (``steps[method][i]`` at
    ``depths[i]``). Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    styles = [("o", "-", 7), ("s", "--", 5.5), ("^", "-.", 4.5), ("D", ":", 3.5), ("v", "-", 3)]
    for s, (method, ys) in enumerate(steps.items()):
        if len(ys) != len(depths):
            raise ValueError(f"steps[{method!r}] has {len(ys)} values but depths has {len(depths)}")
        marker, line, size = styles[s % len(styles)]
        ax.plot(depths, ys, marker=marker, ls=line, ms=size, label=method)   # overlaps stay visible
    ax.set_xlabel(xlabel)
    ax.set_ylabel("parallel steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
