"""Pictures of the forward pass parallel in time (docs/theory.md §7): Newton's residual per
iteration, full against diagonal Jacobians, and parallel steps against the sequence length."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from .._numerics import ceil_log2

__all__ = ["gru_and_input", "newton_runs", "plot_residuals", "newton_explorer", "parallel_steps",
           "plot_parallel_steps"]


def gru_and_input(tau: int = 64, hidden: int = 8, scale: float = 1.0, layers: int = 1, n_in: int = 1,
                  batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A seeded ``nn.GRU`` whose weights are multiplied by ``scale`` (large scales make the
    recurrence expanding and Newton's linearisation poor) and a random input ``(τ, batch, n_in)``.

    Example:
        >>> gru, x = gru_and_input(tau=5, hidden=3)
        >>> x.shape, gru.hidden_size
        (torch.Size([5, 1, 1]), 3)
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gru = torch.nn.GRU(n_in, hidden, num_layers=layers, dtype=dtype)
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(scale)
    return gru, torch.randn(tau, batch, n_in, generator=gen, dtype=torch.float64).to(dtype)


def newton_runs(module, x, jacobians: Sequence[str] = ("full", "diagonal"), **options) -> dict:
    """``{jacobian: trace}`` of ``trilib.forward(module, x, "newton", jacobian=...)``."""
    from ..api import forward

    return {j: forward(module, x, "newton", return_trace=True, jacobian=j, **options)[1] for j in jacobians}


def plot_residuals(traces: dict, ax=None, tau: int | None = None):
    """Relative residual ``‖s - cell(s)‖ / ‖cell(s)‖`` per Newton iteration, one line per trace
    (log scale; an exact zero is drawn at the bottom of the axis)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 3.4))
    floor = 1e-18
    for i, (label, trace) in enumerate(traces.items()):
        res = [max(r, floor) for r in trace.residuals]
        ax.semilogy(range(1, len(res) + 1), res, "o-", ms=3, color=f"C{i}",
                    label=f"{label}: {len(res)} iterations")
    if tau is not None:
        ax.axvline(tau, color="0.5", ls=":", lw=1)
        ax.text(tau, ax.get_ylim()[1], " τ", va="top", color="0.4")
    ax.set_xlabel("Newton iteration")
    ax.set_ylabel("relative residual")
    ax.set_ylim(bottom=floor / 2)
    ax.legend(fontsize=8)
    return ax


def newton_explorer(tau: int = 64, hidden: int = 8, scale: float = 1.0, seed: int = 0):
    """Slider callback: Newton with full and diagonal Jacobians on a GRU, residual per iteration.

    Meant for ``ipywidgets.interact(newton_explorer, tau=..., hidden=..., scale=...)``.
    Returns the figure.
    """
    gru, x = gru_and_input(tau, hidden, scale, seed=seed)
    traces = newton_runs(gru, x)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    plot_residuals(traces, ax=ax, tau=tau)
    full = traces["full"]
    ax.set_title(f"GRU, τ={tau}, n={hidden}, weight scale {scale:g}: Newton needs "
                 f"{full.steps} iterations × ⌈log2 τ⌉ = {ceil_log2(tau)} scan steps "
                 f"(sequential: {tau} steps)", fontsize=8.5)
    fig.tight_layout()
    plt.show()
    return fig


def parallel_steps(taus: Sequence[int], hidden: int = 8, scale: float = 1.0, seeds: Sequence[int] = (0, 1, 2),
                   jacobian: str = "full") -> list[dict]:
    """For each τ, Newton's median iterations over ``seeds`` and its parallel steps (iterations plus
    the scans' steps, of the median run) against the recurrence's τ steps.

    Returns:
        One dict per τ: ``tau``, ``iterations`` (median), ``steps`` (iterations + scan steps of
        the median run), ``sequential`` (τ).
    """
    rows = []
    for tau in taus:
        runs = []
        for seed in seeds:
            gru, x = gru_and_input(tau, hidden, scale, seed=seed)
            trace = newton_runs(gru, x, (jacobian,))[jacobian]
            runs.append((trace.steps, trace.steps + trace.info["linear_steps"]))
        runs.sort()
        its, steps = runs[len(runs) // 2]
        rows.append({"tau": tau, "iterations": statistics.median(r[0] for r in runs), "steps": steps,
                     "sequential": tau})
    return rows


def plot_parallel_steps(rows: list[dict], ax=None, label: str = "Newton (full Jacobian)"):
    """Parallel steps against τ: Newton's (iterations × scan steps) and the recurrence's τ."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.4, 3.4))
    taus = [r["tau"] for r in rows]
    ax.loglog(taus, [r["sequential"] for r in rows], "s-", color="C3", label="sequential recurrence: τ",
              base=2)
    ax.loglog(taus, [r["steps"] for r in rows], "o-", color="C0", label=label, base=2)
    ax.set_xlabel("sequence length τ")
    ax.set_ylabel("parallel steps")
    ax.legend(fontsize=8)
    return ax
