"""Benchmark pictures: speed-up over autograd against the sizes swept, from a result dict of
:mod:`trilib.bench` (a run, or one recorded in ``benchmarks/results``)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..bench.report import crossover, load_results
from ..bench.suites import AUTOGRAD

__all__ = ["plot_results", "recorded_figure"]


def plot_results(result: dict, path: str | Path | None = None):
    """Speed-up over autograd (log scale) against k, n and batch for the MLP, and against τ for
    the RNN: one line per method, one panel per sweep. Returns the matplotlib figure."""
    import matplotlib

    if path is not None and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["metric"] == "backward"
            and r["median_s"] == r["median_s"]]
    panels = [(s, sw, x) for s, sw, x in [("mlp", "k", "k"), ("mlp", "n", "n"),
                                          ("mlp", "batch", "batch"), ("rnn", "tau", "tau")]
              if len({r[x] for r in rows if r["suite"] == s and r["sweep"] == sw}) > 1]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.6),
                             squeeze=False)
    all_methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != AUTOGRAD))
    colors = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}
    markers = {m: "os^vD"[i // 10 % 5] for i, m in enumerate(all_methods)}
    handles = {}
    for ax, (suite, sweep, xkey) in zip(axes[0], panels):
        series = [r for r in rows if r["suite"] == suite and r["sweep"] == sweep]
        fixed = {key: series[0][key] for key in ("k", "n", "batch") if key != xkey}
        for m in dict.fromkeys(r["method"] for r in series):
            pts = sorted((r[xkey], r["speedup"]) for r in series if r["method"] == m)
            style = (dict(color="black", lw=2, marker="o") if m == AUTOGRAD
                     else dict(color=colors[m], marker=markers[m], ms=4))
            (handles[m],) = ax.plot(*zip(*pts), label=m, **style)
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("τ" if xkey == "tau" else xkey)
        ax.set_ylabel("speed-up over autograd (backward)")
        if suite == "mlp":
            ax.set_title("MLP, " + ", ".join(f"{a}={b}" for a, b in fixed.items()), fontsize=9)
        else:
            ax.set_title(f"RNN (k=1), n={fixed['n']}, batch={fixed['batch']}", fontsize=9)
        if xkey == "k":
            c = crossover(result["rows"], "mlp", "k")
            if c["crossover"] is not None:
                handles["crossover"] = ax.axvline(c["crossover"], color="red", lw=0.8, ls="--")
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{result['machine']['name']} ({result['machine']['device']}, "
                 f"torch {result['machine']['torch']})", fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def recorded_figure(device: str = "cpu", results: str | Path = "benchmarks/results", tag: str | None = None):
    """The figure of the recorded results for ``device`` (``"cpu"`` or ``"cuda"``) and run
    ``tag`` (e.g. ``"deep"``; ``None`` for the default sizes), drawn from
    ``<results>/<device>-*[-tag].json`` without re-running anything (for ``make figures``).

    Raises:
        FileNotFoundError: no recorded result for that device and tag.
    """
    paths = sorted(p for p in Path(results).glob(f"{device}-*.json")
                   if (p.stem.endswith(f"-{tag}") if tag else "-deep" not in p.stem))
    if not paths:
        raise FileNotFoundError(f"no recorded {device} results{f' tagged {tag!r}' if tag else ''} "
                                f"in {results}; run python -m trilib.bench --device {device}")
    return plot_results(load_results(paths[0]))
