"""Backward-propagation benchmark: torch autograd against every trilib method.

``python -m trilib.bench`` times, for deep narrow MLPs (sweeps over depth k, width n and
batch) and single-layer RNNs (sweep over τ), the **backward** pass of

* ``autograd``: ``torch.autograd.grad`` through ``nn.Sequential`` / ``nn.RNN`` (cuDNN on GPU),
  on a forward graph recorded once (``retain_graph=True``);
* every method that ``trilib.methods(system)`` reports at run time: a solve of the backward
  system plus the parameter gradients, on a system built once;
* ``associative_scan``: PyTorch's own ``torch._higher_order_ops.associative_scan``
  (``combine_mode="generic"``) over the affine maps ``(B_l, r_l)`` (THEORY §5), where the
  system is block bi-diagonal with equal widths;

and the whole training **step** (forward + backward, from ``x`` to every ``p.grad``) of
autograd against ``trilib.backward(..., method="sequential")``. Measurements are interleaved
(one call of each method per round, so a noisy shared machine slows all of them alike), come
after a warm-up, and are summarised by medians; ratios are against autograd measured in the
same run. On CUDA the timer is a pair of CUDA events after ``torch.cuda.synchronize()``.

Example:
    >>> from trilib import bench
    >>> rows = bench.run_mlp([4], [4], [2], repeats=1, warmup=0, methods=["sequential"])
    >>> [r["method"] for r in rows if r["metric"] == "backward"]
    ['autograd', 'sequential']
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from . import nets
from .problems import backward_problem
from .solvers import methods as registered_methods
from .solvers import solve
from .systems import BlockBidiagonalSystem

__all__ = [
    "AUTOGRAD", "SCAN", "associative_scan_solve", "crossover", "device_name", "main",
    "measure", "median_times", "plot_results", "recorded_figure", "run_mlp", "run_rnn", "save_results", "load_results",
]

AUTOGRAD = "autograd"
SCAN = "associative_scan"


# -- the baseline from PyTorch itself ------------------------------------------------------
def associative_scan_solve(system: BlockBidiagonalSystem) -> list[torch.Tensor]:
    """Solve an upper block bi-diagonal system with ``torch._higher_order_ops.associative_scan``.

    Row ``l`` is the affine map ``v_l = B_l v_{l+1} + r_l``; composing two rows,
    ``(A, c) ∘ (A', c') = (A A', c + A c')``, is associative (THEORY §5), so a reverse
    inclusive scan of the pairs ``(B_l, r_l)`` (with ``B_k = 0``) yields every ``v_l``.

    Args:
        system: an upper :class:`~trilib.systems.BlockBidiagonalSystem` whose blocks all have
            the same width n (a deep narrow MLP).

    Returns:
        The ``k`` blocks ``v_l``, each ``(batch, n)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v = associative_scan_solve(U)
        >>> all(torch.allclose(a, b) for a, b in zip(v, trilib.solve(U)))
        True
    """
    from torch._higher_order_ops import associative_scan

    if not isinstance(system, BlockBidiagonalSystem) or not system.upper:
        raise TypeError(f"system must be an upper BlockBidiagonalSystem, got {system!r}")
    if len(set(system.block_sizes)) != 1:
        raise ValueError(f"associative_scan needs equal block widths, got {system.block_sizes}")
    n, k = system.block_sizes[0], system.k
    last = torch.zeros(system.batch_size, n, n, dtype=system.dtype, device=system.device)
    a = torch.stack([*system.blocks(), last])           # (k, batch, n, n); B_k = 0
    c = torch.stack(system.rhs)                         # (k, batch, n)

    def combine(later, earlier):
        # In a reverse scan the first argument is the row further down (larger l).
        a2, c2 = later
        a1, c1 = earlier
        return a1 @ a2, c1 + (a1 @ c2.unsqueeze(-1)).squeeze(-1)

    _, v = associative_scan(combine, (a, c), dim=0, reverse=True, combine_mode="generic")
    return list(v.unbind(0)) if k else []


# -- timing --------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call: CUDA events on a GPU, ``perf_counter`` elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
            repeats: int = 7, warmup: int = 2, hot: bool = True) -> dict[str, list[float]]:
    """Interleaved timings: ``warmup`` untimed rounds, then ``repeats`` rounds that call every
    function once each (in a rotating order), so machine noise hits all of them alike. With
    ``hot``, each timed call comes right after an untimed call of the same function, so no
    method pays for the caches and freed memory that the previous (different) one left behind.

    Returns:
        ``{name: [seconds per call, ...]}`` with ``repeats`` entries each.

    Example:
        >>> times = measure({"a": lambda: sum(range(100))}, repeats=3, warmup=1)
        >>> len(times["a"])
        3
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, "
                         f"warmup={warmup}")
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if hot:
                fns[name]()
            times[name].append(_time_once(fns[name], device))
    return times


