"""Spy plots: the sparsity pattern of a system, with its block structure visible."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..systems import TriangularSystem

__all__ = ["spy", "spy_pair"]


def _block_labels(system: TriangularSystem, max_labels: int = 16) -> list[str]:
    k = system.k
    every = max(1, -(-k // max_labels))
    return [f"${system.symbol}_{{{i + 1}}}$" if i % every == 0 or i == k - 1 else "" for i in range(k)]


def spy(system: TriangularSystem, sample: int = 0, ax=None, title: str | None = None,
        color: str = "C0", row_colors=None, max_labels: int = 16):
    """Draw the non-zero pattern of ``system.to_dense(sample)`` with block boundaries.

    Grid lines separate the block rows and columns; tick labels name the unknown of each block
    (``v_l`` for backward systems, ``z_l`` for forward ones).

    Args:
        system: any trilib system.
        sample: which sample of the batch.
        ax: the Matplotlib axes to draw into (a new figure when None).
        title: the title (default: the triangle, k, the size N and the non-zeros).
        color: the colour of the non-zeros.
        row_colors: optionally one colour per block row (e.g. a graph's level sets), overriding
            ``color`` row by row.
        max_labels: at most about this many tick labels.

    Returns:
        The Matplotlib axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    a = system.to_dense(sample).detach().cpu().numpy() != 0
    size, off = a.shape[0], np.asarray(system.offsets)
    if row_colors is None:
        row_colors = [color] * system.k
    if len(row_colors) != system.k:
        raise ValueError(f"row_colors has {len(row_colors)} colours for k = {system.k} block rows")
    img = np.ones((size, size, 4))
    for i, c in enumerate(row_colors):
        rows = slice(off[i], off[i + 1])
        img[rows][a[rows]] = plt.matplotlib.colors.to_rgba(c)
    ax.imshow(img, interpolation="nearest", extent=(0, size, size, 0))
    for b in off[1:-1]:
        ax.axhline(b, color="0.6", lw=0.6)
        ax.axvline(b, color="0.6", lw=0.6)
    centres = (off[:-1] + off[1:]) / 2
    labels = _block_labels(system, max_labels)
    ax.set_xticks(centres, labels, fontsize=8)
    ax.set_yticks(centres, labels, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    kind = "upper" if system.upper else "lower"
    ax.set_title(title or f"{kind}: k={system.k}, N={size}, nnz={int(a.sum())}", fontsize=10)
    return ax


def spy_pair(forward, backward, sample: int = 0, figsize=(9, 4.4)):
    """Forward (lower) and backward (upper) systems side by side; returns the figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize)
    spy(forward, sample, ax=left, title=f"forward: lower, k={forward.k}", color="C2")
    spy(backward, sample, ax=right, title=f"backward: upper, k={backward.k}", color="C0")
    fig.tight_layout()
    return fig


def spy_mlp(k: int = 4, n: int = 3, activation: str = "tanh", n_in: int | None = None,
            seed: int = 0):
    """Build a k-layer MLP of width n and draw its forward and backward systems side by side.

    Meant for sliders: ``ipywidgets.interact(trilib.viz.spy_mlp, k=(1, 16), n=(1, 8))``.
    Returns the figure.
    """
    import torch

    from ..api import backward_system, forward_system
    from ..nets import mlp

    net = mlp([n_in or n] + [n] * k, activation=activation, seed=seed, dtype=torch.float64)
    x = torch.randn(1, n_in or n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fig = spy_pair(forward_system(net, x), backward_system(net, x, lambda out: out.square().sum()))
    plt.show()
    return fig
