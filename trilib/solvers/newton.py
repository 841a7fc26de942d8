"""Newton's method for the nonlinear forward system (docs/theory.md §1, §6):
``z <- z + dz`` with ``J(z) dz = -F(z)``, each iteration one lower bi-diagonal linear solve with a
direct (parallel) method."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._numerics import norm as _norm
from ..systems import BlockBidiagonalSystem, NonlinearForwardSystem
from ._registry import check_method, register, solve
from ._sweeps import check_blocks, check_common, coupling_pairs, own_trace, sweep_loop

__all__ = ["newton"]


def _linearize(system, u) -> BlockBidiagonalSystem:
    """The Newton system ``J(u) du = r - A(u)`` (for a linear system, A itself)."""
    if isinstance(system, NonlinearForwardSystem):
        return system.linearize(u)
    return system.with_rhs(system.residual(u))


def _newton_residual(system, u, minus_f) -> float:
    """``||F(u)|| / ||r||``, or ``/ ||N(u)||`` when ``r = 0``, from ``-F(u) = r - A(u)``."""
    res, scale = _norm(minus_f), _norm(system.rhs)
    if scale == 0:
        scale = _norm([a + b for a, b in zip(u, minus_f)])      # N(u) = u - F(u)
    return res / scale if scale > 0 else res


@register("newton", NonlinearForwardSystem, BlockBidiagonalSystem, family="iterative")
def newton(system, trace, *, linear_method: str = "recursive_doubling", linear_options: dict | None = None,
           tol: float | None = None, max_iterations: int | None = None,
           reference: Sequence[torch.Tensor] | None = None, initial: Sequence[torch.Tensor] | None = None,
           on_failure: str = "warn") -> list[torch.Tensor]:
    """Newton's method for ``F(z) = z - N(z) = 0``: ``z <- z + dz`` with ``J(z) dz = -F(z)``.

    ``J(z)`` is unit lower bi-diagonal with blocks ``D_l W_l`` (docs/theory.md §1), so each iteration is
    one linear solve with a direct method (default: recursive doubling, ⌈log2 k⌉ steps). Row l
    is exact after l iterations, so at most k are needed; in practice far fewer. On a linear
    :class:`~trilib.systems.BlockBidiagonalSystem` one iteration is one direct solve.

    Args:
        system: a :class:`~trilib.fnn.NonlinearForwardSystem` (or a linear bi-diagonal system).
        trace: one step per iteration, with ``work`` = the linear solve's block products plus k
            layer evaluations; ``trace.info["linear_steps"]`` sums the inner solves' steps and
            ``trace.info["linear_traces"]`` keeps them.
        linear_method: the method for each linear solve (any name in :func:`trilib.methods`).
        linear_options: options for that method.
        tol: stop once the relative residual ``||F(z)|| / ||N(z)||`` is ``<= tol``
            (default :func:`default_tol`).
        max_iterations: iteration limit (default k).
        reference, initial, on_failure: as for :func:`jacobi`.

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 8, 8, 8, 2], seed=0, dtype=torch.float64)
        >>> Z = trilib.forward_system(net, torch.randn(5, 3, dtype=torch.float64))
        >>> z, trace = trilib.solve(Z, "newton", linear_method="sequential", return_trace=True)
        >>> trace.steps <= Z.k
        True
    """
    trace = own_trace(trace, "newton")
    check_method(linear_method)
    linear_options = dict(linear_options or {})
    tol, max_iterations, reference = check_common(system, tol, max_iterations, system.k, reference,
                                                   on_failure, name="max_iterations")
    u = check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = coupling_pairs(system)
    trace.info["linear_traces"] = []
    trace.info["linear_steps"] = 0
    jac = _linearize(system, u)                         # rhs = -F(u)

    def iteration(u):
        nonlocal jac
        du, inner = solve(jac, method=linear_method, return_trace=True, **linear_options)
        u = [a + b for a, b in zip(u, du)]
        trace.info["linear_traces"].append(inner)
        trace.info["linear_steps"] += inner.steps
        trace.add_step(pairs, work=inner.work + system.k)
        jac = _linearize(system, u)                     # the next Jacobian, and -F(u)
        return u, _newton_residual(system, u, jac.rhs)

    return sweep_loop(trace, iteration, u, tol=tol, limit=max_iterations, reference=reference,
                      on_failure=on_failure, exact_after=f"Newton is exact after at most "
                      f"k = {system.k} iterations in exact arithmetic",
                      unit="iterations", option="max_iterations")
