"""GRU and LSTM benchmark: trilib's forward and backward passes against ``nn.GRU``/``nn.LSTM``
(docs/theory.md §7), measured side by side in one run.

For each module (one layer, hidden size n, sequence length τ, a small batch) two metrics:

* ``forward``: the module's own forward (``"torch"``: ``nn.GRU``/``nn.LSTM``, a compiled loop;
  the reference) against
  ``trilib.forward`` with ``"sequential"`` (the recurrence, a Python loop), ``"newton"`` (full
  Jacobians, recursive-doubling scans) and ``"newton_diagonal"`` (quasi-Newton, element-wise
  scans);
* ``forward+backward``: ``torch.autograd.grad`` of the loss through the module (the reference)
  against trilib's gradients with the backward grid solved by ``"sequential"`` (BPTT) or
  ``"nested"``, after the recurrence, and ``"newton+nested"`` (Newton forward, nested backward).

Methods that form dense ``m x m`` block products are skipped, with a note, when one call would
exceed ``max_gflop`` (their work grows like ``τ log τ · m³``). Rows have the fields of the other
suites (``suite`` is ``"gru"`` or ``"lstm"``, ``ratio`` is the median time over the reference's).

Example:
    >>> from trilib.bench.gated import run_gated
    >>> rows = run_gated(taus=[8], ns=[2], kinds=["GRU"], repeats=1, warmup=0)
    >>> sorted({r["method"] for r in rows if r["metric"] == "forward"})
    ['newton', 'newton_diagonal', 'sequential', 'torch']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from itertools import product

import torch
from torch import nn

from .. import gated
from .._numerics import ceil_log2, rel_error
from ..api import forward, gradients
from ..solvers import solve
from .tables import cell, text_table
from .timing import measure

__all__ = ["run_gated", "gated_table"]

AUTOGRAD = "autograd"
TORCH = "torch"


def _loss(out) -> torch.Tensor:
    output, hidden = out
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    return output.square().mean() + h_n.sum()


def _gflop(kind: str, tau: int, n: int, batch: int, iterations: int = 1) -> float:
    """Work of one recursive-doubling scan with dense ``m x m`` blocks, times ``iterations``."""
    m = 2 * n if kind == "LSTM" else n
    return iterations * 2 * tau * max(ceil_log2(tau), 1) * batch * m**3 / 1e9


def _rows(params: dict, metric: str, times: dict, reference: str, errors: dict, steps: dict,
          notes: dict) -> list[dict]:
    base = statistics.median(times[reference])
    out = []
    for m, t in times.items():
        med = statistics.median(t)
        out.append(dict(params, metric=metric, method=m, median_s=med, min_s=min(t), ratio=med / base,
                        speedup=base / med, rel_error=errors.get(m, 0.0), steps=steps.get(m, -1), note=""))
    nan = float("nan")
    out += [dict(params, metric=metric, method=m, median_s=nan, min_s=nan, ratio=nan, speedup=nan,
                 rel_error=nan, steps=-1, note=note) for m, note in notes.items()]
    return out


def _case(kind: str, tau: int, n: int, batch: int, device, dtype, repeats: int, warmup: int,
          max_gflop: float) -> list[dict]:
    torch.manual_seed(0)
    module = getattr(nn, kind)(n, n).to(device=device, dtype=dtype)
    x = torch.randn(tau, batch, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    params = dict(suite=kind.lower(), sweep="tau", k=1, n=n, batch=batch, tau=tau)
    heavy = _gflop(kind, tau, n, batch, iterations=5) > max_gflop
    skip = f"skipped: dense m x m scans need about {_gflop(kind, tau, n, batch, 5):.0f} GFLOP > {max_gflop:g}"

    # -- forward ---------------------------------------------------------------------------
    with torch.no_grad():
        ref_out, _ = module(x)
    fwd = {TORCH: lambda: module(x)}
    options = {"sequential": ("sequential", {}), "newton": ("newton", {}),
               "newton_diagonal": ("newton", {"jacobian": "diagonal"})}
    errors, steps, notes = {}, {TORCH: tau}, {}
    for name, (method, opts) in options.items():
        if name == "newton" and heavy:
            notes[name] = skip
            continue
        out, trace = forward(module, x, method, return_trace=True, **opts)
        errors[name] = rel_error([out[0]], [ref_out])
        steps[name] = trace.steps + trace.info.get("linear_steps", 0)
        fwd[name] = lambda method=method, opts=opts: forward(module, x, method, **opts)
    with torch.no_grad():
        times = measure(fwd, device, repeats, warmup)
    rows = _rows(params, "forward", times, TORCH, errors, steps, notes)

    # -- forward + backward ----------------------------------------------------------------------
    plist = list(module.parameters())
    names = [name for name, _ in module.named_parameters()]
    ref = torch.autograd.grad(_loss(module(x)), plist)
    newton_states = lambda system: system.to_grid(solve(system, "newton"))  # noqa: E731

    def newton_nested():
        problem = gated.backward_problem(module, x, _loss, solve_states=newton_states)
        return problem.parameter_gradients(solve(problem.system, "nested"))

    both = {AUTOGRAD: lambda: torch.autograd.grad(_loss(module(x)), plist)}
    candidates: dict[str, Callable] = {
        "sequential": lambda: gradients(module, x, _loss, method="sequential"),
        "nested": lambda: gradients(module, x, _loss, method="nested"),
        "newton+nested": newton_nested,
    }
    errors, notes = {}, {}
    for name, fn in candidates.items():
        if name != "sequential" and heavy:
            notes[name] = skip
            continue
        grads = fn()
        errors[name] = rel_error([grads[p] for p in names], ref)
        both[name] = fn
    rows += _rows(params, "forward+backward", measure(both, device, repeats, warmup), AUTOGRAD, errors, {},
                  notes)
    return rows


def run_gated(taus: Sequence[int] = (256, 2048, 8192), ns: Sequence[int] = (8, 32),
              kinds: Sequence[str] = ("GRU", "LSTM"), batch: int = 1, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, repeats: int = 3, warmup: int = 1, max_gflop: float = 20.0,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """Time every ``(kind, τ, n)`` case (see the module docstring); returns the rows.

    Args:
        taus, ns, kinds: the sizes and modules (``"GRU"``, ``"LSTM"``); every combination runs.
        batch: samples per sequence batch.
        device, dtype, repeats, warmup: as for the other suites.
        max_gflop: skip the dense-block methods of a case beyond this work per call.
        progress: called with a line of text before each case.
    """
    bad = [k for k in kinds if k not in ("GRU", "LSTM")]
    if bad:
        raise ValueError(f"kinds must be 'GRU' or 'LSTM', got {bad}")
    device = torch.device(device)
    rows = []
    for kind, n, tau in product(kinds, ns, taus):
        if progress:
            progress(f"{kind.lower()} tau={tau} n={n} batch={batch}")
        rows += _case(kind, tau, n, batch, device, dtype, repeats, warmup, max_gflop)
    return rows


def gated_table(rows: Sequence[dict]) -> str:
    """Plain-text tables of the gated rows: time over the reference's, per metric (the reference,
    the first column, in ms)."""
    tables = []
    for metric in ("forward", "forward+backward"):
        sel = [r for r in rows if r["metric"] == metric and r["suite"] in ("gru", "lstm")]
        if not sel:
            continue
        meths = list(dict.fromkeys(r["method"] for r in sel))
        at = {(r["suite"], r["n"], r["batch"], r["tau"], r["method"]): r for r in sel}
        body = []
        for case in dict.fromkeys((r["suite"], r["n"], r["batch"], r["tau"]) for r in sel):
            cells = [f"{case[0]} n={case[1]} b={case[2]} tau={case[3]}"]
            for i, m in enumerate(meths):
                r = at.get((*case, m))
                if r is None or math.isnan(r["median_s"]):
                    cells.append(cell(None))
                elif i == 0 and r["ratio"] == 1.0:
                    cells.append(cell(r["median_s"] * 1e3, ".2f", suffix=" ms"))
                else:
                    cells.append(cell(r["ratio"]))
            body.append(cells)
        title = f"{metric}: time / reference time (same run; the reference column in ms)"
        tables.append(text_table(["case", *meths], body, title=title))
    return "\n\n".join(tables) + ("\n" if tables else "")
