"""The public entry points: systems from models, and gradients from solves."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import fnn
from .problems import backward_problem
from .solvers import check_method, solve
from .systems import TriangularSystem

__all__ = ["backward_system", "compare_to_autograd", "forward_system", "gradients"]


def backward_system(model: nn.Module, x: torch.Tensor, loss_fn: Callable) -> TriangularSystem:
    """The upper triangular system ``U v = r`` of backward propagation (THEORY §1-4).

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` layers, each followed by zero or more
            element-wise activations (``trilib.fnn.ELEMENTWISE``): the FNN of THEORY §1;
            an ``nn.RNN`` (THEORY §2, see :mod:`trilib.rnn`); or any other module that
            ``torch.fx`` can trace (THEORY §3-4, see :mod:`trilib.graph`).
        x: the input batch, ``(batch, n_0)`` for an FNN, same dtype and device as the model.
        loss_fn: ``loss_fn(model(x))`` returns the scalar loss E; ``g = dE/dz_k`` comes from
            autograd on the loss alone.

    Returns:
        For an FNN a :class:`~trilib.systems.BlockBidiagonalSystem` with ``upper=True``, whose
        solution is ``v_l = dE/dy_l`` for l = 1..k; for an RNN or a graph the system of that
        pattern.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 8, 3], activation="tanh", seed=0)
        >>> trilib.backward_system(net, torch.randn(2, 4), lambda out: out.square().sum())
        BlockBidiagonalSystem(upper, k=3, block_sizes=(8, 8, 3), batch=2, dtype=torch.float32, device=cpu)
    """
    return backward_problem(model, x, loss_fn).system


def forward_system(model: nn.Module, x: torch.Tensor) -> TriangularSystem:
    """The lower triangular system of forward propagation (THEORY §1).

    With identity activations (a stack of ``nn.Linear``) it is linear and explicit: a
    :class:`~trilib.systems.BlockBidiagonalSystem` with ``upper=False``, sub-diagonal blocks
    ``W_l`` and right-hand side ``(W_1 x + b_1, b_2, ..., b_k)``. Otherwise it is the nonlinear
    :class:`~trilib.fnn.NonlinearForwardSystem` ``F(z) = 0``. Either way
    ``trilib.solve(system)[-1]`` equals ``model(x)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return fnn.forward_system(model, x)


def gradients(model: nn.Module, x: torch.Tensor, loss_fn: Callable, method: str = "sequential",
              **options) -> dict[str, torch.Tensor]:
    """``dE/dp`` for every parameter, by solving the backward system with ``method``.

    Args:
        model, x, loss_fn: as for :func:`backward_system`.
        method: a name from :func:`trilib.methods`.
        **options: passed to the solver.

    Returns:
        A dict keyed like ``model.named_parameters()``, each value shaped like its parameter.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 3], activation="relu", seed=0)
        >>> grads = trilib.gradients(net, torch.randn(2, 4), lambda out: out.sum())
        >>> list(grads)
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    check_method(method)
    problem = backward_problem(model, x, loss_fn)
    v = solve(problem.system, method=method, **options)
    return problem.parameter_gradients(v)


def compare_to_autograd(model: nn.Module, x, loss_fn: Callable, method: str = "sequential",
                        **options) -> float:
    """Relative error of :func:`gradients` against ``torch.autograd``, norm-wise over all parameters.

    ``||g_trilib - g_autograd|| / ||g_autograd||`` with every parameter gradient flattened into one
    vector and the norms taken in float64 (per-parameter ratios would magnify gradients that have
    vanished to rounding level). ``model`` and ``x`` are not modified (``p.grad`` is untouched).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 8, 3], seed=0, dtype=torch.float64)
        >>> err = trilib.compare_to_autograd(net, torch.randn(5, 4, dtype=torch.float64),
        ...                                  lambda out: out.square().sum(), method="blelloch")
        >>> err < 1e-12
        True
    """
    ours = gradients(model, x, loss_fn, method=method, **options)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    args = x if isinstance(x, (tuple, list)) else (x,)
    with torch.enable_grad():
        ref = torch.autograd.grad(loss_fn(model(*args)), [p for _, p in named], allow_unused=True)
    ref = [torch.zeros_like(p) if r is None else r for (_, p), r in zip(named, ref)]
    num = sum(float((ours[n].double() - r.double()).pow(2).sum()) for (n, _), r in zip(named, ref))
    den = sum(float(r.double().pow(2).sum()) for r in ref)
    return (num / den) ** 0.5 if den > 0 else num ** 0.5
