"""Pictures of RNN backward systems: the 2-D pattern in both orderings, steps against k and τ,
and training curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from ..systems import RNNSystem
from .sparsity import spy

__all__ = ["rnn_spy_pair", "rnn_steps", "plot_steps", "plot_loss_curves"]


def rnn_spy_pair(system: RNNSystem, sample: int = 0, figsize=(9, 4.4)):
    """The same RNN system ordered by layer (left) and by time (right); returns the figure."""
    if not isinstance(system, RNNSystem):
        raise TypeError(f"system must be an RNNSystem, got {type(system).__name__}")
    k, tau = system.grid_shape
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, order in zip(axes, ("layer", "time")):
        spy(system.with_order(order), sample, ax=ax,
            title=f"ordered by {order}: k={k}, τ={tau}", color="C0" if order == "layer" else "C1")
        ax.set_xticks([])
        ax.set_yticks([])
        # heavy lines between groups: one layer's τ unknowns, or one time step's k unknowns
        group = (tau if order == "layer" else k) * system.d.shape[-1]
        groups = k if order == "layer" else tau
        for g in range(1, groups):
            ax.axhline(g * group, color="k", lw=1.2)
            ax.axvline(g * group, color="k", lw=1.2)
        inner = "t = 1..τ" if order == "layer" else "l = 1..k"
        ax.set_xlabel(f"{groups} groups of {group // system.d.shape[-1]} blocks ({inner})", fontsize=9)
    fig.tight_layout()
    return fig


def rnn_steps(k: int, tau: int, methods: Sequence[str] = ("sequential", "wavefront", "nested"),
              n: int = 2, seed: int = 0) -> dict[str, int]:
    """Trace steps of each method on a random ``k``-layer, ``τ``-step RNN (width ``n``, batch 1)."""
    from ..api import backward_system
    from ..solvers import solve

    torch.manual_seed(seed)
    rnn = torch.nn.RNN(1, n, num_layers=k, dtype=torch.float64)
    system = backward_system(rnn, torch.randn(tau, 1, 1, dtype=torch.float64), lambda o: o[0].sum())
    return {m: solve(system, m, return_trace=True)[1].steps for m in methods}


def plot_steps(ks: Sequence[int], taus: Sequence[int], fixed_k: int, fixed_tau: int,
               methods: Sequence[str] = ("sequential", "wavefront", "nested")):
    """Steps against τ (k = ``fixed_k``) and against k (τ = ``fixed_tau``), log-log axes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, xs, label, pick in ((left, taus, "τ", lambda x: (fixed_k, x)),
                                (right, ks, "k", lambda x: (x, fixed_tau))):
        rows = [rnn_steps(*pick(x), methods) for x in xs]
        for i, m in enumerate(methods):
            ax.plot(xs, [r[m] for r in rows], "o-", color=f"C{i}", label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("parallel steps")
        other = f"k={fixed_k}" if label == "τ" else f"τ={fixed_tau}"
        ax.set_title(f"steps against {label} ({other})", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: dict[str, Sequence[float]], ax=None):
    """Loss per training step, one line per label (e.g. autograd vs a trilib method)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    styles = ["-", "--", ":", "-."]
    for i, (label, losses) in enumerate(curves.items()):
        ax.plot(range(1, len(losses) + 1), losses, styles[i % 4], color=f"C{i}", label=label, lw=2 - 0.5 * i)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend()
    return ax
