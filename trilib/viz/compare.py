"""Side-by-side comparisons: the sparsity patterns of several systems, and benchmark results as
**speed-up over autograd** (autograd's time / the method's time, so > 1 means faster).

One quantity everywhere: plots, tables and crossover reports all show the speed-up, never the
inverse time ratio. Every method keeps one colour in every plot (:func:`method_colors`), so a
colour is never shared by two methods.

Example:
    >>> import torch, trilib
    >>> from trilib.viz.compare import spy_side_by_side
    >>> net = trilib.nets.mlp([3, 3, 3], seed=0, dtype=torch.float64)
    >>> U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
    >>> fig = spy_side_by_side([U, U], ["left", "right"])
    >>> [ax.get_title() for ax in fig.axes]
    ['left', 'right']
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt

from ..bench.tables import cell, text_table
from ..systems import TriangularSystem
from .sparsity import spy

__all__ = ["SPEEDUP", "crossover_report", "groups", "method_colors", "plot_speedups", "speedup_table",
           "speedups", "spy_side_by_side"]

#: The axis label and table header of every speed-up in this module.
SPEEDUP = "speed-up over autograd (autograd time / method time; > 1 is faster)"

# A fixed colour per known method (tab10, then four dark tab20b tones), so the same method has
# the same colour in every figure. Autograd is always black.
_KNOWN = ["sequential", "recursive_doubling", "blelloch", "cyclic_reduction",
          "parallel_cyclic_reduction", "jacobi", "block_jacobi", "gauss_seidel", "newton",
          "associative_scan", "wavefront", "nested", "level_schedule", "doubling"]
_PALETTE = [f"C{i}" for i in range(10)] + ["#393b79", "#637939", "#8c6d31", "#843c39"]
_EXTRA = ["#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd", "#9c9ede", "#cedb9c", "#e7cb94"]
_ITERATIVE = {"jacobi", "block_jacobi", "gauss_seidel", "newton"}


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One distinct colour per method name (``"autograd"`` is black).

    Known trilib methods keep a fixed colour whatever else is plotted; unknown names get colours
    not used by any known method, in order. Raises ``ValueError`` for more than 22 distinct
    non-autograd names (the palette would repeat).

    Example:
        >>> colours = method_colors(["autograd", "sequential", "nested", "my_method"])
        >>> colours["autograd"], len(set(colours.values()))
        ('black', 4)
    """
    names = list(dict.fromkeys(methods))
    unknown = [m for m in names if m not in _KNOWN and m != "autograd"]
    if len(unknown) > len(_EXTRA):
        raise ValueError(f"methods: at most {len(_EXTRA)} names outside {_KNOWN} can get distinct "
                         f"colours, got {len(unknown)}: {unknown}")
    out = {m: _PALETTE[_KNOWN.index(m)] for m in names if m in _KNOWN}
    out.update(zip(unknown, _EXTRA))
    if "autograd" in names:
        out["autograd"] = "black"
    return out


def spy_side_by_side(systems: Sequence[TriangularSystem], titles: Sequence[str] | None = None,
                     sample: int = 0, figsize: tuple[float, float] | None = None):
    """The sparsity patterns of several systems in one row of spy plots (same size each).

    Args:
        systems: any :class:`~trilib.systems.TriangularSystem` (FNN, RNN or graph systems).
        titles: one title per system (default: the spy plot's own ``upper: k=..., nnz=...``).
        sample: which sample of the batch to draw (the pattern is the same for all).
        figsize: default ``(4 * len(systems), 4.2)``.

    Returns:
        The Matplotlib figure.
    """
    systems = list(systems)
    if not systems:
        raise ValueError("systems: need at least one system, got none")
    if titles is not None and len(titles) != len(systems):
        raise ValueError(f"titles: need one title per system ({len(systems)}), got {len(titles)}")
    fig, axes = plt.subplots(1, len(systems), figsize=figsize or (4 * len(systems), 4.2),
                             squeeze=False)
    for i, (ax, system) in enumerate(zip(axes[0], systems)):
        spy(system, sample, ax=ax, title=None if titles is None else titles[i], color=f"C{i}")
    fig.tight_layout()
    return fig


# -- benchmark results -----------------------------------------------------------------------
def _rows(result_or_rows, metric: str) -> list[dict]:
    """The measured rows of ``metric``; a solve is compared with autograd's backward (autograd
    has no separate solve), so for ``"solve"`` autograd's backward rows come along."""
    rows = result_or_rows["rows"] if isinstance(result_or_rows, dict) else list(result_or_rows)
    base = (metric, "autograd") if metric != "solve" else ("backward", "autograd")
    return [r for r in rows if not math.isnan(r["median_s"])
            and (r["metric"] == metric or (r["metric"], r["method"]) == base)]


#: The sizes held fixed in each sweep: a sweep run at several of them has one series per value.
_FIXED = {"k": ("n", "batch"), "n": ("k", "batch"), "batch": ("k", "n"), "tau": ("n", "batch")}