def median_times(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
                 repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved by :func:`measure`.

    Example:
        >>> t = median_times({"a": lambda: sum(range(100)), "b": lambda: sum(range(1000))}, repeats=3)
        >>> sorted(t)
        ['a', 'b']
    """
    return {name: statistics.median(t) for name, t in measure(fns, device, repeats, warmup).items()}


def device_name(device: torch.device | str) -> str:
    """A human name for the machine: the GPU's name, or the CPU model (``lscpu``'s)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- cases ---------------------------------------------------------------------------------
def _rel_error(grads: dict[str, torch.Tensor], ref: Sequence[torch.Tensor], names) -> float:
    num = math.sqrt(sum(float((grads[n] - r).double().pow(2).sum()) for n, r in zip(names, ref)))
    den = math.sqrt(sum(float(r.double().pow(2).sum()) for r in ref))
    return num / den if den > 0 else num


def _case(model: nn.Module, x: torch.Tensor, loss_fn: Callable, methods: Sequence[str] | None,
          repeats: int, warmup: int, params: dict, step: bool) -> list[dict]:
    """Time autograd and the trilib methods on one model; rows for the result table."""
    device = x.device
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plist = [p for _, p in model.named_parameters() if p.requires_grad]
    out = loss_fn(model(x))
    ref = torch.autograd.grad(out, plist, retain_graph=True)
    problem = backward_problem(model, x, loss_fn)
    available = list(registered_methods(problem.system))
    if methods is None:
        scan_applies = (isinstance(problem.system, BlockBidiagonalSystem) and problem.system.upper
                        and len(set(problem.system.block_sizes)) == 1)
        chosen = available + ([SCAN] if scan_applies else [])
    else:
        chosen = [m for m in methods if m != AUTOGRAD]
    fns: dict[str, Callable] = {AUTOGRAD: lambda: torch.autograd.grad(out, plist, retain_graph=True)}
    notes: dict[str, str] = {}
    errors: dict[str, float] = {}
    steps: dict[str, int] = {AUTOGRAD: problem.system.k * max(params["tau"], 1)}
    for m in chosen:
        if m == SCAN:
            fn = (lambda: problem.parameter_gradients(associative_scan_solve(problem.system)))
        elif m in available:
            fn = (lambda m=m: problem.parameter_gradients(solve(problem.system, method=m)))
        else:
            notes[m] = f"not available for {type(problem.system).__name__}"
            continue
        try:                                   # skip what cannot run here, say why
            errors[m] = _rel_error(fn(), ref, names)
            if m != SCAN:
                steps[m] = solve(problem.system, method=m, return_trace=True)[1].steps
        except Exception as exc:               # noqa: BLE001 -- reported in the table
            notes[m] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        fns[m] = fn
    times = measure(fns, device, repeats, warmup)
    rows = []
    base = statistics.median(times[AUTOGRAD])
    for m, t in times.items():
        med = statistics.median(t)
        rows.append(dict(params, metric="backward", method=m, median_s=med, min_s=min(t),
                         ratio=med / base, speedup=base / med, rel_error=errors.get(m, 0.0),
                         steps=steps.get(m, -1), note=""))
    for m, note in notes.items():
        rows.append(dict(params, metric="backward", method=m, median_s=float("nan"),
                         min_s=float("nan"), ratio=float("nan"), speedup=float("nan"),
                         rel_error=float("nan"), steps=-1, note=note))
    if step:
        from .training import backward as trilib_backward

        def autograd_step():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x)).backward()

        def trilib_step():
            model.zero_grad(set_to_none=True)
            trilib_backward(model, x, loss_fn, method="sequential")

        st = measure({AUTOGRAD: autograd_step, "sequential": trilib_step}, device, repeats, warmup)
        sbase = statistics.median(st[AUTOGRAD])
        for m, t in st.items():
            med = statistics.median(t)
            rows.append(dict(params, metric="step", method=m, median_s=med, min_s=min(t),
                             ratio=med / sbase, speedup=sbase / med, rel_error=0.0,
                             steps=-1, note=""))
        model.zero_grad(set_to_none=True)
    return rows


def _loss(out: torch.Tensor) -> torch.Tensor:
    return out.square().mean()


