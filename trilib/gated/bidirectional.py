"""A bidirectional ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (one layer) as two grids, solved as one
(docs/theory.md §7).

Given ``x``, the two directions are independent chains: forward in time,
``s→_t = cell→(x_t, s→_{t-1})``, and reversed, ``s←_t = cell←(x_t, s←_{t+1})``. Read backwards
in time (``t' = τ-1-t``) the reversed chain is an ordinary forward chain over the flipped input,
so the errors ``v→`` and ``v←`` are two ``1 x τ`` grids of the same shape, each with the blocks
of its own cell. Stacked along the batch (samples ``0..B-1`` forward in time, ``B..2B-1``
reversed) they form one :class:`~trilib.systems.GridSystem`, and every RNN method
(``trilib.methods(system)``) solves both directions at once. The module returns
``output_t = [h→_t, h←_t]`` and ``h_n = (h→_τ, h←_1)``, so the loss gradient of ``output`` enters
the reversed grid flipped in time, and that of ``h_n`` at the last step of each grid.

With ``num_layers > 1``, layer ``l+1`` reads both directions of layer ``l`` at the same time
step: the forward-in-time grid of layer ``l+1`` couples to the reversed grid of layer ``l`` at
mirrored steps, which is no ``k x τ`` grid; such modules are refused with
:class:`~trilib.UnsupportedLayerError`.

Example:
    >>> import torch, trilib
    >>> lstm = torch.nn.LSTM(3, 4, bidirectional=True, dtype=torch.float64)
    >>> x = torch.randn(6, 2, 3, dtype=torch.float64)                 # (τ, batch, features)
    >>> U = trilib.backward_system(lstm, x, lambda out: out[0].square().sum())
    >>> U.grid_shape, U.r.shape[2]                                   # two directions x batch 2
    ((1, 6), 4)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._autograd import loss_gradients
from .._checks import UnsupportedLayerError, check_matches
from ..systems import BackwardProblem, GridSystem, RecurrentForwardSystem
from .build import (
    RECURRENT,
    GatedRecord,
    backward_system_from_record,
    layer_cell,
    parameter_gradients,
    split_input,
)

__all__ = ["check_bidirectional", "backward_problem", "classifier_problem"]

#: Parameter-name suffixes of the two directions, in the order they are stacked in the batch.
DIRECTIONS = ("l0", "l0_reverse")


def check_bidirectional(module: nn.Module) -> None:
    """Raise unless ``module`` is a one-layer bidirectional recurrent module trilib can express."""
    if not isinstance(module, RECURRENT) or not module.bidirectional:
        raise TypeError(f"expected a bidirectional nn.RNN, GRU or LSTM, got {type(module).__name__}")
    name = type(module).__name__
    if module.num_layers > 1:
        raise UnsupportedLayerError(
            f"{name} with bidirectional=True and num_layers={module.num_layers} is not supported: "
            "layer 2 reads both directions of layer 1 at each time step, which couples the "
            "forward-in-time grid to the reversed one at mirrored steps (no k x τ grid). Use "
            "num_layers=1 (one bidirectional layer is two grids trilib solves), or compute dE/dp "
            "with torch.autograd")
    if getattr(module, "proj_size", 0) > 0:
        raise UnsupportedLayerError(f"{name} with proj_size={module.proj_size} is not supported: the "
                                    "projected state changes the cell; use proj_size=0")


def _records(module: nn.Module, inputs) -> tuple[list[GatedRecord], bool]:
    """Both directions' forward passes: the reversed one over ``x`` flipped in time."""
    x, s0, unbatched = split_input(module, inputs)              # s0: (2, batch, m)
    recs = []
    for d, (suffix, xd) in enumerate(zip(DIRECTIONS, (x, x.flip(0)))):
        system = RecurrentForwardSystem([layer_cell(module, suffix)], xd, s0[d:d + 1])
        recs.append(GatedRecord(module, system, system.recurrence()))
    return recs, unbatched


def _outputs(module: nn.Module, recs: list[GatedRecord], unbatched: bool) -> list[torch.Tensor]:
    """``[output, h_n]`` (and ``c_n`` for an LSTM) exactly as the module returns them."""
    n = module.hidden_size
    fwd, rev = (rec.states[0] for rec in recs)                  # (τ, batch, m), rev in flipped time
    out = torch.cat([fwd[..., :n], rev.flip(0)[..., :n]], -1)
    last = torch.stack([fwd[-1], rev[-1]])                      # (2, batch, m)
    parts = [last[..., :n], last[..., n:]] if isinstance(module, nn.LSTM) else [last]
    if unbatched:
        return [out[:, 0]] + [p[:, 0] for p in parts]
    return [out.transpose(0, 1) if module.batch_first else out] + parts


