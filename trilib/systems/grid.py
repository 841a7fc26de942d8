"""The backward system of any recurrent network: a unit upper triangular system on the k x τ grid
of layers and time steps, its coupling blocks given as dense per-sample matrices
(docs/theory.md §2, §7).

:class:`GridSystem` is the general case: the blocks are whatever Jacobians the cell has (a GRU's
``n x n`` state Jacobians, an LSTM's ``2n x 2n`` ones for the state ``(h, c)``).
:class:`~trilib.systems.RNNSystem` is the special case whose blocks are factorised,
``D_{l,t} U_l^T`` and ``D_{l,t} W_{l+1}^T``, and never materialised unless a solver asks.
Both expose the same grid interface (:meth:`GridSystem.couple`, :meth:`GridSystem.time_blocks`,
:meth:`GridSystem.depth_blocks`), so every RNN solver has one code path for both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .._checks import check_int
from .base import TriangularSystem
from .bidiagonal import BlockBidiagonalSystem
from .vector import BlockVector

__all__ = ["GridSystem", "ORDERS"]

#: The two orderings of the unknowns ``v_{l,t}``.
ORDERS = ("layer", "time")


def _mv(mats: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector products ``mats @ v`` with ``v`` as row vectors ``(..., m)``."""
    return (mats @ v.unsqueeze(-1)).squeeze(-1)


