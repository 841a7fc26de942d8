"""The forward pass as a solve (THEORY §1, §6): ``trilib.forward(model, x, method=...)``.

Forward propagation is the solution of the lower system ``F(z) = 0``,
``F_l(z) = z_l - f_l(W_l z_{l-1} + b_l)``. Substitution (``"sequential"``) is ordinary forward
propagation; nonlinear Jacobi (``"jacobi"``) updates every layer at once and is exact after at
most k sweeps; Newton (``"newton"``) solves one lower bi-diagonal linear system per iteration.
"""

from __future__ import annotations

import torch
from torch import nn

from .api import forward_system
from .solvers import check_method, methods, solve
from .solvers.iterative import ConvergenceError, ConvergenceWarning

__all__ = ["forward", "ConvergenceWarning", "ConvergenceError"]


def forward(model: nn.Module, x: torch.Tensor, method: str = "sequential", return_trace: bool = False,
            **options):
    """``model(x)`` computed by solving the forward system with ``method``.

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` and element-wise activations.
        x: the input batch ``(batch, n_0)``, same dtype and device as the model.
        method: ``"sequential"`` (forward substitution = ordinary forward propagation),
            ``"jacobi"`` (nonlinear Jacobi, options ``tol``, ``max_sweeps``, ``reference``,
            ``on_failure``) or ``"newton"`` (options ``linear_method``, default
            ``"recursive_doubling"``, ``linear_options``, ``tol``, ``max_iterations``, ...); any
            other method that applies to the forward system also works.
        return_trace: also return the :class:`~trilib.trace.Trace` (iterations, residuals).
        **options: passed to the method.

    Returns:
        The output ``z_k``, shaped like ``model(x)`` (no autograd graph); with
        ``return_trace=True`` the pair ``(output, trace)``. A method that misses its tolerance
        warns with :class:`ConvergenceWarning` (or raises :class:`ConvergenceError` with
        ``on_failure="raise"``).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 8, 8, 2], seed=0, dtype=torch.float64)
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> out, trace = trilib.forward(net, x, "jacobi", return_trace=True)
        >>> torch.allclose(out, net(x)), trace.steps <= 3
        (True, True)
    """
    check_method(method)
    system = forward_system(model, x)
    if method not in methods(system):
        raise ValueError(f"method {method!r} does not apply to the forward system "
                         f"({type(system).__name__}); methods for it: {', '.join(methods(system))}")
    z, trace = solve(system, method=method, return_trace=True, **options)
    return (z[-1], trace) if return_trace else z[-1]
