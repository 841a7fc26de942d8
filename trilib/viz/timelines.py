"""Gantt charts of model-parallel schedules and convergence plots of iterative solvers."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..schedule import METHODS, Schedule, simulate

__all__ = ["gantt", "gantt_grid", "convergence"]

_HATCH = {"layer": "", "combine": "//", "apply": ".."}


def gantt(schedule: Schedule, ax=None, title: str | None = None):
    """Draw one schedule: a row per device, a box per time unit coloured by micro-batch.

    Combines of a direct solver are hatched ``//``, its final applications ``..``; messages are
    thin grey arrows between device rows. Returns the Matplotlib axes.

    Example:
        >>> from trilib.schedule import simulate
        >>> from trilib.viz import gantt
        >>> ax = gantt(simulate("block_jacobi", k=8, P=4, m=3))
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * schedule.P + 1.2))
    cmap = plt.get_cmap("tab10")
    for t in schedule.tasks:
        ax.broken_barh([(t.start, 1)], (t.device - 0.4, 0.8), facecolors=cmap(t.micro_batch % 10),
                       edgecolor="white", linewidth=0.5, hatch=_HATCH.get(t.kind, ""))
    if len(schedule.messages) <= 400:
        for msg in schedule.messages:
            ax.annotate("", xy=(msg.time, msg.dst - 0.4), xytext=(msg.time, msg.src + 0.4),
                        arrowprops=dict(arrowstyle="->", color="0.45", lw=0.6))
    ax.set_yticks(range(schedule.P), [f"device {d}" for d in range(schedule.P)], fontsize=8)
    ax.set_ylim(schedule.P - 0.5, -0.5)
    ax.set_xlim(0, max(schedule.steps, 1))
    ax.set_xlabel("time (block operations on one micro-batch)")
    s = schedule.summary()
    ax.set_title(title or f"{schedule.method}: k={schedule.k}, P={schedule.P}, m={schedule.m} | "
                 f"steps {s['steps']}, messages {s['messages']}, idle {s['idle']}", fontsize=9)
    return ax


def gantt_grid(k: int, P: int, m: int, methods=METHODS, figsize=None):
    """Gantt charts of several schedules stacked on a shared time axis; returns the figure.

    Example:
        >>> import trilib
        >>> fig = trilib.viz.gantt_grid(k=8, P=4, m=2)
    """
    schedules = [simulate(name, k, P, m) for name in methods]
    fig, axes = plt.subplots(len(schedules), 1, sharex=True,
                             figsize=figsize or (9, sum(0.4 * s.P + 0.9 for s in schedules)))
    axes = [axes] if len(schedules) == 1 else list(axes)
    for s, ax in zip(schedules, axes):
        gantt(s, ax=ax)
        ax.set_xlabel("")
    axes[-1].set_xlabel("time (block operations on one micro-batch)")
    axes[0].set_xlim(0, max(s.steps for s in schedules))
    fig.tight_layout()
    return fig


def convergence(traces, labels=None, ax=None, kind: str = "residuals", floor: float = 1e-17):
    """Relative residual (or error, ``kind="errors"``) per sweep on a log scale.

    A value of exactly 0 (the exact solution) is drawn at ``floor`` with a star.

    Args:
        traces: one :class:`~trilib.trace.Trace` or a list of them.
        labels: legend labels (default: the method names).
        ax: axes to draw on.

    Returns:
        The Matplotlib axes.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 8, 8, 8, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(4, 3, dtype=torch.float64), lambda o: o.sum())
        >>> ax = trilib.viz.convergence(trilib.solve(U, "jacobi", return_trace=True)[1])
    """
    if kind not in ("residuals", "errors"):
        raise ValueError(f"kind must be 'residuals' or 'errors', got {kind!r}")
    if not isinstance(traces, (list, tuple)):
        traces = [traces]
    labels = labels or [t.method for t in traces]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (tr, label) in enumerate(zip(traces, labels)):
        values = getattr(tr, kind)
        shown = [max(v, floor) for v in values]
        sweeps = range(1, len(values) + 1)
        ax.semilogy(sweeps, shown, "o-", ms=3, color=f"C{i}", label=label)
        exact = [(s, floor) for s, v in zip(sweeps, values) if v == 0]
        if exact:
            ax.plot(*zip(*exact), "*", ms=11, color=f"C{i}")
    ax.set_xlabel("sweep / iteration")
    ax.set_ylabel("relative residual" if kind == "residuals" else "relative error")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return ax
