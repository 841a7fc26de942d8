"""Gauss–Seidel (docs/theory.md §6): rows one after another, each reading the newest values.
In the order of the dependencies it is substitution (exact in one sweep); in the reverse order it
is Jacobi (exact after k sweeps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..systems import BlockBidiagonalSystem
from ._registry import register
from ._sweeps import check_common, jacobi_step, own_trace, record_step, sweep_loop, sweep_pairs
from .block_jacobi import coupling_of_row, dependency_order

__all__ = ["gauss_seidel"]


@register("gauss_seidel", BlockBidiagonalSystem, family="iterative")
def gauss_seidel(system: BlockBidiagonalSystem, trace, *, order: str = "dependency",
                 tol: float | None = None, max_sweeps: int | None = None,
                 reference: Sequence[torch.Tensor] | None = None, on_failure: str = "warn"
                 ) -> list[torch.Tensor]:
    """Gauss–Seidel: update the rows one after another, each reading the newest values.

    Args:
        system: upper or lower :class:`~trilib.systems.BlockBidiagonalSystem`.
        trace: one step per sweep; ``trace.info["steps_per_sweep"]`` = k (rows in sequence).
        order: ``"dependency"`` (bottom-up for upper, top-down for lower: a sweep is
            substitution, exact after one sweep) or ``"reverse"`` (every row reads a value of
            the previous sweep: Jacobi, exact after k sweeps).
        tol, reference, on_failure: as for :func:`~trilib.solvers.jacobi.jacobi`.
        max_sweeps: sweep limit (default and cap: the exact count, 1 or k).

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> [trilib.solve(U, "gauss_seidel", order=o, return_trace=True)[1].steps
        ...  for o in ("dependency", "reverse")]
        [1, 3]
    """
    trace, wanted = own_trace(trace, "gauss_seidel")
    if order not in ("dependency", "reverse"):
        raise ValueError(f"order must be 'dependency' or 'reverse', got {order!r}")
    tol, max_sweeps, reference = check_common(system, tol, max_sweeps, reference, on_failure)
    rows = dependency_order(system, range(system.k))
    if order == "reverse":
        rows = rows[::-1]
    reads = coupling_of_row(system)
    pairs = sweep_pairs([(row, system.row_col(reads[row])[1]) for row in rows if row in reads], wanted)
    trace.info["steps_per_sweep"] = system.k

    def sweep(u):
        u = list(u)
        for row in rows:                                # one row after another
            l = reads.get(row)
            if l is None:
                u[row] = system.rhs[row]
            else:
                u[row] = system.rhs[row] + system.apply_block(l, u[system.row_col(l)[1]])
        record_step(trace, pairs, system.k - 1)
        return u, jacobi_step(system, u)[1]

    exact = 1 if order == "dependency" else system.k
    what = ("one sweep in the dependency order" if order == "dependency"
            else f"k = {system.k} sweeps in reverse order")
    return sweep_loop(trace, sweep, [torch.zeros_like(r) for r in system.rhs], system=system, tol=tol,
                      max_sweeps=max_sweeps, exact=exact, reference=reference, on_failure=on_failure,
                      exact_after=f"Gauss–Seidel is exact after {what}")