class GridSystem(TriangularSystem):
    """The backward system ``(I - N) v = r`` of a k-layer recurrent network over τ time steps,
    with dense per-sample coupling blocks (docs/theory.md §2, §7).

    The unknowns ``v_{l,t}`` (0-based ``l``, ``t``) form a ``k x τ`` grid. Row ``(l, t)`` of ``N``
    has two blocks: ``P_{l,t}`` towards ``v_{l,t+1}`` (time) and ``E_{l,t}`` towards
    ``v_{l+1,t}`` (depth). For a gated cell with state ``s`` (``h`` for a GRU, ``(h, c)`` for an
    LSTM) and ``v_{l,t} = dE/ds_{l,t}``, they are the transposed state Jacobians
    ``P_{l,t} = (∂s_{l,t+1}/∂s_{l,t})^T`` and ``E_{l,t} = (∂s_{l+1,t}/∂s_{l,t})^T``, and ``r`` is
    the loss gradient that reaches each state directly. Both couplings point to a larger index in
    either ordering (``order="layer"``: block row ``l*τ + t``; ``order="time"``: ``t*k + l``), so
    the system is upper triangular in both.

    Args:
        time: ``P``, shape ``(k, τ-1, batch, m, m)``: ``time[l, t]`` couples ``v_{l,t}`` to
            ``v_{l,t+1}``.
        depth: ``E``, shape ``(k-1, τ, batch, m, m)``: ``depth[l, t]`` couples ``v_{l,t}`` to
            ``v_{l+1,t}``.
        r: the right-hand side on the grid, ``(k, τ, batch, m)``.
        order: ``"layer"`` or ``"time"``.

    Example:
        >>> import torch
        >>> k, tau, b, m = 2, 3, 1, 2
        >>> S = GridSystem(torch.randn(k, tau - 1, b, m, m), torch.randn(k - 1, tau, b, m, m),
        ...                torch.randn(k, tau, b, m))
        >>> S.to_dense().shape, S.grid_shape
        (torch.Size([12, 12]), (2, 3))
    """

    upper = True
    symbol = "v"
    #: True when the blocks are stored factorised and a direct solver must form them first.
    factorised = False

    def __init__(self, time: torch.Tensor, depth: torch.Tensor, r: torch.Tensor, order: str = "layer"):
        if not isinstance(r, torch.Tensor) or r.dim() != 4:
            raise ValueError(f"r must be a (k, τ, batch, m) tensor, got "
                             f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
        k, tau, batch, m = r.shape
        if k < 1 or tau < 1 or batch < 1:
            raise ValueError(f"the grid needs k >= 1, τ >= 1 and batch >= 1, got r.shape={tuple(r.shape)}")
        for name, blocks, shape in (("time", time, (k, tau - 1, batch, m, m)),
                                    ("depth", depth, (k - 1, tau, batch, m, m))):
            if not isinstance(blocks, torch.Tensor) or tuple(blocks.shape) != shape:
                got = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
                raise ValueError(f"{name} has shape {got}, expected {shape}")
            if blocks.dtype != r.dtype or blocks.device != r.device:
                raise ValueError(f"{name} is {blocks.dtype} on {blocks.device} but r is {r.dtype} "
                                 f"on {r.device}")
        # Stored padded to the whole grid: P_{l,τ-1} = 0 and E_{k-1,t} = 0 (no neighbour there).
        self.p = torch.cat([time, time.new_zeros(k, 1, batch, m, m)], 1)
        self.e = torch.cat([depth, depth.new_zeros(1, tau, batch, m, m)], 0)
        self._set_grid(r, order)

    def _set_grid(self, r: torch.Tensor, order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.order = order
        self.r = r
        self.rhs = self.to_blocks(r).blocks

    # -- the grid ----------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(k, τ)``: layers and time steps (``self.k`` is the number of block rows, k·τ)."""
        return tuple(self.r.shape[:2])

    @property
    def layers(self) -> int:
        return self.r.shape[0]

    @property
    def tau(self) -> int:
        return self.r.shape[1]

    @property
    def state_size(self) -> int:
        """``m``, the width of every block."""
        return self.r.shape[-1]

    def index(self, l, t):
        """Block row of unknown ``v_{l,t}`` (0-based) in this system's ordering."""
        return l * self.tau + t if self.order == "layer" else t * self.layers + l

    def to_blocks(self, grid: torch.Tensor) -> BlockVector:
        """A ``(k, τ, batch, m)`` grid as the blocks in this ordering (views of one stack)."""
        seq = grid if self.order == "layer" else grid.transpose(0, 1)
        return BlockVector.from_stack(seq.reshape(-1, *grid.shape[2:]))

    def to_grid(self, u: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`to_blocks`."""
        self._check_solution(u)
        k, tau = self.grid_shape
        flat = BlockVector.of(u).stacked()
        if self.order == "layer":
            return flat.reshape(k, tau, *flat.shape[1:])
        return flat.reshape(tau, k, *flat.shape[1:]).transpose(0, 1)

    # -- the grid interface the RNN solvers use -------------------------------------------------
    def time_blocks(self) -> torch.Tensor:
        """Every ``P_{l,t}`` as one ``(k, τ, batch, m, m)`` tensor (``P_{l,τ-1} = 0``)."""
        return self.p

    def depth_blocks(self) -> torch.Tensor:
        """Every ``E_{l,t}`` as one ``(k, τ, batch, m, m)`` tensor (``E_{k-1,t} = 0``)."""
        return self.e

    def couple(self, ls, ts, v_depth: torch.Tensor, v_time: torch.Tensor) -> torch.Tensor:
        """Row ``(l, t)`` of ``N v`` for the rows ``(ls, ts)`` (two ints or two index tensors):
        ``E_{l,t} v_{l+1,t} + P_{l,t} v_{l,t+1}``, given ``v_depth = v_{l+1,t}`` and
        ``v_time = v_{l,t+1}`` (zeros where there is no neighbour)."""
        return _mv(self.e[ls, ts], v_depth) + _mv(self.p[ls, ts], v_time)

    def time_system(self, layer: int = 0, incoming: torch.Tensor | None = None) -> BlockBidiagonalSystem:
        """Row ``layer`` of the layer ordering as a :class:`BlockBidiagonalSystem` over time:
        ``u_t - P_{l,t} u_{t+1} = r_{l,t} + E_{l,t} v_{l+1,t}`` with ``incoming = v_{l+1}`` as
        ``(τ, batch, m)`` (omit it for the top layer). For ``k = 1`` it is the whole system, so
        every FNN direct method applies along time.
        """
        rhs = self._layer_rhs(layer, incoming)
        return BlockBidiagonalSystem(list(self.p[layer, :-1]), [None] * (self.tau - 1), list(rhs),
                                     upper=True, symbol="v")

    def _layer_rhs(self, layer: int, incoming: torch.Tensor | None) -> torch.Tensor:
        k = self.layers
        check_int("layer", layer, 0, k - 1, error=IndexError, span=f"in [0, {k})")
        rhs = self.r[layer]
        if layer < k - 1:
            if incoming is None or incoming.shape != rhs.shape:
                got = None if incoming is None else tuple(incoming.shape)
                raise ValueError(f"incoming must be v_{{l+1}} of shape {tuple(rhs.shape)}, got {got}")
            rhs = rhs + self.couple(layer, slice(None), incoming, torch.zeros_like(incoming))
        return rhs

    # -- TriangularSystem interface ------------------------------------------------------------
    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        v = self.to_grid(u)
        v_depth, v_time = torch.zeros_like(v), torch.zeros_like(v)
        v_depth[:-1], v_time[:, :-1] = v[1:], v[:, 1:]
        return list(self.to_blocks(self.couple(slice(None), slice(None), v_depth, v_time)))

    def _block(self, kind: str, l: int, t: int, sample: int) -> torch.Tensor:
        return (self.e if kind == "depth" else self.p)[l, t, sample]

    def dense_blocks(self, sample: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        sample = self._check_sample(sample)
        k, tau = self.grid_shape
        for l in range(k):
            for t in range(tau):
                if l + 1 < k:
                    yield self.index(l, t), self.index(l + 1, t), self._block("depth", l, t, sample)
                if t + 1 < tau:
                    yield self.index(l, t), self.index(l, t + 1), self._block("time", l, t, sample)

    def _converted(self, convert) -> GridSystem:
        return GridSystem(convert(self.p[:, :-1]), convert(self.e[:-1]), convert(self.r), order=self.order)

    def with_order(self, order: str) -> GridSystem:
        """The same system with the unknowns in the other ordering (the blocks are shared)."""
        out = object.__new__(type(self))
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("block_sizes", "offsets")})
        out._set_grid(self.r, order)
        return out

    def __repr__(self) -> str:
        k, tau = self.grid_shape
        return (f"{type(self).__name__}(upper, k={k}, tau={tau}, m={self.state_size}, order={self.order!r}, "
                f"batch={self.batch_size}, dtype={self.dtype}, device={self.device})")
