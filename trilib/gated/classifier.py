"""A GRU or LSTM with a linear readout, the classifier of the notebooks (docs/theory.md §7)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._autograd import loss_gradients
from .._checks import check_matches
from ..systems import BackwardProblem
from .build import GATED, backward_system_from_record, parameter_gradients, record_forward

__all__ = ["GatedClassifier", "classifier_problem"]


class GatedClassifier(nn.Module):
    """An ``nn.GRU`` or ``nn.LSTM`` followed by an ``nn.Linear`` readout of the top layer's last
    hidden state: ``logits = readout(h_{k,τ})``. ``loss_fn`` receives the logits.

    Its backward system is the grid of the recurrent network plus the readout row, whose error
    ``dE/dlogits`` comes from the loss alone and sends ``R^T dE/dlogits`` into ``h_{k,τ}``.

    Args:
        rnn: a unidirectional ``nn.GRU`` or ``nn.LSTM``.
        readout: an ``nn.Linear`` with ``in_features = rnn.hidden_size``.
        forward_method: how trilib computes the states its backward system needs:
            ``"sequential"`` (the ordinary recurrence) or ``"newton"`` (parallel in time, see
            :func:`trilib.solvers.newton_in_time.newton_in_time`). ``model(x)`` itself always runs
            the PyTorch module.
        forward_options: options for that forward method (e.g. ``{"jacobian": "diagonal"}``).

    Attributes:
        forward_iterations: Newton iterations of every forward pass trilib solved (one entry per
            backward problem built, when ``forward_method`` is not ``"sequential"``).

    Example:
        >>> import torch, trilib
        >>> model = trilib.gated.GatedClassifier(torch.nn.GRU(1, 8, batch_first=True),
        ...                                      torch.nn.Linear(8, 10), forward_method="newton")
        >>> model(torch.randn(4, 16, 1)).shape      # then trilib.gradients(model, x, loss_fn)
        torch.Size([4, 10])
    """

    def __init__(self, rnn: nn.Module, readout: nn.Linear, forward_method: str = "sequential",
                 forward_options: dict | None = None):
        super().__init__()
        if not isinstance(rnn, GATED) or type(readout) is not nn.Linear:
            raise TypeError(f"GatedClassifier needs an nn.GRU or nn.LSTM and an nn.Linear, got "
                            f"{type(rnn).__name__} and {type(readout).__name__}")
        if readout.in_features != rnn.hidden_size:
            raise ValueError(f"readout expects {readout.in_features} features but the "
                             f"{type(rnn).__name__} has hidden_size={rnn.hidden_size}")
        if not isinstance(forward_method, str):
            raise TypeError(f"forward_method must be a method name, got {type(forward_method).__name__}")
        self.rnn, self.readout = rnn, readout
        self.forward_method, self.forward_options = forward_method, dict(forward_options or {})
        self.forward_iterations: list[int] = []

    def forward(self, x):
        args = x if isinstance(x, (tuple, list)) else (x,)
        _, hidden = self.rnn(*args)
        h_n = hidden[0] if isinstance(self.rnn, nn.LSTM) else hidden
        return self.readout(h_n[-1])


def classifier_problem(model: GatedClassifier, inputs, loss_fn: Callable, solve: Callable | None = None
                       ) -> BackwardProblem:
    """The backward problem of a :class:`GatedClassifier`: the grid plus the readout row.

    ``solve`` (``trilib.solve``, passed in by :mod:`trilib.api`) computes the forward states when
    ``model.forward_method`` is not ``"sequential"``.
    """
    solve_states = None
    if model.forward_method != "sequential":
        if solve is None:
            raise ValueError(f"forward_method={model.forward_method!r} needs a solve function")

        def solve_states(system):
            solution, trace = solve(system, method=model.forward_method, return_trace=True,
                                    **model.forward_options)
            model.forward_iterations.append(trace.steps)
            return system.to_grid(solution)

    rec = record_forward(model.rnn, inputs, solve_states)
    n = model.rnn.hidden_size
    check_matches("readout.weight", model.readout.weight, rec.states.dtype, rec.states.device,
                  owner="the recurrent network's weights")
    top = rec.states[-1, -1, ..., :n]                      # h_{k,τ}: (batch, n)
    unbatched = rec.outputs()[0].dim() == 2
    with torch.no_grad():
        logits = model.readout(top)
    loss, (g_logits,) = loss_gradients([logits[0] if unbatched else logits], loss_fn)
    g_logits = g_logits.unsqueeze(0) if unbatched else g_logits
    g = torch.zeros_like(rec.states)
    g[-1, -1, ..., :n] = g_logits @ model.readout.weight.detach()
    extra = {"readout.weight": g_logits.t() @ top}
    if model.readout.bias is not None:
        extra["readout.bias"] = g_logits.sum(0)
    system = backward_system_from_record(rec, g)

    def grads(v):
        out = parameter_gradients(rec, system.to_grid(v), prefix="rnn.")
        out.update(extra)
        return out

    return BackwardProblem(system, loss, grads)
