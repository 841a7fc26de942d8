"""The RNN builder: ``torch.nn.RNN`` as a 2-D triangular system (docs/theory.md §2).

Layer ``l = 1..k`` at time ``t = 1..τ`` computes (``h_{0,t} = x_t``, ``h_{l,0} = h0[l]``)::

    y_{l,t} = W_l h_{l-1,t} + U_l h_{l,t-1} + b_l        (W_l = weight_ih, U_l = weight_hh)
    h_{l,t} = f(y_{l,t})                                  (f = tanh or relu)

The errors ``v_{l,t} = dE/dy_{l,t}`` satisfy, with ``D_{l,t} = diag(f'(y_{l,t}))``::

    v_{l,t} = D_{l,t} (W_{l+1}^T v_{l+1,t} + U_l^T v_{l,t+1} + g_{l,t})

where ``g_{l,t}`` is the loss gradient reaching ``h_{l,t}`` directly (from ``output`` for the
top layer, from ``h_n`` at ``t = τ``). Every unknown couples to its neighbour above in depth and
in time: :class:`RNNSystem` is the resulting upper triangular system on a ``k x τ`` grid, with
the unknowns ordered layer by layer or time by time.

Input convention (mirrors ``rnn(x)`` and ``rnn(x, h0)``): pass ``x`` or the pair ``(x, h0)``;
``loss_fn`` receives exactly what the module returns, the pair ``(output, h_n)``.

Example:
    >>> import torch, trilib
    >>> rnn = torch.nn.RNN(3, 5, num_layers=2, dtype=torch.float64)
    >>> x = torch.randn(7, 4, 3, dtype=torch.float64)          # (τ, batch, features)
    >>> U = trilib.backward_system(rnn, x, lambda out: out[0].square().sum())
    >>> U.k, U.grid_shape
    (14, (2, 7))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ._autograd import loss_gradients
from ._checks import UnsupportedLayerError, check_finite, check_finite_named, check_matches, recurrent_input
from ._numerics import rnn_cell
from .systems import BackwardProblem, RNNSystem

__all__ = ["RNNRecord", "RNNClassifier", "record_forward", "backward_problem", "classifier_problem"]

# -- from nn.RNN to the system ---------------------------------------------------------------

@dataclass
class RNNRecord:
    """A forward pass kept for the backward system, all time-major and batched.

    ``x``: ``(τ, batch, n_in)``; ``h0``: ``(k, batch, n)``; ``h``: ``h_{l,t}`` as
    ``(k, τ, batch, n)``; ``d``: ``f'(y_{l,t})`` likewise; ``batch_first``/``unbatched``: the
    user's layout, to hand ``(output, h_n)`` back in it.
    """

    rnn: nn.RNN
    x: torch.Tensor
    h0: torch.Tensor
    h: torch.Tensor
    d: torch.Tensor
    batch_first: bool
    unbatched: bool

    def module_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, h_n)`` exactly as ``rnn(x, h0)`` returns them (detached)."""
        out, h_n = self.h[-1], self.h[:, -1]
        if self.unbatched:
            return out[:, 0], h_n[:, 0]
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def to_grid(self, g_out: torch.Tensor | None, g_hn: torch.Tensor | None) -> torch.Tensor:
        """``g_{l,t}`` on the grid from the gradients w.r.t. ``output`` and ``h_n``."""
        g = torch.zeros_like(self.h)
        if g_out is not None:
            g_out = g_out.unsqueeze(1) if self.unbatched else g_out
            g[-1] += g_out.transpose(0, 1) if (self.batch_first and not self.unbatched) else g_out
        if g_hn is not None:
            g[:, -1] += g_hn.unsqueeze(1) if self.unbatched else g_hn
        return g


def _weights(rnn: nn.RNN, l: int):
    return (getattr(rnn, f"weight_ih_l{l}"), getattr(rnn, f"weight_hh_l{l}"),
            getattr(rnn, f"bias_ih_l{l}", None), getattr(rnn, f"bias_hh_l{l}", None))


