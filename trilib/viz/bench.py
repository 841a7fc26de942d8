"""Benchmark pictures: speed-up over autograd against the sizes swept, from a result dict of
:mod:`trilib.bench` (a run, or one recorded in ``benchmarks/results``)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..bench.report import crossover, load_results
from ..bench.suites import AUTOGRAD

__all__ = ["plot_results", "recorded_figure"]


def _panels(rows: list[dict]) -> list[tuple[str, str, str, dict]]:
    """``(suite, sweep, x key, fixed sizes)`` of every panel: one per sweep and per combination of
    the sizes it holds fixed (a grid run over k and n gives one k panel per n)."""
    out = []
    for suite, sweep, xkey in [("mlp", "k", "k"), ("mlp", "n", "n"), ("mlp", "batch", "batch"),
                               ("rnn", "tau", "tau")]:
        series = [r for r in rows if r["suite"] == suite and r["sweep"] == sweep]
        others = [key for key in ("k", "n", "batch", "tau") if key != xkey]
        for fixed in dict.fromkeys(tuple(r[key] for key in others) for r in series):
            at = [r for r in series if tuple(r[key] for key in others) == fixed]
            if len({r[xkey] for r in at}) > 1:
                out.append((suite, sweep, xkey, dict(zip(others, fixed))))
    return out


def plot_results(result: dict, path: str | Path | None = None):
    """Speed-up over autograd's backward (log scale; above 1 is faster) against k, n and batch for
    the MLP and against τ for the RNN: one line per method, one panel per sweep (and per fixed
    size of a grid run); a row of panels for the solve alone (when measured: trilib's
    substitution and direct methods, PyTorch's and JAX's scans) above a row for the solve with
    the parameter gradients. Returns the matplotlib figure."""
    import matplotlib

    if path is not None and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["median_s"] == r["median_s"]]
    metrics = [m for m in ("solve", "backward") if any(r["metric"] == m for r in rows)]
    panels = _panels([r for r in rows if r["metric"] == metrics[-1]]) if metrics else []
    ncol, nrow = max(len(panels), 1), max(len(metrics), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.5 * nrow), squeeze=False)
    all_methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != AUTOGRAD))
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]   # 18 distinct colours
    colors = {m: palette[i % len(palette)] for i, m in enumerate(all_methods)}
    markers = {m: "os^vD"[i // len(palette) % 5] for i, m in enumerate(all_methods)}
    handles = {}
    for row_axes, metric in zip(axes, metrics):
        for ax, (suite, sweep, xkey, fixed) in zip(row_axes, panels):
            series = [r for r in rows if r["metric"] == metric and r["suite"] == suite
                      and r["sweep"] == sweep and all(r[key] == v for key, v in fixed.items())]
            if metric == "solve":      # the reference line: autograd's backward, speed-up 1
                series += [r for r in rows if r["metric"] == "backward" and r["method"] == AUTOGRAD
                           and r["suite"] == suite and r["sweep"] == sweep
                           and all(r[key] == v for key, v in fixed.items())]
            for m in dict.fromkeys(r["method"] for r in series):
                pts = sorted((r[xkey], r["speedup"]) for r in series if r["method"] == m)
                style = (dict(color="black", lw=2, marker="o") if m == AUTOGRAD
                         else dict(color=colors[m], marker=markers[m], ms=4,
                                   ls="--" if m.startswith("jax.") else "-"))
                (handles[m],) = ax.plot(*zip(*pts), label=m, **style)
            ax.axhline(1.0, color="gray", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("τ" if xkey == "tau" else xkey)
            what = "solve" if metric == "solve" else "solve + parameter grads"
            ax.set_ylabel(f"speed-up over autograd\n({what}; > 1 faster)", fontsize=8)
            shown = {key: v for key, v in fixed.items() if not (key == "tau" and suite == "mlp")
                     and not (key == "k" and suite == "rnn")}
            label = "MLP" if suite == "mlp" else "RNN (k=1)"
            ax.set_title(f"{label} {metric}, " + ", ".join(f"{a}={b}" for a, b in shown.items()),
                         fontsize=9)
            if xkey == "k" and metric == "backward":
                c = crossover(result["rows"], "mlp", "k", n=fixed["n"], batch=fixed["batch"])
                if c["crossover"] is not None:
                    handles["crossover"] = ax.axvline(c["crossover"], color="red", lw=0.8, ls="--")
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    m = result["machine"]
    jax = f", jax {m['jax']}" if m.get("jax") else ""
    threads = f", {m['threads']} thread{'s' if m.get('threads') != 1 else ''}" if "threads" in m else ""
    fig.suptitle(f"{m['name']} ({m['device']}{threads}), torch {m['torch']}{jax}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def recorded_figure(device: str = "cpu", results: str | Path = "benchmarks/results", tag: str | None = None):
    """The figure of the recorded results for ``device`` (``"cpu"`` or ``"cuda"``) and run
    ``tag`` (e.g. ``"deep"``; ``None`` for the default sizes), drawn from
    ``<results>/<device>-*[-tag].json`` without re-running anything (for ``make figures``).
    When several machines are recorded, the newest recording is drawn (its title names the
    machine).

    Raises:
        FileNotFoundError: no recorded result for that device and tag.
    """
    paths = sorted(p for p in Path(results).glob(f"{device}-*.json")
                   if (p.stem.endswith(f"-{tag}") if tag else "-deep" not in p.stem))
    if not paths:
        raise FileNotFoundError(f"no recorded {device} results{f' tagged {tag!r}' if tag else ''} "
                                f"in {results}; run python -m trilib.bench --device {device}")
    found = [load_results(p) for p in paths]       # the newest recording (several machines)
    return plot_results(max(found, key=lambda r: r["machine"].get("recorded", "")))