def groups(result_or_rows, suite: str = "mlp", sweep: str = "k", metric: str = "backward"
           ) -> list[dict[str, int]]:
    """The values of the other sizes at which a sweep was run, one dict per series (e.g.
    ``[{"n": 8, "batch": 4}, {"n": 16, "batch": 4}]`` for a depth sweep at two widths).

    Example:
        >>> rows = [dict(suite="mlp", sweep="k", metric="backward", k=k, n=n, batch=4,
        ...              method="autograd", median_s=1.0) for k in (4, 64) for n in (8, 16)]
        >>> groups(rows)
        [{'n': 8, 'batch': 4}, {'n': 16, 'batch': 4}]
    """
    keys = _FIXED[sweep]
    combos = {tuple(r.get(key) for key in keys) for r in _rows(result_or_rows, metric)
              if r["suite"] == suite and r.get("sweep") == sweep}
    order = lambda combo: tuple((v is None, v or 0) for v in combo)  # noqa: E731 -- a size may be absent
    return [dict(zip(keys, combo)) for combo in sorted(combos, key=order)]


def _series(rows: Sequence[dict], suite: str, sweep: str, fixed: dict | None) -> list[dict]:
    """The rows of one series; an error when the sweep was run at several fixed sizes and
    ``fixed`` does not pick one (mixing them would divide times of different models)."""
    series = [r for r in rows if r["suite"] == suite and r.get("sweep") == sweep
              and all(r.get(key) == value for key, value in (fixed or {}).items())]
    found = groups(series, suite, sweep, metric=series[0]["metric"]) if series else []
    if len(found) > 1:
        raise ValueError(f"the {suite} {sweep} sweep was run at several fixed sizes {found}; pick one, "
                         f"e.g. fixed={found[0]} (trilib.viz.compare.groups lists them)")
    return series


def speedups(result_or_rows, suite: str = "mlp", sweep: str = "k", metric: str = "backward",
             fixed: dict | None = None) -> dict[str, dict[int, float]]:
    """``{method: {size: autograd time / method time}}`` for one sweep, from the medians.

    Args:
        result_or_rows: a result dict from ``python -m trilib.bench`` or its list of rows.
        suite, sweep: ``("mlp", "k")``, ``("mlp", "n")``, ``("mlp", "batch")`` or ``("rnn", "tau")``.
        metric: ``"backward"``, ``"solve"`` or ``"step"``.
        fixed: the other sizes of the series, e.g. ``{"n": 8}``, needed when the sweep was run at
            several (:func:`groups`); ``ValueError`` otherwise.

    Example:
        >>> rows = [dict(suite="mlp", sweep="k", metric="backward", k=4, method=m, median_s=t)
        ...         for m, t in [("autograd", 3.0), ("blelloch", 6.0)]]
        >>> speedups(rows)
        {'autograd': {4: 1.0}, 'blelloch': {4: 0.5}}
    """
    return _speedups(_rows(result_or_rows, metric), suite, sweep, fixed)


def _speedups(rows: Sequence[dict], suite: str, sweep: str, fixed: dict | None = None
              ) -> dict[str, dict[int, float]]:
    key = sweep
    series = _series(rows, suite, sweep, fixed)
    base = {r[key]: r["median_s"] for r in series if r["method"] == "autograd"}
    out: dict[str, dict[int, float]] = {}
    for r in series:
        if r[key] in base:
            out.setdefault(r["method"], {})[r[key]] = base[r[key]] / r["median_s"]
    return out


_SWEEPS = [("mlp", "k"), ("mlp", "n"), ("mlp", "batch"), ("rnn", "tau")]


