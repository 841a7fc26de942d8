"""From a model to a backward problem: which system builder handles which kind of model.

A builder turns ``(model, x, loss_fn)`` into a :class:`BackwardProblem`: the upper triangular
system, the loss value, and the map from the solved errors to the parameter gradients (one
independent product per layer, THEORY §1). New model kinds register a builder here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import fnn
from ._checks import UnsupportedLayerError
from .systems import TriangularSystem

__all__ = ["BackwardProblem", "register_model", "backward_problem"]


@dataclass
class BackwardProblem:
    system: TriangularSystem
    loss: torch.Tensor
    parameter_gradients: Callable[[Sequence[torch.Tensor]], dict[str, torch.Tensor]]


# (predicate, builder) pairs, tried in order.
_BUILDERS: list[tuple[Callable[[nn.Module], bool], Callable]] = []


def register_model(predicate: Callable[[nn.Module], bool]):
    """Decorator: ``builder(model, x, loss_fn) -> BackwardProblem`` for models where
    ``predicate(model)`` holds."""

    def deco(builder):
        _BUILDERS.append((predicate, builder))
        return builder

    return deco


def backward_problem(model: nn.Module, x: torch.Tensor, loss_fn: Callable) -> BackwardProblem:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output -> scalar loss), got {type(loss_fn).__name__}")
    for predicate, builder in _BUILDERS:
        if predicate(model):
            return builder(model, x, loss_fn)
    return _graph_problem(model, x, loss_fn)


def _graph_problem(model: nn.Module, x: torch.Tensor, loss_fn: Callable) -> BackwardProblem:
    """Any other module: traced into a computation graph (THEORY §3-4). Modules torch.fx cannot
    trace, or operations without a Jacobian rule, raise UnsupportedLayerError naming them."""
    from .graph import graph_problem

    return graph_problem(model, x, loss_fn)


@register_model(lambda m: isinstance(m, nn.Sequential))
def _fnn_problem(model: nn.Sequential, x: torch.Tensor, loss_fn: Callable) -> BackwardProblem:
    try:
        layers = fnn.parse_sequential(model)
    except UnsupportedLayerError:
        # Not an FNN (e.g. a Sequential with LayerNorm): the graph path takes it.
        # parse_sequential's ValueErrors (widths that do not chain, ...) stay on the FNN path.
        return _graph_problem(model, x, loss_fn)
    rec = fnn.record_forward(layers, x)
    loss, g = fnn.loss_gradient(rec.zs[-1], loss_fn)
    system = fnn.backward_system_from_record(rec, g)
    return BackwardProblem(system, loss, lambda v: fnn.parameter_gradients(model, rec, v))
