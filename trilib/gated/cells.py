"""The cells of ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM``, written exactly as PyTorch computes them,
with their state and input Jacobians (docs/theory.md §7).

Every cell maps a projected input ``xp = W_ih x + b_ih`` (computed once per layer, for all t) and
the previous state ``s`` to the next state; all functions are batched over leading dimensions.
The Jacobians are written out analytically as sums of row-scaled weight matrices,
``J = Σ_g diag(a_g) W_g (+ a diagonal)``, which costs O(n²) per sample where ``torch.func.jacrev``
would cost O(n³), and gives the diagonal alone (for quasi-Newton) in O(n). The tests check every
Jacobian against ``torch.func.jacrev`` of :meth:`step`.

* RNN: ``h' = f(xp + U h + b_hh)``, f = tanh or relu.
* GRU (gates r, z, n): ``r = σ(xp_r + W_hr h + b_hr)``, ``z = σ(xp_z + W_hz h + b_hz)``,
  ``n = tanh(xp_n + r ⊙ (W_hn h + b_hn))``, ``h' = (h - n) ⊙ z + n``.
* LSTM (gates i, f, g, o; state ``s = (h, c)``, m = 2n): ``c' = f ⊙ c + i ⊙ g``,
  ``h' = o ⊙ tanh(c')``.
"""

from __future__ import annotations

import torch

from .._numerics import rnn_cell

__all__ = ["RNNCell", "GRUCell", "LSTMCell"]


def _scaled(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``diag(a) W`` for a batch of row scalings ``a`` (..., rows)."""
    return a.unsqueeze(-1) * w


class _Cell:
    """Weights of one layer: ``w_ih`` (G·n, n_in), ``w_hh`` (G·n, n), biases (G·n,) or None."""

    gates = 1

    def __init__(self, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None = None,
                 b_hh: torch.Tensor | None = None):
        self.w_ih, self.w_hh, self.b_ih, self.b_hh = w_ih, w_hh, b_ih, b_hh
        self.hidden_size = w_hh.shape[1]
        self.input_size = w_ih.shape[1]
        self.state_size = self.hidden_size

    def weights(self) -> list[torch.Tensor]:
        return [w for w in (self.w_ih, self.w_hh, self.b_ih, self.b_hh) if w is not None]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``W_ih x + b_ih``: the part that depends on the input alone."""
        xp = x @ self.w_ih.t()
        return xp if self.b_ih is None else xp + self.b_ih

    def _hidden(self, h: torch.Tensor) -> torch.Tensor:
        gh = h @ self.w_hh.t()
        return gh if self.b_hh is None else gh + self.b_hh

    def input_jacobian(self, xp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``∂step/∂x``: the state Jacobian's formula with ``W_ih`` in place of ``W_hh``."""
        return self._jacobian(xp, s, self.w_ih, diagonal=False, wrt_state=False)

    def state_jacobian(self, xp: torch.Tensor, s: torch.Tensor, diagonal: bool = False) -> torch.Tensor:
        """``∂step/∂s``: ``(..., m, m)``, or only its diagonal ``(..., m)`` with ``diagonal=True``."""
        return self._jacobian(xp, s, self.w_hh, diagonal=diagonal, wrt_state=True)


class RNNCell(_Cell):
    """``h' = f(W_ih x + b_ih + W_hh h + b_hh)`` with ``f`` = tanh or relu (``nn.RNN``)."""

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh"):
        super().__init__(w_ih, w_hh, b_ih, b_hh)
        self.relu = nonlinearity == "relu"

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return rnn_cell(xp, h, self.w_hh, self.b_hh, self.relu)[0]

    def _jacobian(self, xp, h, w, diagonal, wrt_state):
        d = rnn_cell(xp, h, self.w_hh, self.b_hh, self.relu)[1]
        return d * w.diagonal() if diagonal else _scaled(d, w)


class GRUCell(_Cell):
    """The GRU cell of ``nn.GRU`` (gate order r, z, n), state ``h``."""

    gates = 3

    def _gates(self, xp, h):
        i_r, i_z, i_n = xp.chunk(3, -1)
        h_r, h_z, h_n = self._hidden(h).chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return r, z, n, h_n

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        _, z, n, _ = self._gates(xp, h)
        return (h - n) * z + n                       # as ATen writes (1 - z) n + z h

    def _jacobian(self, xp, h, w, diagonal, wrt_state):
        r, z, n, h_n = self._gates(xp, h)
        w_r, w_z, w_n = w.chunk(3, 0)
        a_z = (h - n) * z * (1 - z)                  # through z
        a_n = (1 - z) * (1 - n * n)                  # through n
        a_r = a_n * h_n * r * (1 - r)                # through r, inside n
        a_nn = a_n * r if wrt_state else a_n         # n reads W_hn h scaled by r, W_in x directly
        if diagonal:
            return a_z * w_z.diagonal() + a_nn * w_n.diagonal() + a_r * w_r.diagonal() + z
        j = _scaled(a_z, w_z) + _scaled(a_nn, w_n) + _scaled(a_r, w_r)
        if wrt_state:
            j.diagonal(dim1=-2, dim2=-1).add_(z)     # h' = ... + z h
        return j


class LSTMCell(_Cell):
    """The LSTM cell of ``nn.LSTM`` (gate order i, f, g, o), state ``s = (h, c)`` of width 2n."""

    gates = 4

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None):
        super().__init__(w_ih, w_hh, b_ih, b_hh)
        self.state_size = 2 * self.hidden_size

    def _gates(self, xp, s):
        h, c = s.chunk(2, -1)
        i, f, g, o = (xp + self._hidden(h)).chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        return i, f, g, o, c, c_new, torch.tanh(c_new)

    def step(self, xp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        _, _, _, o, _, c_new, tc = self._gates(xp, s)
        return torch.cat([o * tc, c_new], -1)

    def _jacobian(self, xp, s, w, diagonal, wrt_state):
        i, f, g, o, c, _, tc = self._gates(xp, s)
        w_i, w_f, w_g, w_o = w.chunk(4, 0)
        a_i, a_f, a_g = g * i * (1 - i), c * f * (1 - f), i * (1 - g * g)
        a_o, beta = tc * o * (1 - o), o * (1 - tc * tc)          # h' = o tanh(c')
        if diagonal:
            dc = a_i * w_i.diagonal() + a_f * w_f.diagonal() + a_g * w_g.diagonal()
            return torch.cat([a_o * w_o.diagonal() + beta * dc, f], -1)
        dc = _scaled(a_i, w_i) + _scaled(a_f, w_f) + _scaled(a_g, w_g)      # ∂c'/∂h (or ∂x)
        dh = _scaled(a_o, w_o) + beta.unsqueeze(-1) * dc                    # ∂h'/∂h (or ∂x)
        if not wrt_state:
            return torch.cat([dh, dc], -2)
        top = torch.cat([dh, torch.diag_embed(beta * f)], -1)              # ∂h'/∂(h, c)
        bottom = torch.cat([dc, torch.diag_embed(f)], -1)                   # ∂c'/∂(h, c)
        return torch.cat([top, bottom], -2)
