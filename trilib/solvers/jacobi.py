"""Jacobi (docs/theory.md §6): ``u <- N u + r``, all rows at once; exact after at most k sweeps.

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
from ._sweeps import check_blocks, check_common, coupling_pairs, own_trace, relative_residual, sweep_loop

__all__ = ["jacobi"]


@register("jacobi", TriangularSystem, family=("iterative", "matrix-free"))
def jacobi(system: TriangularSystem, trace, *, tol: float | None = None, max_sweeps: int | None = None,
           reference: Sequence[torch.Tensor] | None = None, initial: Sequence[torch.Tensor] | None = None,
           on_failure: str = "warn") -> list[torch.Tensor]:
    """Jacobi sweeps ``u <- N u + r`` (nonlinear Jacobi ``z <- N(z)`` on the forward system).

    Uses only ``system.apply_offdiagonal`` and ``system.rhs``, so it works matrix-free on every
    system. The product ``N u`` of a sweep also gives the residual ``N u + r - u`` of the
    previous iterate, so the residual costs nothing extra.

    Args:
        system: any :class:`~trilib.systems.TriangularSystem`.
        trace: receives one step per sweep (pairs: every block coupling).
        tol: stop once the relative residual is ``<= tol`` (default :func:`default_tol`).
        max_sweeps: sweep limit (default k: the iterate is exact after k sweeps).
        reference: a known solution; fills ``trace.errors`` with the relative error per sweep.
        initial: the starting guess (default zeros).
        on_failure: ``"warn"`` (:class:`ConvergenceWarning`) or ``"raise"``
            (:class:`ConvergenceError`) when ``tol`` is not met within ``max_sweeps``.

    Returns:
        ``k`` tensors ``(batch, n_l)``; ``trace.steps`` = sweeps done, ``trace.residuals`` the
        relative residual after each sweep.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "jacobi", return_trace=True)
        >>> trace.steps <= U.k, trace.residuals[-1] == 0.0
        (True, True)
    """
    trace = own_trace(trace, "jacobi")
    tol, max_sweeps, reference = check_common(system, tol, max_sweeps, system.k, reference, on_failure)
    u = check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = coupling_pairs(system)
    work = system.k if pairs is None or isinstance(system, NonlinearForwardSystem) else len(pairs)
    nu = system.apply_offdiagonal(u)

    def sweep(u):
        nonlocal nu
        u = [n + r for n, r in zip(nu, system.rhs)]          # every row at once
        trace.add_step(pairs or [], work=work)
        nu = system.apply_offdiagonal(u)                    # next sweep's product = this residual
        return u, relative_residual(nu, system.rhs, u)

    return sweep_loop(trace, sweep, u, tol=tol, limit=max_sweeps, reference=reference,
                      on_failure=on_failure, exact_after=f"Jacobi is exact after k = {system.k} sweeps")
