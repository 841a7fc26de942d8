"""The benchmark cases: deep narrow MLPs and RNNs, every trilib method against torch autograd
(and the scans of PyTorch and JAX) on the same model, measured side by side."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from itertools import product

import numpy as np
import torch
from torch import nn

from .. import nets
from .._numerics import rel_error
from ..api import backward_problem
from ..solvers import families, solve
from ..solvers import methods as registered_methods
from .peers import JAX_METHODS, associative_scan_solve, jax_info, jax_solvers, scan_applies
from .timing import cuda_graph, measure

__all__ = ["AUTOGRAD", "CUDA_GRAPH", "SCAN", "associative_scan_solve", "run_mlp", "run_rnn"]

AUTOGRAD = "autograd"
SCAN = "associative_scan"
#: Suffix of a direct method's name when its solve was captured in a CUDA graph and replayed.
CUDA_GRAPH = "+cuda_graph"


def _row(params: dict, metric: str, method: str, times: list[float] | None, base: float,
         error: float = float("nan"), steps: int = -1, note: str = "") -> dict:
    nan = float("nan")
    med = statistics.median(times) if times else nan
    return dict(params, metric=metric, method=method, median_s=med, min_s=min(times) if times else nan,
                ratio=med / base, speedup=base / med, rel_error=error, steps=steps, note=note)


def _solution_error(v, problem, names, ref) -> float:
    grads = problem.parameter_gradients(v)
    return rel_error([grads[n] for n in names], ref)


def _case(model: nn.Module, x: torch.Tensor, loss_fn: Callable, methods: Sequence[str] | None,
          repeats: int, warmup: int, params: dict, step: bool, cuda_graphs: bool = False) -> list[dict]:
    """Time autograd, the trilib methods and the peers on one model; rows for the result table.

    Metrics, all timed in ONE interleaved measurement (ratios against autograd's backward):
    ``backward`` (a solve of the prebuilt system plus the parameter gradients; autograd's
    ``torch.autograd.grad`` on a retained graph) and ``solve`` (the solve alone, for
    substitution, the direct methods and the scans, JAX's included). With ``step``, a second
    measurement times the training step (forward + backward to every ``p.grad``) of autograd,
    sequential and the fastest direct method of this case. With ``cuda_graphs``, each direct
    solve is also captured in a CUDA graph and its replay timed as ``<method>+cuda_graph``.
    """
    device = x.device
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plist = [p for _, p in model.named_parameters() if p.requires_grad]
    out = loss_fn(model(x))
    ref = torch.autograd.grad(out, plist, retain_graph=True)
    problem = backward_problem(model, x, loss_fn)
    system = problem.system
    available = list(registered_methods(system))
    applicable = available + ([SCAN, *JAX_METHODS] if scan_applies(system) else [])
    chosen = applicable if methods is None else [m for m in methods if m in applicable]
    fns: dict[str, Callable] = {AUTOGRAD: lambda: torch.autograd.grad(out, plist, retain_graph=True)}
    solves: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    errors: dict[str, float] = {}
    steps: dict[str, int] = {AUTOGRAD: system.k * max(params["tau"], 1)}
    jax_fns: dict[str, Callable] | None = None
    for m in chosen:
        try:                                   # skip what cannot run here, say why
            if m in JAX_METHODS:
                if jax_fns is None:
                    info = jax_info()
                    if info["jax"] is None:
                        notes[m] = info["reason"]
                        continue
                    jax_fns = jax_solvers(system, device)
                v = torch.from_numpy(np.array(jax_fns[m]())).to(device).unbind(0)
                errors[m] = _solution_error(v, problem, names, ref)
                solves[m] = jax_fns[m]
                continue
            if m == SCAN:
                solver = lambda: associative_scan_solve(system)  # noqa: E731
            else:
                solver = lambda m=m: solve(system, method=m)     # noqa: E731
                steps[m] = solve(system, method=m, return_trace=True)[1].steps
            errors[m] = _solution_error(solver(), problem, names, ref)
        except Exception as exc:               # noqa: BLE001 -- reported in the table
            notes[m] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        fns[m] = lambda solver=solver: problem.parameter_gradients(solver())
        if m == SCAN or {"direct", "substitution"} & set(families(m)):
            solves[m] = solver
    if cuda_graphs:
        _capture(solves, available, problem, names, ref, device, errors, notes)
    times = measure({**fns, **{f"{m} (solve)": fn for m, fn in solves.items()}}, device, repeats, warmup)
    base = statistics.median(times[AUTOGRAD])
    rows = [_row(params, "backward", m, times[m], base, errors.get(m, 0.0), steps.get(m, -1))
            for m in fns]
    rows += [_row(params, "solve", m, times[f"{m} (solve)"], base, errors[m], steps.get(m, -1))
             for m in solves]
    rows += [_row(params, metric, m, None, base, note=note) for m, note in notes.items()
             for metric in (("solve",) if m in JAX_METHODS or m.endswith(CUDA_GRAPH) else ("backward",))]
    if step:
        direct = {m: statistics.median(times[f"{m} (solve)"]) for m in solves
                  if m in available and "direct" in families(m)}
        rows += _step_rows(model, x, loss_fn, min(direct, key=direct.get) if direct else None,
                           device, repeats, warmup, params)
    return rows


def _capture(solves: dict, available, problem, names, ref, device, errors: dict, notes: dict) -> None:
    """Add each direct solve captured in a CUDA graph (its replay) to ``solves``, its error to
    ``errors``; a solve that cannot be captured (it synchronises with the host) gets a note."""
    for m in [m for m in solves if m in available and "direct" in families(m)]:
        name = m + CUDA_GRAPH
        try:
            replay = cuda_graph(solves[m], device)
            errors[name] = _solution_error(replay(), problem, names, ref)
        except Exception as exc:               # noqa: BLE001 -- reported in the table
            notes[name] = f"CUDA graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            continue
        solves[name] = replay


def _step_rows(model, x, loss_fn, best: str | None, device, repeats: int, warmup: int,
               params: dict) -> list[dict]:
    """The training step (zero the gradients, forward, backward to every ``p.grad``) of autograd,
    ``trilib.backward(..., method="sequential")`` and the fastest direct method, interleaved."""
    from ..training import backward as trilib_backward

    def autograd_step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x)).backward()

    def trilib_step(method):
        model.zero_grad(set_to_none=True)
        trilib_backward(model, x, loss_fn, method=method)

    fns = {AUTOGRAD: autograd_step, "sequential": lambda: trilib_step("sequential")}
    if best is not None:
        fns[best] = lambda: trilib_step(best)
    st = measure(fns, device, repeats, warmup)
    model.zero_grad(set_to_none=True)
    sbase = statistics.median(st[AUTOGRAD])
    return [_row(params, "step", m, t, sbase, 0.0) for m, t in st.items()]


def _checked_device(device, cuda_graphs: bool) -> torch.device:
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got device {device.type!r}: CUDA graphs "
                         f"exist only on NVIDIA GPUs")
    return device


def _loss(out: torch.Tensor) -> torch.Tensor:
    return out.square().mean()


def run_mlp(ks: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "k", step: bool = True, cuda_graphs: bool = False,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of deep narrow tanh MLPs ``[n] * (k + 1)`` for every ``(k, n, batch)`` given.

    Args:
        ks, ns, batches: the sizes; every combination is run.
        methods: trilib method names and/or the scans (``"associative_scan"``, JAX's); ``None`` =
            every method ``trilib.methods(system)`` reports, plus the scans where they apply. A
            method that does not apply to the case's system is left out of it (so one list can
            name the MLP's and the RNN's methods).
        device, dtype: where and in what precision.
        repeats, warmup: timed and untimed rounds (see :func:`measure`).
        sweep: a label stored in each row (which size this series varies).
        step: also time the whole training step of autograd and trilib sequential.
        cuda_graphs: also time each direct solve captured in a CUDA graph and replayed
            (``<method>+cuda_graph`` rows; needs a CUDA device).
        progress: called with a line of text before each case.

    Returns:
        Rows (dicts) with ``suite, sweep, k, n, batch, metric, method, median_s, min_s, ratio,
        speedup, rel_error, note``; ``ratio`` is the method's median over autograd's, both
        measured in this run.
    """
    device = _checked_device(device, cuda_graphs)
    rows = []
    for k, n, b in product(ks, ns, batches):
        if progress:
            progress(f"mlp k={k} n={n} batch={b}")
        model = nets.mlp([n] * (k + 1), activation="tanh", seed=0, dtype=dtype, device=device)
        x = torch.randn(b, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
        params = dict(suite="mlp", sweep=sweep, k=k, n=n, batch=b, tau=0)
        rows += _case(model, x, _loss, methods, repeats, warmup, params, step, cuda_graphs)
    return rows


def _rnn_loss(out) -> torch.Tensor:
    out = out[0] if isinstance(out, tuple) else out
    return out.square().mean()


def run_rnn(taus: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "tau", step: bool = False, cuda_graphs: bool = False,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of a single-layer tanh ``nn.RNN(n, n, batch_first=True)`` over τ time steps.

    Same arguments and rows as :func:`run_mlp` (``tau`` set, ``k = 1``).
    """
    device = _checked_device(device, cuda_graphs)
    rows = []
    for tau, n, b in product(taus, ns, batches):
        if progress:
            progress(f"rnn tau={tau} n={n} batch={b}")
        torch.manual_seed(0)
        model = nn.RNN(n, n, batch_first=True).to(device=device, dtype=dtype)
        x = torch.randn(b, tau, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
        params = dict(suite="rnn", sweep=sweep, k=1, n=n, batch=b, tau=tau)
        rows += _case(model, x, _rnn_loss, methods, repeats, warmup, params, step, cuda_graphs)
    return rows
