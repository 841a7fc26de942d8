"""The backward system of a recurrent network: a unit upper triangular system on the k x τ grid
of layers and time steps (docs/theory.md §2), with the blocks of ``nn.RNN`` kept factorised."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .bidiagonal import BlockBidiagonalSystem
from .grid import ORDERS, GridSystem

__all__ = ["RNNSystem", "ORDERS"]


class RNNSystem(GridSystem):
    """The backward system of a k-layer RNN over τ time steps, ``(I - N) v = r`` (docs/theory.md §2).

    The unknowns form a ``k x τ`` grid (0-based ``l``, ``t`` below). ``N`` has two blocks per
    row: ``D_{l,t} W_{l+1}^T`` towards ``v_{l+1,t}`` (depth) and ``D_{l,t} U_l^T`` towards
    ``v_{l,t+1}`` (time); ``r_{l,t} = D_{l,t} g_{l,t}``. Both couplings point to a larger index
    in either ordering, so the system is upper triangular in both:

    * ``order="layer"``: block row ``l*τ + t``. Upper block bi-diagonal over layers whose
      diagonal blocks are upper block bi-diagonal over time.
    * ``order="time"``: block row ``t*k + l``. The roles of layers and time swap.

    It is the :class:`~trilib.systems.GridSystem` whose blocks are stored factorised (``D`` and
    the shared weights): :meth:`couple` and :meth:`apply_offdiagonal` never materialise a block;
    :meth:`time_blocks` and :meth:`depth_blocks` form them when a direct solver asks.

    Args:
        w_ih: the ``k - 1`` input weights ``W_2..W_k`` (each ``n x n``), a list or a stacked
            ``(k-1, n, n)`` tensor.
        w_hh: the ``k`` recurrent weights ``U_1..U_k``, list or ``(k, n, n)``.
        d: ``f'(y)`` on the grid, ``(k, τ, batch, n)``.
        g: the direct loss gradients ``g_{l,t}``, ``(k, τ, batch, n)``.
        order: ``"layer"`` or ``"time"``.

    Example:
        >>> import torch
        >>> k, tau, b, n = 2, 3, 1, 2
        >>> S = RNNSystem(torch.randn(k - 1, n, n), torch.randn(k, n, n),
        ...               torch.ones(k, tau, b, n), torch.randn(k, tau, b, n))
        >>> S.to_dense().shape
        torch.Size([12, 12])
    """

    factorised = True

    def __init__(self, w_ih, w_hh, d: torch.Tensor, g: torch.Tensor, order: str = "layer"):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if d.dim() != 4:
            raise ValueError(f"d must be (k, τ, batch, n), got shape {tuple(d.shape)}")
        if g.shape != d.shape:
            raise ValueError(f"g has shape {tuple(g.shape)} but d has {tuple(d.shape)}")
        k, tau, batch, n = d.shape
        if k < 1 or tau < 1 or batch < 1:
            raise ValueError(f"the grid needs k >= 1, τ >= 1 and batch >= 1, got d.shape={tuple(d.shape)}")
        w_hh = torch.stack(list(w_hh)) if not isinstance(w_hh, torch.Tensor) else w_hh
        w_ih = (torch.stack(list(w_ih)) if len(w_ih) else d.new_zeros(0, n, n)) \
            if not isinstance(w_ih, torch.Tensor) else w_ih
        if w_hh.shape != (k, n, n):
            raise ValueError(f"w_hh has shape {tuple(w_hh.shape)}, expected {(k, n, n)}")
        if w_ih.shape != (k - 1, n, n):
            raise ValueError(f"w_ih has shape {tuple(w_ih.shape)}, expected {(k - 1, n, n)}")
        self.w_ih, self.w_hh, self.d, self.g = w_ih, w_hh, d, g
        # W_{l+1} for every layer, with a zero matrix for the top one (it has no layer above)
        self._w_depth = torch.cat([w_ih, w_ih.new_zeros(1, n, n)])
        self._set_grid(d * g, order)

    # -- the grid interface, factorised --------------------------------------------------------
    def time_blocks(self) -> torch.Tensor:
        """``P_{l,t} = D_{l,t} U_l^T`` formed for the whole grid, ``(k, τ, batch, n, n)``
        (``P_{l,τ-1} = 0``)."""
        p = self.d.unsqueeze(-1) * self.w_hh.transpose(-1, -2)[:, None, None]
        p[:, -1] = 0
        return p

    def depth_blocks(self) -> torch.Tensor:
        """``E_{l,t} = D_{l,t} W_{l+1}^T`` formed for the whole grid (``E_{k-1,t} = 0``)."""
        return self.d.unsqueeze(-1) * self._w_depth.transpose(-1, -2)[:, None, None]

    def couple(self, ls, ts, v_depth: torch.Tensor, v_time: torch.Tensor) -> torch.Tensor:
        """``D_{l,t} (W_{l+1}^T v_{l+1,t} + U_l^T v_{l,t+1})`` for the rows ``(ls, ts)`` (ints or
        index tensors), as row vectors: never forms a block."""
        return self.d[ls, ts] * (v_depth @ self._w_depth[ls] + v_time @ self.w_hh[ls])

    def time_system(self, layer: int = 0, incoming: torch.Tensor | None = None) -> BlockBidiagonalSystem:
        """Row ``layer`` of the layer ordering as a :class:`BlockBidiagonalSystem` over time.

        ``u_t - D_{l,t} U_l^T u_{t+1} = r_{l,t} + D_{l,t} W_{l+1}^T v_{l+1,t}`` with
        ``incoming = v_{l+1}`` as ``(τ, batch, n)`` (omit it for the top layer). For ``k = 1``
        ``time_system()`` is the whole system, so every FNN direct method applies along time.
        """
        rhs = self._layer_rhs(layer, incoming)
        mats = [self.w_hh[layer].t()] * (self.tau - 1)
        return BlockBidiagonalSystem(mats, list(self.d[layer, :-1]), list(rhs), upper=True, symbol="v")

    # -- TriangularSystem interface ------------------------------------------------------------
    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        v = self.to_grid(u)
        out = torch.zeros_like(v)
        out[:-1] += v[1:] @ self.w_ih.unsqueeze(1)        # W_{l+1}^T v_{l+1,t}
        out[:, :-1] += v[:, 1:] @ self.w_hh.unsqueeze(1)  # U_l^T v_{l,t+1}
        return list(self.to_blocks(self.d * out))

    def _block(self, kind: str, l: int, t: int, sample: int) -> torch.Tensor:
        w = self.w_ih[l] if kind == "depth" else self.w_hh[l]
        return self.d[l, t, sample].unsqueeze(-1) * w.t()

    def _converted(self, convert) -> RNNSystem:
        return RNNSystem(convert(self.w_ih), convert(self.w_hh), convert(self.d), convert(self.g),
                         order=self.order)

    def __repr__(self) -> str:
        k, tau = self.grid_shape
        return (f"RNNSystem(upper, k={k}, tau={tau}, n={self.d.shape[-1]}, order={self.order!r}, "
                f"batch={self.batch_size}, dtype={self.dtype}, device={self.device})")
