"""Measured timelines as Gantt charts, in the style of :func:`trilib.viz.gantt`, and side by side
with :func:`trilib.schedule.simulate`'s predictions."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from .schedules import SIMULATED

__all__ = ["gantt", "compare"]

_HATCH = {"combine": "//", "apply": "..", "gradients": "xx"}
_ORDER = ("sequential", "pipeline", "tree")


def _arrivals(timeline):
    """``(src, dst, phase, microbatch) -> time`` the receiver had the message in hand."""
    out = {}
    for e in timeline:
        if e.kind in ("recv", "wait") and e.peer is not None and e.peer != e.rank:
            key = (e.peer, e.rank, e.phase, e.microbatch)
            out[key] = max(out.get(key, e.end), e.end)
    return out


def gantt(result, ax=None, title: str | None = None, arrows: bool = True):
    """Draw a measured timeline: a row per rank, time in milliseconds since the start barrier.

    Compute boxes are coloured by micro-batch (as in :func:`trilib.viz.gantt`); the forward pass
    is pale, the loss grey, the tree's combines hatched ``//``, its final back-substitution
    ``..``, weight gradients ``xx``. Receiving and waiting are thin grey bars, sends thin black
    ones; an arrow runs from each send to the moment its receiver had the data.

    Args:
        result: a :class:`~trilib.distributed.DistributedResult`.
        ax: axes to draw on (default: a new figure).
        title: default: schedule, P, m and the makespan.
        arrows: draw the messages.

    Returns:
        The Matplotlib axes.
    """
    P = result.world_size
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * P + 1.2))
    cmap = plt.get_cmap("tab10")
    ms = 1e3
    for e in result.timeline:
        start, width = e.start * ms, max(e.duration * ms, 1e-6)
        if e.kind == "compute":
            colour = "0.35" if e.phase == "loss" else cmap((e.microbatch or 0) % 10)
            ax.broken_barh([(start, width)], (e.rank - 0.4, 0.8), facecolors=colour,
                           alpha=0.4 if e.phase == "forward" else 1.0, edgecolor="white",
                           linewidth=0.3, hatch=_HATCH.get(e.phase, ""))
        else:
            colour = {"send": "black", "recv": "0.55", "wait": "0.78"}[e.kind]
            ax.broken_barh([(start, width)], (e.rank - 0.12, 0.24), facecolors=colour, linewidth=0)
    if arrows:
        arrival = _arrivals(result.timeline)
        for e in result.timeline:
            end = arrival.get((e.rank, e.peer, e.phase, e.microbatch)) if e.kind == "send" else None
            if end is not None:
                ax.annotate("", xy=(end * ms, e.peer + (-0.4 if e.peer > e.rank else 0.4)),
                            xytext=(e.start * ms, e.rank + (0.4 if e.peer > e.rank else -0.4)),
                            arrowprops=dict(arrowstyle="->", color="0.45", lw=0.5))
    ax.set_yticks(range(P), [f"rank {d}" for d in range(P)], fontsize=8)
    ax.set_ylim(P - 0.5, -0.5)
    ax.set_xlim(0, max(result.makespan * ms, 1e-3))
    ax.set_xlabel("milliseconds since the start barrier (measured)")
    m = f", m={result.microbatches}" if result.schedule == "pipeline" else ""
    ax.set_title(title or f"{result.schedule} (measured): P={P}{m} | makespan "
                 f"{result.makespan * ms:.2f} ms", fontsize=9)
    return ax


def legend_handles():
    """Patches explaining :func:`gantt`'s colours and hatches."""
    return [Patch(facecolor="C0", alpha=0.4, label="forward"), Patch(facecolor="0.35", label="loss"),
            Patch(facecolor="C0", label="backward / slab map"),
            Patch(facecolor="C0", hatch="//", edgecolor="white", label="tree combine"),
            Patch(facecolor="C0", hatch="..", edgecolor="white", label="tree apply"),
            Patch(facecolor="C0", hatch="xx", edgecolor="white", label="weight gradients"),
            Patch(facecolor="0.55", label="recv"), Patch(facecolor="0.78", label="wait"),
            Patch(facecolor="black", label="send")]


def compare(results, k: int | None = None, figsize=None):
    """Measured timelines (left) beside the simulator's predicted backward solve (right).

    Args:
        results: a dict ``schedule -> DistributedResult`` (from ``run(..., schedule=[...])``) or
            a list of results.
        k: the number of layers (default: read from the results' slabs). The simulator needs
            P to divide k; otherwise the right column says so.

    Returns:
        The figure.

    Example:
        >>> # res = trilib.distributed.run(net, x, "sum_squares", 4, schedule=["sequential", "tree"])
        >>> # fig = trilib.distributed.compare(res)
    """
    from ..schedule import simulate
    from ..viz import gantt as simulated_gantt

    items = list(results.values()) if isinstance(results, dict) else list(results)
    items.sort(key=lambda r: _ORDER.index(r.schedule) if r.schedule in _ORDER else len(_ORDER))
    rows = len(items)
    P = max(r.world_size for r in items)
    fig, axes = plt.subplots(rows, 2, squeeze=False,
                             figsize=figsize or (12, sum(0.45 * r.world_size + 1.1 for r in items)),
                             gridspec_kw={"width_ratios": [1.15, 1]})
    for r, (left, right) in zip(items, axes):
        gantt(r, ax=left)
        kk = k or r.slabs[-1][-1]
        if kk % r.world_size == 0:
            sched = simulate(SIMULATED[r.schedule], kk, r.world_size, r.microbatches)
            simulated_gantt(sched, ax=right)
            right.set_yticks(range(r.world_size), [f"rank {d}" for d in range(r.world_size)], fontsize=8)
            s = sched.summary()
            alias = "" if SIMULATED[r.schedule] == r.schedule else f" = {SIMULATED[r.schedule]}"
            right.set_title(f"{r.schedule}{alias} (simulated backward): steps {s['steps']}, "
                            f"messages {s['messages']}", fontsize=9)
        else:
            right.text(0.5, 0.5, f"the simulator needs P | k (P={r.world_size}, k={kk})",
                       ha="center", va="center", transform=right.transAxes)
            right.set_axis_off()
    axes[-1][0].legend(handles=legend_handles(), fontsize=7, ncol=5, loc="upper center",
                       bbox_to_anchor=(0.5, -0.45 if P < 3 else -0.35), frameon=False)
    fig.tight_layout()
    return fig
