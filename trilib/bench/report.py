"""What a benchmark run leaves behind: the crossover analysis, a text table, and the JSON/CSV
files of ``benchmarks/results``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..solvers import methods as registered_methods
from .peers import JAX_SCAN, JAX_SEQUENTIAL
from .suites import AUTOGRAD, CUDA_GRAPH, SCAN
from .tables import cell, text_table

__all__ = ["DIRECT", "crossover", "crossovers", "table", "summary", "save_results", "load_results"]


#: The direct parallel methods (the registry's ``"direct"`` family: O(log) steps) and PyTorch's
#: associative scan. The crossover looks at these only; iterative methods count sweeps, not
#: steps, in their traces, and Gauss-Seidel in backward order is substitution itself.
DIRECT = (*registered_methods(family="direct"), SCAN)


def crossover(rows: Sequence[dict], suite: str = "mlp", size: str = "k",
              against: str = AUTOGRAD, **fixed) -> dict:
    """The depth (or τ) from which the best parallel method stops losing to ``against``.

    Looks at the ``backward`` rows of the sweep over ``size`` (only those with the sizes in
    ``fixed``, e.g. ``n=8``: a sweep run at several widths has one crossover per width);
    "parallel" means the direct methods in :data:`DIRECT` that were measured.
    Returns ``{"size": ..., "crossover": value or None, "largest": the largest size measured,
    "best_ratio": {size: (method, ratio)}}``; ``crossover`` is the
    smallest size from which the best parallel method is at most as slow as ``against`` at
    every larger measured size, or ``None`` (it never stops losing within the sweep).

    Example:
        >>> pts = [(4, "autograd", 1), (4, "blelloch", 3), (64, "autograd", 2), (64, "blelloch", 1)]
        >>> rows = [dict(suite="mlp", sweep="k", metric="backward", k=k, method=m, median_s=t)
        ...         for k, m, t in pts]
        >>> crossover(rows)["crossover"]
        64
    """
    series = [r for r in rows if r["suite"] == suite and r.get("sweep") == size
              and r["metric"] == "backward" and not math.isnan(r["median_s"])
              and all(r[key] == value for key, value in fixed.items())]
    sizes = sorted({r[size] for r in series})
    best: dict[int, tuple[str, float]] = {}
    for s in sizes:
        at = [r for r in series if r[size] == s]
        base = [r["median_s"] for r in at if r["method"] == against]
        par = [(r["median_s"], r["method"]) for r in at if r["method"] in DIRECT]
        if base and par:
            t, m = min(par)
            best[s] = (m, t / base[0])
    cross = None
    for s in reversed(sorted(best)):
        if best[s][1] <= 1.0:
            cross = s
        else:
            break
    return {"size": size, "against": against, "crossover": cross,
            "largest": max(sizes) if sizes else None, "best_ratio": best}


def table(rows: Sequence[dict], metric: str = "backward") -> str:
    """A plain-text table: one line per case, one column per method, ratio to autograd (a case
    shared by two sweeps is shown once, with the first sweep's measurement)."""
    rows = [r for r in rows if r["metric"] == metric]
    meths = list(dict.fromkeys(r["method"] for r in rows))
    at = {}
    for r in rows:
        at.setdefault((_case_label(r), r["method"]), r)
    body = []
    for label in dict.fromkeys(_case_label(r) for r in rows):
        cells = [label]
        for m in meths:
            r = at.get((label, m))
            if r is None or math.isnan(r["median_s"]):
                cells.append(cell(None))
            elif m == AUTOGRAD:
                cells.append(cell(r["median_s"] * 1e3, ".3f", suffix=" ms"))
            else:
                cells.append(cell(r["ratio"]))
        body.append(cells)
    return text_table(["case", *meths], body,
                      title=f"{metric} time / autograd time (same run; < 1 is faster; autograd column in ms)")


def crossovers(rows: Sequence[dict]) -> dict[str, dict]:
    """Every crossover of a run: the MLP depth sweep against autograd and against sequential,
    the RNN τ sweep against autograd; one per width and batch when several were swept.

    Example:
        >>> list(crossovers([]))
        ['mlp_k', 'mlp_k_vs_sequential', 'rnn_tau']
    """
    out = {}
    for suite, size, against, name in (("mlp", "k", AUTOGRAD, "mlp_k"),
                                       ("mlp", "k", "sequential", "mlp_k_vs_sequential"),
                                       ("rnn", "tau", AUTOGRAD, "rnn_tau")):
        combos = sorted({(r["n"], r["batch"]) for r in rows
                         if r["suite"] == suite and r.get("sweep") == size})
        if len(combos) <= 1:
            out[name] = crossover(rows, suite, size, against)
            continue
        for n, batch in combos:
            out[f"{name} n={n} b={batch}"] = crossover(rows, suite, size, against, n=n, batch=batch)
    return out


def _faster(speedup: float) -> str:
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def _case_label(r: dict) -> str:
    tau = f" tau={r['tau']}" if r["suite"] == "rnn" else ""
    return f"{r['suite']} k={r['k']} n={r['n']} b={r['batch']}{tau}"


def summary(rows: Sequence[dict]) -> list[str]:
    """One line per case that has direct-method solves (a CUDA graph's replay counts as one): the
    best direct solve's speed-up over autograd's backward (alone and with the parameter
    gradients), its time against JAX's scans when they were measured, and the training steps
    against autograd's.

    Example:
        >>> rows = [dict(suite="mlp", k=8, n=2, batch=1, tau=0, metric=m, method=x, median_s=t, note="")
        ...         for m, x, t in [("backward", "autograd", 4.0), ("solve", "blelloch", 0.5),
        ...                         ("backward", "blelloch", 1.0)]]
        >>> line = summary(rows)[0]
        >>> line.startswith("mlp k=8 n=2 b=1: best direct solve blelloch 8.0x faster than autograd")
        True
        >>> line.endswith("(with parameter gradients 4.0x faster)")
        True
    """
    ok = [r for r in rows if r["note"] == "" and not math.isnan(r["median_s"])]
    lines = []
    for key in dict.fromkeys((r["suite"], r["k"], r["n"], r["batch"], r["tau"]) for r in ok):
        at = {(r["metric"], r["method"]): r["median_s"] for r in ok
              if (r["suite"], r["k"], r["n"], r["batch"], r["tau"]) == key}
        base = at.get(("backward", AUTOGRAD))
        direct = {m: t for (metric, m), t in at.items() if metric == "solve" and m != SCAN
                  and m.removesuffix(CUDA_GRAPH) in DIRECT}
        if base is None or not direct:
            continue
        best = min(direct, key=direct.get)
        line = f"{_case_label(dict(zip(('suite', 'k', 'n', 'batch', 'tau'), key)))}: best direct solve " \
               f"{best} {_faster(base / direct[best])} than autograd"
        if ("backward", best) in at:
            line += f" (with parameter gradients {_faster(base / at[('backward', best)])})"
        for peer in (JAX_SCAN, JAX_SEQUENTIAL):
            if ("solve", peer) in at:
                line += f"; {direct[best] / at[('solve', peer)]:.2f}x the time of {peer}"
        step = {m: t for (metric, m), t in at.items() if metric == "step"}
        if AUTOGRAD in step:
            line += "; step / autograd step: " + ", ".join(
                f"{m} {t / step[AUTOGRAD]:.2f}" for m, t in step.items() if m != AUTOGRAD)
        lines.append(line)
    return lines


def save_results(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``result`` as ``<out_dir>/<stem>.json`` and its rows as ``<stem>.csv``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["machine"]["stem"]
    jpath, cpath = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    jpath.write_text(json.dumps(result, indent=1, default=str) + "\n")
    fields = ["suite", "sweep", "k", "n", "batch", "tau", "metric", "method", "median_s",
              "min_s", "ratio", "speedup", "rel_error", "steps", "note"]
    with cpath.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(result["rows"])
    return jpath, cpath


def load_results(path: str | Path) -> dict:
    """Read a result JSON written by :func:`save_results`."""
    return json.loads(Path(path).read_text())
