"""The backward system of a recurrent network: a unit upper triangular system on the k x τ grid
of layers and time steps (docs/theory.md §2)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .base import TriangularSystem
from .bidiagonal import BlockBidiagonalSystem

__all__ = ["RNNSystem", "ORDERS"]

#: The two orderings of the unknowns ``v_{l,t}``.
ORDERS = ("layer", "time")


class RNNSystem(TriangularSystem):
    """The backward system of a k-layer RNN over τ time steps, ``(I - N) v = r`` (docs/theory.md §2).

    The unknowns form a ``k x τ`` grid (0-based ``l``, ``t`` below). ``N`` has two blocks per
    row: ``D_{l,t} W_{l+1}^T`` towards ``v_{l+1,t}`` (depth) and ``D_{l,t} U_l^T`` towards
    ``v_{l,t+1}`` (time); ``r_{l,t} = D_{l,t} g_{l,t}``. Both couplings point to a larger index
    in either ordering, so the system is upper triangular in both:

    * ``order="layer"``: block row ``l*τ + t``. Upper block bi-diagonal over layers whose
      diagonal blocks are upper block bi-diagonal over time.
    * ``order="time"``: block row ``t*k + l``. The roles of layers and time swap.

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

    upper = True
    symbol = "v"

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
        self.order = order
        self.r = d * g
        self.rhs = self.to_blocks(self.r)

    # -- the grid ----------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(k, τ)``: layers and time steps (``self.k`` is the number of block rows, k·τ)."""
        return tuple(self.d.shape[:2])

    @property
    def layers(self) -> int:
        return self.d.shape[0]

    @property
    def tau(self) -> int:
        return self.d.shape[1]

    def index(self, l, t):
        """Block row of unknown ``v_{l,t}`` (0-based) in this system's ordering."""
        return l * self.tau + t if self.order == "layer" else t * self.layers + l

    def to_blocks(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """A ``(k, τ, batch, n)`` grid as the list of blocks in this ordering."""
        seq = grid if self.order == "layer" else grid.transpose(0, 1)
        return list(seq.reshape(-1, *grid.shape[2:]).unbind(0))

    def to_grid(self, u: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`to_blocks`."""
        self._check_solution(u)
        k, tau = self.grid_shape
        flat = torch.stack(list(u))
        if self.order == "layer":
            return flat.reshape(k, tau, *flat.shape[1:])
        return flat.reshape(tau, k, *flat.shape[1:]).transpose(0, 1)

    def _converted(self, convert) -> RNNSystem:
        return RNNSystem(convert(self.w_ih), convert(self.w_hh), convert(self.d), convert(self.g),
                         order=self.order)

    def with_order(self, order: str) -> RNNSystem:
        """The same system with the unknowns in the other ordering."""
        return RNNSystem(self.w_ih, self.w_hh, self.d, self.g, order=order)

    def time_system(self, layer: int = 0, incoming: torch.Tensor | None = None) -> BlockBidiagonalSystem:
        """Row ``layer`` of the layer ordering as a :class:`BlockBidiagonalSystem` over time.

        ``u_t - D_{l,t} U_l^T u_{t+1} = r_{l,t} + D_{l,t} W_{l+1}^T v_{l+1,t}`` with
        ``incoming = v_{l+1}`` as ``(τ, batch, n)`` (omit it for the top layer). For ``k = 1``
        ``time_system()`` is the whole system, so every FNN direct method applies along time.
        """
        k, tau = self.grid_shape
        if not isinstance(layer, int) or not 0 <= layer < k:
            raise IndexError(f"layer must be an int in [0, {k}), got {layer!r}")
        rhs = self.r[layer]
        if layer < k - 1:
            if incoming is None or incoming.shape != rhs.shape:
                got = None if incoming is None else tuple(incoming.shape)
                raise ValueError(f"incoming must be v_{{l+1}} of shape {tuple(rhs.shape)}, got {got}")
            rhs = rhs + self.d[layer] * (incoming @ self.w_ih[layer])
        mats = [self.w_hh[layer].t()] * (tau - 1)
        return BlockBidiagonalSystem(mats, list(self.d[layer, :-1]), list(rhs), upper=True, symbol="v")

    # -- TriangularSystem interface ------------------------------------------------------------
    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        v = self.to_grid(u)
        out = torch.zeros_like(v)
        out[:-1] += v[1:] @ self.w_ih.unsqueeze(1)        # W_{l+1}^T v_{l+1,t}
        out[:, :-1] += v[:, 1:] @ self.w_hh.unsqueeze(1)  # U_l^T v_{l,t+1}
        return self.to_blocks(self.d * out)

    def dense_blocks(self, sample: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        sample = self._check_sample(sample)
        k, tau = self.grid_shape
        for l in range(k):
            for t in range(tau):
                d = self.d[l, t, sample].unsqueeze(-1)
                if l + 1 < k:
                    yield self.index(l, t), self.index(l + 1, t), d * self.w_ih[l].t()
                if t + 1 < tau:
                    yield self.index(l, t), self.index(l, t + 1), d * self.w_hh[l].t()

    def __repr__(self) -> str:
        k, tau = self.grid_shape
        return (f"RNNSystem(upper, k={k}, tau={tau}, n={self.d.shape[-1]}, order={self.order!r}, "
                f"batch={self.batch_size}, dtype={self.dtype}, device={self.device})")
