"""Jacobi (docs/theory.md §6): ``u <- N u + r``, all rows at once; exact after at most k sweeps
(the nilpotency index of ``N``: fewer on a graph or the RNN grid).

The error is multiplied by ``N`` each sweep and ``N^k = 0``. It needs only ``N u``
(matrix-free), so it is registered for every :class:`~trilib.systems.TriangularSystem`; on the
nonlinear forward system ``N(z)_l = f_l(W_l z_{l-1} + b_l)`` it is nonlinear Jacobi, also exact
after k sweeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..systems import NonlinearForwardSystem, TriangularSystem
from ._registry import register
from ._sweeps import (
    check_blocks,
    check_common,
    coupling_pairs,
    exact_count,
    jacobi_step,
    own_trace,
    record_step,
    sweep_loop,
    sweep_pairs,
)

__all__ = ["jacobi"]


@register("jacobi", TriangularSystem, family=("iterative", "matrix-free"))
def jacobi(system: TriangularSystem, trace, *, tol: float | None = None, max_sweeps: int | None = None,
           reference: Sequence[torch.Tensor] | None = None, initial: Sequence[torch.Tensor] | None = None,
           on_failure: str = "warn") -> list[torch.Tensor]:
    """Jacobi sweeps ``u <- N u + r`` (nonlinear Jacobi ``z <- N(z)`` on the forward system).

    Uses only ``system.apply_offdiagonal`` and ``system.rhs``, so it works matrix-free on every
    system. The product ``N u`` of a sweep also gives the residual ``N u + r - u`` of the
    iterate, which is exactly the change the next sweep would make: a zero residual is a fixed
    point, found without the extra sweep. The iterate is exact after the nilpotency index of
    ``N`` sweeps (:func:`~trilib.solvers._sweeps.exact_count`: k for an FNN, the depth of a
    graph, k + τ - 1 for the RNN grid), from any ``initial``.

    Args:
        system: any :class:`~trilib.systems.TriangularSystem`.
        trace: receives one step per sweep (pairs: every block coupling, one shared list).
        tol: ``None`` (default): sweep until the iterate stops changing bit for bit or the exact
            count is reached, which gives the exact answer up to rounding. A number ``> 0``:
            also stop early once the relative residual ``||N u + r - u|| / ||r||`` is ``<= tol``.
            That bounds the residual, not the error: on an ill-conditioned system the error can
            be orders of magnitude larger (a float32 tanh net of depth 20, weight scale 0.6,
            stopped at residual 2.6e-6 has gradient error 0.12). ``0.0``: also stop at an exactly
            zero residual.
        max_sweeps: sweep limit (default and cap: the exact count). Below it, stopping short
            warns (or raises, see ``on_failure``).
        reference: a known solution; fills ``trace.errors`` with the relative error per sweep.
        initial: the starting guess (default zeros).
        on_failure: ``"warn"`` (:class:`ConvergenceWarning`) or ``"raise"``
            (:class:`ConvergenceError`) when ``max_sweeps`` stops it short.

    Returns:
        ``k`` tensors ``(batch, n_l)``; ``trace.steps`` = sweeps done, ``trace.residuals`` the
        relative residual after each sweep, ``trace.info["stopped"]`` why it stopped.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "jacobi", return_trace=True)
        >>> trace.steps <= U.k, trace.info["stopped"] in ("fixed point", "exact count")
        (True, True)
    """
    trace, wanted = own_trace(trace, "jacobi")
    tol, max_sweeps, reference = check_common(system, tol, max_sweeps, reference, on_failure)
    u = check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = coupling_pairs(system)
    work = system.k if pairs is None or isinstance(system, NonlinearForwardSystem) else len(pairs)
    pairs = sweep_pairs(pairs, wanted)
    nxt, _ = jacobi_step(system, u)

    def sweep(u):
        nonlocal nxt
        u = nxt                                          # every row at once: N u + r
        record_step(trace, pairs, work)
        nxt, res = jacobi_step(system, u)               # next sweep's iterate = this residual
        return u, res

    exact = exact_count(system)
    return sweep_loop(trace, sweep, u, system=system, tol=tol, max_sweeps=max_sweeps, exact=exact,
                      reference=reference, on_failure=on_failure, fixed_by="residual",
                      exact_after=f"Jacobi is exact after {exact} sweeps")
