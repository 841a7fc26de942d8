"""A backward problem: what a model builder hands to the solvers and back to the caller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .base import TriangularSystem

__all__ = ["BackwardProblem"]


@dataclass
class BackwardProblem:
    """The backward system of one model on one batch, with what turns its solution into gradients.

    Attributes:
        system: the upper triangular system ``U v = r``.
        loss: the loss value E (detached).
        parameter_gradients: ``v -> {name: dE/dp}``, keyed like ``model.named_parameters()``
            (one independent product per layer, docs/theory.md §1).
        named_parameters: the model's ``(name, parameter)`` pairs when the builder has them at
            hand (the FNN builder keeps them with the parse of the model), so that
            :func:`trilib.backward` need not walk the model again; ``None`` otherwise.
    """

    system: TriangularSystem
    loss: torch.Tensor
    parameter_gradients: Callable[[Sequence[torch.Tensor]], dict[str, torch.Tensor]]
    named_parameters: Sequence[tuple[str, torch.Tensor]] | None = None
