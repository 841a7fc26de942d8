"""Training with gradients from a triangular solve."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .problems import backward_problem
from .solvers import check_method, solve

__all__ = ["backward"]


def backward(model: nn.Module, x: torch.Tensor, loss_fn: Callable, method: str = "sequential",
             **options) -> torch.Tensor:
    """Like ``loss_fn(model(x)).backward()``, with the errors from ``trilib.solve``.

    Computes the loss, solves the backward system with ``method``, and accumulates every
    parameter's gradient into ``p.grad`` (as autograd does), so any ``torch.optim`` optimiser
    works unchanged. Returns the loss (detached).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 3], seed=0)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> loss = trilib.backward(net, torch.randn(5, 4), lambda out: out.square().mean())
        >>> opt.step()
    """
    check_method(method)
    problem = backward_problem(model, x, loss_fn)
    grads = problem.parameter_gradients(solve(problem.system, method=method, **options))
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.grad = grads[name] if p.grad is None else p.grad + grads[name]
    return problem.loss
