"""Newton's method for the nonlinear forward system (docs/theory.md §1, §6):
``z <- z + dz`` with ``J(z) dz = -F(z)``, each iteration one lower bi-diagonal linear solve with a
direct (parallel) method."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..systems import BlockBidiagonalSystem, NonlinearForwardSystem
from ._registry import check_method, register, solve
from ._sweeps import (
    check_blocks,
    check_common,
    coupling_pairs,
    jacobi_step,
    own_trace,
    record_step,
    sweep_loop,
    sweep_pairs,
)

__all__ = ["newton", "ROUNDING"]

#: Newton's default stop besides the fixed point: every row of every sample is its own update up
#: to ``ROUNDING`` units of rounding, ``||F_{l,b}(z)|| <= ROUNDING eps ||N(z)_{l,b}||``. Forward
#: propagation's own rounding perturbs a layer's output by more (a matrix product errs by about
#: ``n eps`` relative), so the answer is as accurate as substitution; the last bits would settle
#: only one row per iteration, i.e. after k iterations.
ROUNDING = 4.0


def _linearize(system, u) -> BlockBidiagonalSystem:
    """The Newton system ``J(u) du = -F(u)``, ``-F(u) = N(u) + r - u`` (for a linear system, A
    itself with that right-hand side). ``N u + r - u`` is rounded like the next Jacobi iterate
    minus ``u``: a row whose rows below are settled then settles in one more iteration."""
    if isinstance(system, NonlinearForwardSystem):
        return system.linearize(u)                      # its rhs 0 - (u - N(u)) = N(u) - u exactly
    return system.with_rhs(torch.split(jacobi_step(system, u)[1], system.block_sizes, dim=-1))


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
            ``trace.info["linear_traces"]`` keeps them (when a trace was asked for).
        linear_method: the method for each linear solve (any name in :func:`trilib.methods`).
        linear_options: options for that method.
        tol: ``None`` (default): iterate until ``F(z)`` is exactly zero (then ``dz = 0`` and
            the iterate is a fixed point), or every row of every sample is at rounding level
            (:data:`ROUNDING`: as accurate as substitution), or k iterations. A number: stop at
            a fixed point, at k iterations, or once the relative residual ``||F(z)|| / ||r||``
            (``/ ||N(z)||`` when ``r = 0``) is ``<= tol``: a bound on the residual, not on the error (see
            :func:`~trilib.solvers.jacobi.jacobi`).
        max_iterations: iteration limit (default and cap: k, the exact count).
        reference, initial, on_failure: as for :func:`~trilib.solvers.jacobi.jacobi`.

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
    trace, wanted = own_trace(trace, "newton")
    check_method(linear_method)
    linear_options = dict(linear_options or {})
    tol, max_iterations, reference = check_common(system, tol, max_iterations, reference, on_failure,
                                                  name="max_iterations")
    u = check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = sweep_pairs(coupling_pairs(system), wanted)
    trace.info["linear_traces"] = []
    trace.info["linear_steps"] = 0
    jac = _linearize(system, u)                         # rhs = -F(u)

    def iteration(u):
        nonlocal jac
        if wanted:
            du, inner = solve(jac, method=linear_method, return_trace=True, **linear_options)
            trace.info["linear_traces"].append(inner)
            trace.info["linear_steps"] += inner.steps
            record_step(trace, pairs, inner.work + system.k)
        else:                                           # no inner pairs (nor their host syncs)
            du = solve(jac, method=linear_method, **linear_options)
            record_step(trace, pairs, system.k)
        u = torch._foreach_add(list(u), list(du))
        jac = _linearize(system, u)                     # the next Jacobian, and -F(u)
        return u, jac.rhs

    return sweep_loop(trace, iteration, u, system=system, tol=tol, max_sweeps=max_iterations,
                      exact=system.k, reference=reference, on_failure=on_failure, fixed_by="residual",
                      rounding=ROUNDING,
                      exact_after=f"Newton is exact after k = {system.k} iterations (row l after l)",
                      unit="iterations", option="max_iterations")