def run_mlp(ks: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "k", step: bool = True,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of deep narrow tanh MLPs ``[n] * (k + 1)`` for every ``(k, n, batch)`` given.

    Args:
        ks, ns, batches: the sizes; every combination is run.
        methods: trilib method names (and/or ``"associative_scan"``); ``None`` = every method
            ``trilib.methods(system)`` reports, plus ``"associative_scan"``.
        device, dtype: where and in what precision.
        repeats, warmup: timed and untimed rounds (see :func:`measure`).
        sweep: a label stored in each row (which size this series varies).
        step: also time the whole training step of autograd and trilib sequential.
        progress: called with a line of text before each case.

    Returns:
        Rows (dicts) with ``suite, sweep, k, n, batch, metric, method, median_s, min_s, ratio,
        speedup, rel_error, note``; ``ratio`` is the method's median over autograd's, both
        measured in this run.
    """
    device = torch.device(device)
    rows = []
    for k in ks:
        for n in ns:
            for b in batches:
                if progress:
                    progress(f"mlp k={k} n={n} batch={b}")
                model = nets.mlp([n] * (k + 1), activation="tanh", seed=0, dtype=dtype, device=device)
                x = torch.randn(b, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
                params = dict(suite="mlp", sweep=sweep, k=k, n=n, batch=b, tau=0)
                rows += _case(model, x, _loss, methods, repeats, warmup, params, step)
    return rows


def rnn_supported() -> bool:
    """Whether trilib can build the backward system of an ``nn.RNN`` (RNN support landed)."""
    try:
        backward_problem(nn.RNN(2, 2, batch_first=True), torch.randn(1, 2, 2),
                         lambda out: out[0].sum() if isinstance(out, tuple) else out.sum())
        return True
    except (TypeError, NotImplementedError):
        return False


def _rnn_loss(out) -> torch.Tensor:
    out = out[0] if isinstance(out, tuple) else out
    return out.square().mean()


def run_rnn(taus: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "tau", step: bool = False,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of a single-layer tanh ``nn.RNN(n, n, batch_first=True)`` over τ time steps.

    Same arguments and rows as :func:`run_mlp` (``tau`` set, ``k = 1``). Returns no rows when
    trilib cannot build RNN systems (see :func:`rnn_supported`).
    """
    device = torch.device(device)
    if not rnn_supported():
        return []
    rows = []
    for tau in taus:
        for n in ns:
            for b in batches:
                if progress:
                    progress(f"rnn tau={tau} n={n} batch={b}")
                torch.manual_seed(0)
                model = nn.RNN(n, n, batch_first=True).to(device=device, dtype=dtype)
                x = torch.randn(b, tau, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
                params = dict(suite="rnn", sweep=sweep, k=1, n=n, batch=b, tau=tau)
                rows += _case(model, x, _rnn_loss, methods, repeats, warmup, params, step)
    return rows


# -- analysis ------------------------------------------------------------------------------
#: The direct parallel methods of THEORY §5 (and the nested RNN reduction): O(log k) steps.
#: The crossover looks at these only; iterative methods count sweeps, not steps, in their
#: traces, and Gauss-Seidel in backward order is substitution itself.
DIRECT = ("recursive_doubling", "blelloch", "cyclic_reduction", "parallel_cyclic_reduction",
          "nested", "doubling", SCAN)


def crossover(rows: Sequence[dict], suite: str = "mlp", size: str = "k",
              against: str = AUTOGRAD) -> dict:
    """The depth (or τ) from which the best parallel method stops losing to ``against``.

    Looks at the ``backward`` rows of the sweep over ``size``; "parallel" means the
    direct methods in :data:`DIRECT` that were measured.
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
              and r["metric"] == "backward" and not math.isnan(r["median_s"])]
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
    """A plain-text table: one line per case, one column per method, ratio to autograd."""
    rows = [r for r in rows if r["metric"] == metric]
    meths = list(dict.fromkeys(r["method"] for r in rows))
    keys = list(dict.fromkeys((r["suite"], r["k"], r["n"], r["batch"], r["tau"]) for r in rows))
    # a case shared by two sweeps is shown once, with the first sweep's measurement
    head = f"{'case':<28}" + "".join(f"{m[:18]:>19}" for m in meths)
    lines = [f"{metric} time / autograd time (same run; < 1 is faster; autograd column in ms)", head]
    for key in keys:
        suite, k, n, b, tau = key
        label = f"{suite} k={k} n={n} b={b}" + (f" tau={tau}" if suite == "rnn" else "")
        cells = []
        for m in meths:
            r = next((r for r in rows if (r["suite"], r["k"], r["n"], r["batch"], r["tau"]) == key
                      and r["method"] == m), None)
            if r is None or math.isnan(r["median_s"]):
                cells.append(f"{'-':>19}")
            elif m == AUTOGRAD:
                cells.append(f"{r['median_s'] * 1e3:>16.3f} ms")
            else:
                cells.append(f"{r['ratio']:>19.2f}")
        lines.append(f"{label:<28}" + "".join(cells))
    return "\n".join(lines)


# -- files ---------------------------------------------------------------------------------
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


# -- command line --------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trilib.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="mlp,rnn", help="comma-separated: mlp, rnn")
    p.add_argument("--k", type=_ints, default=[4, 16, 64, 256], help="MLP depths of the k sweep")
    p.add_argument("--n", type=_ints, default=[8, 16, 64], help="MLP widths of the n sweep")
    p.add_argument("--batch", type=_ints, default=[1, 4, 32], help="batch sizes of the batch sweep")
    p.add_argument("--tau", type=_ints, default=[16, 64, 256], help="RNN sequence lengths")
    p.add_argument("--fixed-k", type=int, default=64, help="k held fixed in the n and batch sweeps")
    p.add_argument("--fixed-n", type=int, default=16, help="n held fixed in the k, batch, τ sweeps")
    p.add_argument("--fixed-batch", type=int, default=4, help="batch held fixed in the k, n, τ sweeps")
    p.add_argument("--methods", default=None,
                   help="comma-separated trilib methods and/or associative_scan (default: all "
                        "that trilib.methods(system) reports, plus associative_scan)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on CPU (0 = torch's default); 1 keeps timings "
                        "stable on a small shared machine")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON/CSV")
    p.add_argument("--figures", default="figures", help="folder for bench_<device>.png ('' = none)")
    p.add_argument("--tag", default="", help="suffix of the result file names (e.g. 'deep')")
    p.add_argument("--no-step", action="store_true", help="skip the forward+backward step timing")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; returns the result dict it wrote."""
    args = parser().parse_args(argv)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in ("mlp", "rnn")]
    if bad:
        raise SystemExit(f"--suite: unknown suite(s) {bad}; choose from mlp, rnn")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if methods:
        known = set(registered_methods()) | {SCAN, AUTOGRAD}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(sorted(known))}")
    dtype = getattr(torch, args.dtype)
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    common = dict(methods=methods, device=device, dtype=dtype, repeats=args.repeats,
                  warmup=args.warmup, progress=say)
    fk, fn, fb = args.fixed_k, args.fixed_n, args.fixed_batch
    rows: list[dict] = []
    notes = []
    if "mlp" in suites:
        rows += run_mlp(args.k, [fn], [fb], sweep="k", step=not args.no_step, **common)
        rows += run_mlp([fk], args.n, [fb], sweep="n", step=False, **common)
        rows += run_mlp([fk], [fn], args.batch, sweep="batch", step=False, **common)
    if "rnn" in suites:
        if rnn_supported():
            rows += run_rnn(args.tau, [fn], [fb], sweep="tau", **common)
        else:
            notes.append("rnn: trilib cannot build nn.RNN systems yet; suite skipped")
    name = device_name(device)
    stem = f"{device.type}-{_slug(name)}" + (f"-{_slug(args.tag)}" if args.tag else "")
    result = {
        "machine": {"device": device.type, "name": name, "stem": stem, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "config": {k: v for k, v in vars(args).items()},
        "methods": sorted(set(registered_methods())),
        "notes": notes,
        "crossover": {"mlp_k": crossover(rows, "mlp", "k"),
                      "mlp_k_vs_sequential": crossover(rows, "mlp", "k", against="sequential"),
                      "rnn_tau": crossover(rows, "rnn", "tau")},
        "rows": rows,
    }
    print(f"machine: {name} ({device.type}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.dtype}")
    print(table(rows, "backward"))
    if any(r["metric"] == "step" for r in rows):
        print()
        print(table(rows, "step"))
    for key, c in result["crossover"].items():
        if c["largest"] is None:
            continue
        where = (f"from {c['size']} = {c['crossover']}" if c["crossover"] is not None
                 else f"none up to {c['size']} = {c['largest']}")
        print(f"crossover ({key}, best parallel method vs {c['against']}): {where}")
    for note in notes:
        print(f"note: {note}")
    for r in rows:
        if r["note"]:
            print(f"skipped {r['method']} at {r['suite']} k={r['k']} n={r['n']} b={r['batch']} "
                  f"tau={r['tau']}: {r['note']}")
    jpath, cpath = save_results(result, args.out)
    print(f"wrote {jpath} and {cpath}")
    if args.figures:
        fpath = Path(args.figures) / (f"bench_{device.type}" + (f"_{_slug(args.tag)}" if args.tag else "")
                                      + ".png")
        plot_results(result, fpath)
        print(f"wrote {fpath}")
    return result


if __name__ == "__main__":
    main()
