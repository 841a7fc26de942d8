"""Training with gradients from a triangular solve (the live loss plot is trilib.viz.LivePlot)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._checks import check_int
from .api import backward_problem
from .solvers import check_method, solve

__all__ = ["AUTOGRAD", "accuracy", "backward", "fit", "train_step"]


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
    for name, p in problem.named_parameters or model.named_parameters():
        if p.requires_grad:
            p.grad = grads[name] if p.grad is None else p.grad + grads[name]
    return problem.loss


#: The name :func:`fit` and :func:`train_step` accept for plain ``torch.autograd`` backward.
AUTOGRAD = "autograd"


def train_step(model: nn.Module, x: torch.Tensor, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               method: str = "sequential", **options) -> float:
    """One optimiser step: zero the gradients, backward with ``method``, ``optimizer.step()``.

    ``method="autograd"`` runs ``loss_fn(model(x)).backward()`` (the reference); any other name
    goes through :func:`backward`. Returns the loss as a float.
    """
    optimizer.zero_grad(set_to_none=True)
    if method == AUTOGRAD:
        loss = loss_fn(model(x))
        loss.backward()
        loss = loss.detach()
    else:
        loss = backward(model, x, loss_fn, method=method, **options)
    optimizer.step()
    return float(loss)


def fit(model: nn.Module, loss_fn: Callable, data, method: str = "sequential", steps: int = 100,
        lr: float = 0.1, optimizer: str | Callable = "sgd", batch_size: int | None = None,
        seed: int = 0, progress: bool = True, callback: Callable[[int, float], None] | None = None,
        **options) -> list[float]:
    """Train ``model`` for ``steps`` optimiser steps with gradients from ``method``.

    Args:
        model: a model trilib can build a backward system for (e.g. ``trilib.nets.mlp``).
        loss_fn: ``loss_fn(output, y) -> scalar``, e.g. ``torch.nn.functional.cross_entropy``.
        data: ``(x, y)`` tensors; mini-batches are drawn from them.
        method: ``"autograd"`` or a name from :func:`trilib.methods`.
        steps: number of optimiser steps (>= 1).
        lr: learning rate.
        optimizer: ``"sgd"``, ``"adam"``, or a callable ``params -> torch.optim.Optimizer``.
        batch_size: samples per step, drawn with a generator seeded by ``seed`` (so every method
            sees the same batches); ``None`` uses the whole data every step.
        progress: show a ``tqdm.auto`` progress bar.
        callback: called as ``callback(step, loss)`` after every step (e.g. a live plot).
        **options: passed to the solver.

    Returns:
        The loss of every step (floats), in order.

    Example:
        >>> import torch, trilib
        >>> from torch.nn.functional import cross_entropy
        >>> net = trilib.nets.mlp([4, 8, 3], seed=0)
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> losses = trilib.training.fit(net, cross_entropy, (x, y), steps=3, progress=False)
        >>> len(losses)
        3
    """
    if method != AUTOGRAD:
        check_method(method)
    check_int("steps", steps, 1)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"data: x has {len(x)} samples but y has {len(y)}")
    if batch_size is not None and not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be in [1, {len(x)}] (the number of samples) or None, "
                         f"got {batch_size}")
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif callable(optimizer):
        opt = optimizer(model.parameters())
    else:
        raise ValueError(f"optimizer must be 'sgd', 'adam' or a callable, got {optimizer!r}")
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc=method, disable=not progress, leave=True)
    for step in bar:
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randperm(len(x), generator=gen)[:batch_size].to(x.device)
            xb, yb = x[idx], y[idx]
        loss = train_step(model, xb, lambda out, yb=yb: loss_fn(out, yb), opt, method, **options)
        losses.append(loss)
        if progress:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if callback is not None:
            callback(step, loss)
    return losses


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples whose largest output is the label ``y``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([2, 2], activation="identity")
        >>> 0.0 <= trilib.training.accuracy(net, torch.randn(4, 2), torch.tensor([0, 1, 0, 1])) <= 1.0
        True
    """
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())
