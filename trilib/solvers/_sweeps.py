"""What every iterative method shares (docs/theory.md §6): option checks, the sweep loop with
its residual record and convergence test, and the warning or error when the limit is hit.

Write the system as ``(I - N) u = r`` with ``N`` strictly triangular, so ``N^k = 0``. Every
method records the relative residual after each sweep in ``trace.residuals`` (and the relative
error in ``trace.errors`` when a ``reference`` solution is given); ``trace.steps`` is the number
of sweeps (Newton: iterations). If the tolerance is not reached within the sweep limit the
method warns with :class:`ConvergenceWarning` (``on_failure="warn"``, default) or raises
:class:`ConvergenceError` (``on_failure="raise"``), naming the residual reached.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .._numerics import norm as _norm
from .._numerics import rel_error
from ..systems import BlockBidiagonalSystem, NonlinearForwardSystem, TriangularSystem

__all__ = ["ConvergenceWarning", "ConvergenceError", "default_tol", "own_trace", "slabs", "sweep_loop"]


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at its sweep limit above its tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when ``on_failure="raise"``."""


def default_tol(dtype: torch.dtype) -> float:
    """The default tolerance on the relative residual: ``64 * eps(dtype)``
    (about 1.4e-14 in float64, 7.6e-6 in float32)."""
    return 64 * torch.finfo(dtype).eps


def slabs(k: int, p: int) -> list[range]:
    """Split rows ``0..k-1`` into ``p`` contiguous blocks whose sizes differ by at most one.

    Example:
        >>> [list(s) for s in slabs(5, 2)]
        [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(k, p)
    out, start = [], 0
    for j in range(p):
        size = base + (1 if j < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return value


def check_blocks(name: str, system: TriangularSystem, blocks) -> list[torch.Tensor]:
    if blocks is None:
        return None
    if not isinstance(blocks, (list, tuple)) or len(blocks) != system.k:
        got = f"{len(blocks)} blocks" if isinstance(blocks, (list, tuple)) else type(blocks).__name__
        raise ValueError(f"{name} must be a list of k = {system.k} tensors, got {got}")
    for i, (b, r) in enumerate(zip(blocks, system.rhs)):
        if not isinstance(b, torch.Tensor) or b.shape != r.shape:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name} block {i} has shape {shape}, expected {tuple(r.shape)}")
    return [b.to(dtype=system.dtype, device=system.device) for b in blocks]


def check_common(system: TriangularSystem, tol, max_sweeps, default_sweeps: int, reference,
                  on_failure, name: str = "max_sweeps"):
    if tol is None:
        tol = default_tol(system.dtype)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    max_sweeps = default_sweeps if max_sweeps is None else check_int(name, max_sweeps, 1)
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}")
    return float(tol), max_sweeps, check_blocks("reference", system, reference)


def _record(trace, residual: float, u, reference) -> None:
    trace.residuals.append(residual)
    if reference is not None:
        trace.errors.append(rel_error(u, reference))


def _finish(trace, converged: bool, tol: float, limit: int, exact_after: str, on_failure: str,
            unit: str = "sweeps", option: str = "max_sweeps") -> None:
    trace.info["converged"] = converged
    trace.info["tol"] = tol
    if converged:
        return
    msg = (f"{trace.method} did not converge: relative residual {trace.residuals[-1]:.3e} after "
           f"{trace.steps} {unit} ({option}={limit}) is above tol={tol:.3e}; {exact_after}")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=4)


def coupling_pairs(system: TriangularSystem) -> list[tuple[int, int]] | None:
    """The ``(target, source)`` block pairs of ``N`` (row ``target`` reads ``u_source``), or None
    when the system does not expose its pattern without materialising blocks."""
    if isinstance(system, BlockBidiagonalSystem):
        return [system.row_col(l) for l in range(system.k - 1)]
    if isinstance(system, NonlinearForwardSystem):
        return [(l, l - 1) for l in range(1, system.k)]
    graph = getattr(system, "graph", None)
    if graph is not None and hasattr(graph, "edges"):
        return sorted((int(i), int(j)) for i, j in graph.edges)   # edge i -> j: N_ij = J_ji^T
    return None


def relative_residual(nu, rhs, u) -> float:
    """``||N u + r - u|| / ||r||``; when ``r = 0`` (the nonlinear forward system) relative to
    ``||N(u)||`` instead, so the number stays scale-free."""
    res = _norm([a + r - b for a, r, b in zip(nu, rhs, u)])
    scale = _norm(rhs)
    if scale == 0:
        scale = _norm(nu)
    return res / scale if scale > 0 else res




def own_trace(trace, method: str):
    """Iterative methods keep their residual history even when the caller asked for no trace
    (``trilib.solve(..., return_trace=False)`` passes ``trace=None``): a private one then."""
    from ..trace import Trace

    return Trace(method) if trace is None else trace


def sweep_loop(trace, sweep: Callable, u: list[torch.Tensor], *, tol: float, limit: int, reference,
               on_failure: str, exact_after: str, unit: str = "sweeps",
               option: str = "max_sweeps") -> list[torch.Tensor]:
    """The loop of every iterative method: ``u, residual = sweep(u)`` (the sweep records its own
    step in the trace) until ``residual <= tol`` or ``limit`` sweeps; then :func:`_finish`."""
    converged = False
    for _ in range(limit):
        u, residual = sweep(u)
        _record(trace, residual, u, reference)
        if residual <= tol:
            converged = True
            break
    _finish(trace, converged, tol, limit, exact_after, on_failure, unit, option)
    return u