def _check_rnn(rnn: nn.RNN) -> None:
    if rnn.bidirectional:
        raise UnsupportedLayerError("bidirectional nn.RNN is not supported: its backward system "
                                    "is two grids running in opposite time directions; use "
                                    "bidirectional=False")
    if rnn.dropout > 0 and rnn.training:
        raise UnsupportedLayerError(f"nn.RNN with dropout={rnn.dropout} in training mode is random "
                                    "between layers; call rnn.eval() or use dropout=0")
    if rnn.nonlinearity not in ("tanh", "relu"):
        raise UnsupportedLayerError(f"nonlinearity must be 'tanh' or 'relu', got {rnn.nonlinearity!r}")


def _split_input(rnn: nn.RNN, inputs) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``x`` or ``(x, h0)`` -> time-major batched ``x``, ``h0`` and whether x was unbatched."""
    x, h0, unbatched = recurrent_input(rnn, inputs)
    ref, batch = rnn.weight_ih_l0, x.shape[1]
    k, n = rnn.num_layers, rnn.hidden_size
    if h0 is None:
        h0 = x.new_zeros(k, batch, n)
    else:
        check_matches("h0", h0, ref.dtype, ref.device)
        expected = (k, n) if unbatched else (k, batch, n)
        if tuple(h0.shape) != expected:
            raise ValueError(f"h0 has shape {tuple(h0.shape)}, expected {expected} "
                             "(num_layers, batch, hidden_size)")
        h0 = h0.unsqueeze(1) if unbatched else h0
        check_finite("h0", h0)
    for name, p in rnn.named_parameters():
        check_matches(name, p, ref.dtype, ref.device, owner="weight_ih_l0")
    check_finite_named([("parameter", name, p) for name, p in rnn.named_parameters()], owner="the RNN")
    return x, h0.detach(), unbatched


def record_forward(rnn: nn.RNN, inputs) -> RNNRecord:
    """Check the inputs, then run the forward pass keeping ``h_{l,t}`` and ``f'(y_{l,t})``.

    Each layer's input projection ``W_l h_{l-1,t} + b`` is one product over all t; the
    recurrence then runs over time (this is ordinary forward propagation).
    """
    if not isinstance(rnn, nn.RNN):
        raise TypeError(f"expected a torch.nn.RNN, got {type(rnn).__name__}")
    _check_rnn(rnn)
    x, h0, unbatched = _split_input(rnn, inputs)
    relu = rnn.nonlinearity == "relu"
    hs, ds = [], []
    with torch.no_grad():
        inp = x
        for l in range(rnn.num_layers):
            w_ih, w_hh, b_ih, b_hh = _weights(rnn, l)
            proj = inp @ w_ih.t()
            if b_ih is not None:
                proj = proj + b_ih
            h, h_l, d_l = h0[l], [], []
            for t in range(x.shape[0]):
                h, d = rnn_cell(proj[t], h, w_hh, b_hh, relu)
                h_l.append(h)
                d_l.append(d)
            inp = torch.stack(h_l)
            hs.append(inp)
            ds.append(torch.stack(d_l))
    return RNNRecord(rnn, x, h0, torch.stack(hs), torch.stack(ds), rnn.batch_first, unbatched)


def backward_system_from_record(rec: RNNRecord, g: torch.Tensor, order: str = "layer") -> RNNSystem:
    """The :class:`RNNSystem` of a recorded forward pass and direct loss gradients ``g``."""
    k = rec.rnn.num_layers
    w_ih = [getattr(rec.rnn, f"weight_ih_l{l}").detach() for l in range(1, k)]
    w_hh = [getattr(rec.rnn, f"weight_hh_l{l}").detach() for l in range(k)]
    n = rec.rnn.hidden_size
    w_ih = torch.stack(w_ih) if w_ih else rec.h.new_zeros(0, n, n)
    return RNNSystem(w_ih, torch.stack(w_hh), rec.d, g, order=order)


def parameter_gradients(rec: RNNRecord, v: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """``dE/dW_l = Σ_{t,b} v_{l,t} h_{l-1,t}^T``, ``dE/dU_l = Σ v_{l,t} h_{l,t-1}^T``,
    ``dE/db_l = Σ v_{l,t}`` (both biases): independent products, one per layer. ``v`` is the
    ``(k, τ, batch, n)`` grid."""
    grads = {}
    for l in range(rec.rnn.num_layers):
        inp = rec.x if l == 0 else rec.h[l - 1]
        prev = torch.cat([rec.h0[l].unsqueeze(0), rec.h[l, :-1]])
        grads[f"{prefix}weight_ih_l{l}"] = torch.einsum("tbi,tbj->ij", v[l], inp)
        grads[f"{prefix}weight_hh_l{l}"] = torch.einsum("tbi,tbj->ij", v[l], prev)
        if rec.rnn.bias:
            grads[f"{prefix}bias_ih_l{l}"] = v[l].sum((0, 1))
            grads[f"{prefix}bias_hh_l{l}"] = v[l].sum((0, 1))
    return grads


def _problem(rec: RNNRecord, g: torch.Tensor, loss, prefix: str = "", extra=None) -> BackwardProblem:
    system = backward_system_from_record(rec, g)

    def grads(v):
        out = parameter_gradients(rec, system.to_grid(v), prefix)
        out.update(extra or {})
        return out

    return BackwardProblem(system, loss, grads)


def backward_problem(rnn: nn.RNN, inputs, loss_fn: Callable) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of an ``nn.RNN``; ``inputs`` is ``x`` or
    ``(x, h0)`` and ``loss_fn`` receives ``(output, h_n)``."""
    rec = record_forward(rnn, inputs)
    loss, (g_out, g_hn) = loss_gradients(rec.module_output(), loss_fn, lambda o, h: (o, h))
    return _problem(rec, rec.to_grid(g_out, g_hn), loss)


