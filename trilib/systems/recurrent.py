"""The forward pass of a recurrent network as a nonlinear lower system over time (docs/theory.md §7).

Layer ``l`` of a recurrent network carries a state ``s_{l,t}`` (``h`` for ``nn.RNN`` and
``nn.GRU``, ``(h, c)`` for ``nn.LSTM``) computed by its cell from the layer's input and the
previous state::

    s_{l,t} = cell_l(x_{l,t}, s_{l,t-1}),    x_{0,t} = x_t,   x_{l,t} = h(s_{l-1,t}),   s_{l,-1} = s0_l

Written ``F(s) = s - N(s) = 0`` this is a lower triangular system on the ``k x τ`` grid; its
Jacobian has the blocks ``∂cell/∂s`` (time) and ``∂cell/∂x`` (depth). Forward substitution is the
ordinary recurrence; Newton's method solves each layer's chain over time with one parallel scan per
iteration.

The system does not know which cell it holds. A cell is any object with
``state_size`` (m), ``hidden_size`` (n: ``h`` is the first n entries of the state), and, batched
over leading dimensions:

* ``project(x)``: the part of the cell that depends on the input alone (e.g. ``W_ih x + b_ih``),
  computed once per layer;
* ``step(xp, s)``: the next state from a projected input and the previous state;
* ``state_jacobian(xp, s, diagonal=False)``: ``∂step/∂s``, ``(..., m, m)``, or only its diagonal
  ``(..., m)``;
* ``input_jacobian(xp, s)``: ``∂step/∂x``, ``(..., m, n_in)``;

such as the cells of :mod:`trilib.gated`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .base import TriangularSystem
from .vector import BlockVector

__all__ = ["RecurrentForwardSystem"]


class RecurrentForwardSystem(TriangularSystem):
    """The forward pass of a k-layer recurrent network over τ steps as ``F(s) = 0`` (docs/theory.md §7).

    ``F_{l,t}(s) = s_{l,t} - cell_l(x_{l,t}, s_{l,t-1})``, unknowns ordered layer by layer (block
    row ``l*τ + t``), lower triangular: row ``(l, t)`` reads ``s_{l,t-1}`` (time) and
    ``s_{l-1,t}`` (depth). ``rhs`` is zero; :meth:`apply_offdiagonal` is the nonlinear map ``N``.

    Args:
        cells: one cell per layer (see the module docstring for the interface).
        x: the input sequence, time-major ``(τ, batch, n_in)``.
        s0: the initial states ``(k, batch, m)``.
        output: optional ``grid -> module output`` map, applied by :meth:`output` to the solved
            ``(k, τ, batch, m)`` grid (the builder gives what the module returns).

    Example:
        >>> import torch, trilib
        >>> gru = torch.nn.GRU(2, 3, num_layers=2, dtype=torch.float64)
        >>> S = trilib.forward_system(gru, torch.randn(5, 1, 2, dtype=torch.float64))
        >>> S.grid_shape, S.k, S.upper
        ((2, 5), 10, False)
    """

    upper = False
    symbol = "s"

    def __init__(self, cells: Sequence, x: torch.Tensor, s0: torch.Tensor,
                 output: Callable[[torch.Tensor], object] | None = None):
        self.cells = list(cells)
        if x.dim() != 3 or s0.dim() != 3:
            raise ValueError(f"x must be (τ, batch, n_in) and s0 (k, batch, m), got shapes "
                             f"{tuple(x.shape)} and {tuple(s0.shape)}")
        k, batch, m = s0.shape
        if len(self.cells) != k or x.shape[1] != batch:
            raise ValueError(f"{len(self.cells)} cells and a batch of {x.shape[1]} do not match s0 of "
                             f"shape {tuple(s0.shape)}")
        if any(c.state_size != m for c in self.cells):
            raise ValueError(f"every cell must have state_size {m}, got {[c.state_size for c in self.cells]}")
        self.x, self.s0, self._output = x, s0, output
        self.rhs = tuple(x.new_zeros(k * x.shape[0], batch, m).unbind(0))
        self._point = None

    # -- the grid ----------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(k, τ)``: layers and time steps."""
        return self.s0.shape[0], self.x.shape[0]

    @property
    def state_size(self) -> int:
        return self.s0.shape[-1]

    def index(self, l: int, t: int) -> int:
        """Block row of ``s_{l,t}`` (0-based)."""
        return l * self.x.shape[0] + t

    def to_blocks(self, grid: torch.Tensor) -> BlockVector:
        """A ``(k, τ, batch, m)`` grid as its k·τ blocks (views of one stack)."""
        return BlockVector.from_stack(grid.reshape(-1, *grid.shape[2:]))

    def to_grid(self, u: Sequence[torch.Tensor]) -> torch.Tensor:
        """The k·τ blocks as a ``(k, τ, batch, m)`` grid."""
        self._check_solution(u)
        return BlockVector.of(u).stacked().reshape(*self.grid_shape, *u[0].shape)

    def layer_input(self, l: int, grid: torch.Tensor) -> torch.Tensor:
        """The input sequence of layer ``l``: ``x`` for the first, else ``h`` of layer ``l - 1``
        in ``grid`` (``(τ, batch, n_in)``)."""
        return self.x if l == 0 else grid[l - 1, ..., : self.cells[l - 1].hidden_size]

    def previous(self, l: int, states: torch.Tensor) -> torch.Tensor:
        """``s_{l,t-1}`` for every t, from layer ``l``'s states ``(τ, batch, m)``."""
        return torch.cat([self.s0[l].unsqueeze(0), states[:-1]])

    def output(self, solution: Sequence[torch.Tensor]):
        """What the module returns, from a solution (e.g. ``(output, h_n)``), or the grid."""
        grid = self.to_grid(solution)
        return grid if self._output is None else self._output(grid)

    # -- solutions -------------------------------------------------------------------------------
    def recurrence(self) -> torch.Tensor:
        """Forward substitution, i.e. the ordinary recurrence, layer by layer and step by step:
        the ``(k, τ, batch, m)`` grid of states."""
        k, tau = self.grid_shape
        grid = self.x.new_empty(k, tau, *self.s0.shape[1:])
        with torch.no_grad():
            for l, cell in enumerate(self.cells):
                xp, s = cell.project(self.layer_input(l, grid)), self.s0[l]
                for t in range(tau):
                    s = grid[l, t] = cell.step(xp[t], s)
        return grid

    # -- TriangularSystem interface ------------------------------------------------------------
    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``N(s)_{l,t} = cell_l(x_{l,t}, s_{l,t-1})`` for every row at once (nonlinear)."""
        grid = self.to_grid(u)
        with torch.no_grad():
            out = torch.stack([cell.step(cell.project(self.layer_input(l, grid)), self.previous(l, grid[l]))
                               for l, cell in enumerate(self.cells)])
        return list(self.to_blocks(out))

    def dense_blocks(self, sample: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The Jacobian's blocks at the forward solution: ``∂cell/∂s`` at ``(l*τ+t, l*τ+t-1)`` and
        ``∂cell/∂x · [I 0]`` (through ``h`` only) at ``(l*τ+t, (l-1)*τ+t)``."""
        sample = self._check_sample(sample)
        if self._point is None:
            self._point = self.recurrence()
        grid, tau, m = self._point, self.x.shape[0], self.state_size
        with torch.no_grad():
            for l, cell in enumerate(self.cells):
                xp = cell.project(self.layer_input(l, grid))[:, sample]
                prev = self.previous(l, grid[l])[:, sample]
                time = cell.state_jacobian(xp, prev)
                depth = cell.input_jacobian(xp, prev) if l else None
                for t in range(tau):
                    if t:
                        yield self.index(l, t), self.index(l, t - 1), time[t]
                    if l:
                        block = depth.new_zeros(m, m)
                        block[:, : depth.shape[-1]] = depth[t]
                        yield self.index(l, t), self.index(l - 1, t), block

    def __repr__(self) -> str:
        k, tau = self.grid_shape
        return (f"RecurrentForwardSystem(lower, k={k}, tau={tau}, m={self.state_size}, "
                f"batch={self.batch_size}, dtype={self.dtype}, device={self.device})")