def plot_speedups(result: dict, metric: str = "backward", methods: Sequence[str] | None = None,
                  mark_crossover: bool = True):
    """Speed-up over autograd against each swept size: one panel per series with > 1 size (a
    sweep run at several fixed sizes, e.g. two widths, has a panel for each).

    Like :func:`trilib.bench.plot_results`, but every method has its own colour
    (:func:`method_colors`), iterative methods are dashed, and both the MLP's and the RNN's
    crossover (:func:`trilib.bench.crossover`) are marked.

    Args:
        result: a result dict from ``python -m trilib.bench`` (:func:`trilib.bench.load_results`).
        metric: ``"backward"``, ``"solve"`` or ``"step"``.
        methods: the methods to draw (default: all measured); autograd is the line at 1.
        mark_crossover: draw the crossover as a red dashed vertical line where there is one.

    Returns:
        The Matplotlib figure.
    """
    from ..bench import crossover

    rows = _rows(result, metric)
    panels = [(s, w, g) for s, w in _SWEEPS for g in groups(rows, s, w, metric)
              if len(speedups(rows, s, w, metric, fixed=g).get("autograd", {})) > 1]
    ncols = min(max(len(panels), 1), 2)
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    measured = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "autograd"))
    shown = [m for m in (methods or measured) if m in measured]
    colours = method_colors(shown)
    handles, extras = {}, {}
    for ax, (suite, sweep, fixed) in zip(axes.flat, panels):
        sp = _speedups(rows, suite, sweep, fixed)
        for m in shown:
            if m in sp:
                pts = sorted(sp[m].items())
                (handles[m],) = ax.plot(*zip(*pts), color=colours[m], marker="o", ms=3.5,
                                        ls="--" if m in _ITERATIVE else "-", lw=1.3, label=m)
        extras["autograd (= 1)"] = ax.axhline(1.0, color="black", lw=1, ls=":")
        if mark_crossover and metric == "backward" and sweep in ("k", "tau"):
            c = crossover(result["rows"], suite, sweep, **fixed)
            if c["crossover"] is not None:
                extras["crossover"] = ax.axvline(c["crossover"], color="red", lw=0.9, ls="--")
        ax.set_title(f"{suite.upper()}, " + ", ".join(f"{a}={b}" for a, b in fixed.items()), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("τ" if sweep == "tau" else sweep)
        ax.set_ylabel(f"{metric} speed-up over autograd\n(autograd time / method time; > 1 faster)",
                      fontsize=8)
        ax.grid(alpha=0.25, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = {m: handles[m] for m in shown if m in handles} | extras
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    m = result.get("machine", {})
    if m:
        fig.suptitle(f"{m.get('name')} ({m.get('device')}, {m.get('threads')} thread(s), "
                     f"torch {m.get('torch')})", fontsize=9)
    fig.tight_layout()
    return fig


def speedup_table(result_or_rows, suite: str = "mlp", sweep: str = "k", metric: str = "backward",
                  methods: Sequence[str] | None = None, digits: int = 2, fixed: dict | None = None) -> str:
    """A plain-text table of speed-ups over autograd: one line per method (full names), one
    column per size of the sweep, and a first line with autograd's own time in milliseconds.
    ``fixed`` picks one series of a sweep run at several fixed sizes (see :func:`speedups`); the
    title then names it.

    Example:
        >>> rows = [dict(suite="mlp", sweep="k", metric="backward", k=k, method=m, median_s=t)
        ...         for k, m, t in [(4, "autograd", 2.0), (4, "cyclic_reduction", 4.0),
        ...                         (64, "autograd", 6.0), (64, "cyclic_reduction", 3.0)]]
        >>> print(speedup_table(rows))
        backward speed-up over autograd (autograd time / method time; > 1 is faster), by k
        method                      k=4       k=64
        autograd time (ms)     2000.000   6000.000
        cyclic_reduction           0.50       2.00
    """
    rows = _series(_rows(result_or_rows, metric), suite, sweep, fixed)
    sp = _speedups(rows, suite, sweep)
    sizes = sorted({s for per in sp.values() for s in per})
    names = [m for m in (methods or list(sp)) if m in sp and m != "autograd"]
    label = "τ" if sweep == "tau" else sweep
    where = f" ({', '.join(f'{a}={b}' for a, b in fixed.items())})" if fixed else ""
    base = {r[sweep]: r["median_s"] for r in rows if r["suite"] == suite and r.get("sweep") == sweep
            and r["method"] == "autograd"}
    body = [["autograd time (ms)", *(cell(base[s] * 1e3 if s in base else None, ".3f") for s in sizes)]]
    body += [[m, *(cell(sp[m].get(s), f".{digits}f") for s in sizes)] for m in names]
    return text_table(["method", *(f"{label}={s}" for s in sizes)], body,
                      title=f"{metric} {SPEEDUP}, by {label}{where}", min_width=11)


def crossover_report(result: dict, key: str, digits: int = 2) -> str:
    """The crossover ``result["crossover"][key]`` in words and speed-ups (> 1 is faster).

    Says which direct method was fastest at each size and its speed-up over the reference
    (autograd or sequential), where the crossover is, and whether it sits at the largest size
    measured (then it rests on that one point and says nothing beyond the sweep).

    Example:
        >>> c = {"size": "k", "against": "autograd", "crossover": 64, "largest": 64,
        ...      "best_ratio": {"4": ["blelloch", 2.0], "64": ["blelloch", 0.5]}}
        >>> print(crossover_report({"crossover": {"mlp_k": c}}, "mlp_k"))
        mlp_k: best direct method's speed-up over autograd, by k:
          k=4: blelloch 0.50
          k=64: blelloch 2.00
          crossover: k = 64, the largest k measured:
          it rests on that one point; beyond the sweep nothing is known
    """
    c = result["crossover"][key]
    size = "τ" if c["size"] == "tau" else c["size"]
    lines = [f"{key}: best direct method's speed-up over {c['against']}, by {size}:"]
    for s, (m, ratio) in sorted(c["best_ratio"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"  {size}={int(s)}: {m} {1 / ratio:.{digits}f}")
    if c["crossover"] is None:
        lines.append(f"  crossover: none up to the largest {size} measured ({c['largest']}): "
                     f"the best direct method is still slower there")
    elif c["crossover"] == c["largest"]:
        lines.append(f"  crossover: {size} = {c['crossover']}, the largest {size} measured:")
        lines.append("  it rests on that one point; beyond the sweep nothing is known")
    else:
        lines.append(f"  crossover: {size} = {c['crossover']}; faster at every larger {size} measured "
                     f"(up to {c['largest']})")
    return "\n".join(lines)