class RNNClassifier(nn.Module):
    """An ``nn.RNN`` followed by an ``nn.Linear`` readout of the top layer's last state:
    ``logits = readout(h_{k,τ})``. ``loss_fn`` receives the logits.

    trilib builds its backward system honestly: the readout is one more row above the grid
    whose error ``dE/dlogits`` comes from the loss alone; it sends ``g_{k,τ} = R^T dE/dlogits``
    into the grid, and its own gradients are one product, like any layer's.

    Example:
        >>> import torch, trilib
        >>> model = trilib.rnn.RNNClassifier(torch.nn.RNN(1, 8, batch_first=True), torch.nn.Linear(8, 10))
        >>> model(torch.randn(4, 16, 1)).shape      # then trilib.gradients(model, x, loss_fn)
        torch.Size([4, 10])
    """

    def __init__(self, rnn: nn.RNN, readout: nn.Linear):
        super().__init__()
        if not isinstance(rnn, nn.RNN) or type(readout) is not nn.Linear:
            raise TypeError(f"RNNClassifier needs an nn.RNN and an nn.Linear, got "
                            f"{type(rnn).__name__} and {type(readout).__name__}")
        if readout.in_features != rnn.hidden_size:
            raise ValueError(f"readout expects {readout.in_features} features but the RNN has "
                             f"hidden_size={rnn.hidden_size}")
        self.rnn, self.readout = rnn, readout

    def forward(self, x):
        args = x if isinstance(x, (tuple, list)) else (x,)
        _, h_n = self.rnn(*args)
        return self.readout(h_n[-1])


def classifier_problem(model: RNNClassifier, inputs, loss_fn: Callable) -> BackwardProblem:
    """The backward problem of an :class:`RNNClassifier`: the grid plus the readout row."""
    rec = record_forward(model.rnn, inputs)
    for name, p in model.readout.named_parameters():
        check_matches(f"readout.{name}", p, rec.h.dtype, rec.h.device, owner="the RNN's weights")
    check_finite_named([("parameter", f"readout.{n}", p) for n, p in model.readout.named_parameters()])
    top = rec.h[-1, -1]                                   # h_{k,τ}: (batch, n)
    with torch.no_grad():
        logits = model.readout(top)
    if rec.unbatched:
        logits = logits[0]
    loss, (g_logits,) = loss_gradients([logits], loss_fn)
    g_logits = g_logits.unsqueeze(0) if rec.unbatched else g_logits
    w = model.readout.weight.detach()
    g = torch.zeros_like(rec.h)
    g[-1, -1] = g_logits @ w
    extra = {"readout.weight": g_logits.t() @ top}
    if model.readout.bias is not None:
        extra["readout.bias"] = g_logits.sum(0)
    return _problem(rec, g, loss, prefix="rnn.", extra=extra)