def _grid(module: nn.Module, like: torch.Tensor, grads: list, unbatched: bool) -> torch.Tensor:
    """``g`` on the stacked grid ``(1, τ, 2·batch, m)`` from the gradients of :func:`_outputs`."""
    n, (tau, batch, m) = module.hidden_size, like.shape
    g = like.new_zeros(tau, 2, batch, m)
    g_out, g_hn, g_cn = (list(grads) + [None])[:3]
    if g_out is not None:
        g_out = g_out.unsqueeze(1) if unbatched else (g_out.transpose(0, 1) if module.batch_first else g_out)
        g[:, 0, :, :n] += g_out[..., :n]
        g[:, 1, :, :n] += g_out[..., n:].flip(0)
    for part, grad in ((slice(None, n), g_hn), (slice(n, None), g_cn)):
        if grad is not None:
            g[-1, ..., part] += grad.unsqueeze(1) if unbatched else grad
    return g.flatten(1, 2).unsqueeze(0)


def _problem(module: nn.Module, recs: list[GatedRecord], g: torch.Tensor, loss, prefix: str = "",
             extra: dict | None = None) -> BackwardProblem:
    """Both directions' grids stacked along the batch, and their parameter gradients."""
    batch = g.shape[2] // 2
    halves = [backward_system_from_record(rec, g[:, :, d * batch:(d + 1) * batch])
              for d, rec in enumerate(recs)]
    time = torch.cat([half.p[:, :-1] for half in halves], 2)
    no_depth = g.new_zeros(0, *g.shape[1:], g.shape[-1])          # one layer: no depth blocks
    system = GridSystem(time, no_depth, g)

    def gradients(v) -> dict[str, torch.Tensor]:
        grid, out = system.to_grid(v), {}
        for d, (rec, suffix) in enumerate(zip(recs, ("", "_reverse"))):
            for name, val in parameter_gradients(rec, grid[:, :, d * batch:(d + 1) * batch]).items():
                out[prefix + name + suffix] = val
        out.update(extra or {})
        return out

    return BackwardProblem(system, loss, gradients)


def backward_problem(module: nn.Module, inputs, loss_fn: Callable) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of a one-layer bidirectional ``nn.RNN``,
    ``nn.GRU`` or ``nn.LSTM``: one :class:`~trilib.systems.GridSystem` of both directions
    stacked along the batch. ``inputs`` and ``loss_fn`` as for the unidirectional module
    (``h0`` is ``(2, batch, hidden_size)``)."""
    check_bidirectional(module)
    recs, unbatched = _records(module, inputs)
    pack = (lambda o, h, c: (o, (h, c))) if isinstance(module, nn.LSTM) else (lambda o, h: (o, h))
    loss, grads = loss_gradients(_outputs(module, recs, unbatched), loss_fn, pack)
    return _problem(module, recs, _grid(module, recs[0].states[0], grads, unbatched), loss)


def classifier_problem(model: nn.Module, inputs, loss_fn: Callable) -> BackwardProblem:
    """The backward problem of a classifier (:class:`trilib.rnn.RNNClassifier`,
    :class:`trilib.gated.GatedClassifier`) over a one-layer bidirectional ``model.rnn``: its
    readout reads ``h_n[-1]``, the reversed direction's last state ``h←_1``, so ``R^T dE/dlogits``
    enters the reversed grid at its last step."""
    module = model.rnn
    check_bidirectional(module)
    if getattr(model, "forward_method", "sequential") != "sequential":
        raise UnsupportedLayerError(
            f"forward_method={model.forward_method!r} is not supported with a bidirectional "
            f"{type(module).__name__}: its two directions are computed by the ordinary recurrence; "
            "use forward_method='sequential'")
    recs, unbatched = _records(module, inputs)
    n, w = module.hidden_size, model.readout.weight
    check_matches("readout.weight", w, recs[0].states.dtype, recs[0].states.device,
                  owner="the recurrent network's weights")
    top = recs[1].states[0, -1, :, :n]                          # h_n[-1] = h←_1: (batch, n)
    with torch.no_grad():
        logits = model.readout(top)
    loss, (g_logits,) = loss_gradients([logits[0] if unbatched else logits], loss_fn)
    g_logits = g_logits.unsqueeze(0) if unbatched else g_logits
    g_hn = top.new_zeros(2, *top.shape)
    g_hn[1] = g_logits @ w.detach()
    extra = {"readout.weight": g_logits.t() @ top}
    if model.readout.bias is not None:
        extra["readout.bias"] = g_logits.sum(0)
    g = _grid(module, recs[0].states[0], [None, g_hn], unbatched=False)
    return _problem(module, recs, g, loss, prefix="rnn.", extra=extra)
