"""The FNN pattern (docs/theory.md §1): a unit block bi-diagonal system, batched over samples.

Storage. The blocks are kept as **runs**: maximal runs of consecutive blocks of one shape, each
a stacked tensor (``(g, rows, cols)`` shared by the batch or ``(g, batch, rows, cols)`` per
sample, with a ``(g, batch, rows)`` row scaling or ``None``); the right-hand side likewise as
runs of consecutive rows of one width, ``(g, batch, n)``. A deep MLP of equal widths is one run
of each, so a solver sets up with a handful of tensor operations whatever ``k`` is. The per-block
views ``mats``, ``scales`` and ``rhs`` are there too, for code that works block by block; they
are made from the runs when first asked for (or kept, when the system was built from lists).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

import torch

from .._checks import check_memory
from .._numerics import runs_of
from .base import TriangularSystem

__all__ = ["BlockBidiagonalSystem", "BlockRun", "RowRun"]


@dataclass(frozen=True)
class BlockRun:
    """Coupling blocks ``start .. stop-1`` (0-based), all of one shape: ``B_l = diag(d_l) M_l``.

    Attributes:
        start, stop: the blocks covered.
        mats: ``(g, rows, cols)`` (shared by the batch) or ``(g, batch, rows, cols)``.
        scales: ``(g, batch, rows)`` row scalings, or ``None``.
    """

    start: int
    stop: int
    mats: torch.Tensor
    scales: torch.Tensor | None

    @property
    def shared(self) -> bool:
        """True when the matrices are shared by every sample of the batch."""
        return self.mats.dim() == 3

    def dense(self) -> torch.Tensor:
        """The blocks ``(g, batch, rows, cols)`` (a broadcast view when nothing is scaled)."""
        m = self.mats.unsqueeze(1) if self.shared else self.mats
        return m if self.scales is None else self.scales.unsqueeze(-1) * m

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        """``B_l u_l`` for a stack ``u`` of shape ``(g, batch, cols)``: ``(g, batch, rows)``."""
        out = u @ self.mats.mT if self.shared else (self.mats @ u.unsqueeze(-1)).squeeze(-1)
        return out if self.scales is None else out * self.scales


@dataclass(frozen=True)
class RowRun:
    """Right-hand-side rows ``start .. stop-1`` of one width: ``rhs`` is ``(g, batch, n)``."""

    start: int
    stop: int
    rhs: torch.Tensor

    @property
    def width(self) -> int:
        return self.rhs.shape[-1]


def _check_block(name: str, scale: torch.Tensor | None, mat: torch.Tensor, rows: int, cols: int,
                 batch: int) -> None:
    expected = (rows, cols)
    if mat.shape[-2:] != expected or mat.dim() not in (2, 3) or (mat.dim() == 3 and mat.shape[0] != batch):
        raise ValueError(f"{name} has shape {tuple(mat.shape)} but block widths say {expected} "
                         f"(or {(batch, *expected)} per sample)")
    if scale is not None and scale.shape != (batch, rows):
        raise ValueError(f"the row scaling of {name} has shape {tuple(scale.shape)}, "
                         f"expected {(batch, rows)}")


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One stacked tensor; a block repeated (e.g. an RNN's ``U^T`` at every time) is expanded."""
    first = tensors[0]
    if all(t is first for t in tensors):
        return first.unsqueeze(0).expand(len(tensors), *first.shape)
    return torch.stack(list(tensors))


class BlockBidiagonalSystem(TriangularSystem):
    """A unit block bi-diagonal system (docs/theory.md §1), batched over samples.

    With 1-based block rows ``l = 1..k`` and coupling blocks ``B_1 .. B_{k-1}``:

    * ``upper=True`` (backward propagation):  ``u_l - B_l u_{l+1} = r_l`` for ``l < k``,
      ``u_k = r_k``. ``B_l`` sits at block position ``(l, l+1)`` and is ``n_l x n_{l+1}``.
    * ``upper=False`` (forward propagation): ``u_1 = r_1``, ``u_{l+1} - B_l u_l = r_{l+1}``.
      ``B_l`` sits at ``(l+1, l)`` and is ``n_{l+1} x n_l``.

    Each block is stored factorised as ``B_l = diag(d_l) M_l``: ``M_l`` is shared by the batch
    (2-D) or per sample (3-D), and ``d_l`` is a ``(batch, rows)`` row scaling or ``None``. For an
    FNN, ``M_l = W_{l+1}^T`` and ``d_l = f_l'(y_l)``, so a block is never materialised unless a
    method asks for it with :meth:`block`. Builders that have the blocks stacked already use
    :meth:`from_stacks` (no per-block Python work).

    Args:
        mats: the ``k - 1`` matrices ``M_l`` (python list, index ``l - 1``).
        scales: the ``k - 1`` row scalings ``d_l`` or ``None`` entries.
        rhs: the ``k`` right-hand-side blocks, each ``(batch, n_l)``.
        upper: which triangle the coupling blocks live in.
        symbol: the name of the unknowns in plots.
    """

    def __init__(self, mats: Sequence[torch.Tensor], scales: Sequence[torch.Tensor | None],
                 rhs: Sequence[torch.Tensor], *, upper: bool, symbol: str = "u"):
        rhs = tuple(rhs)
        if not rhs:
            raise ValueError("a block bi-diagonal system needs at least one block row (k >= 1)")
        if len(mats) != len(rhs) - 1 or len(scales) != len(rhs) - 1:
            raise ValueError(f"k = {len(rhs)} block rows need {len(rhs) - 1} coupling blocks, "
                             f"got {len(mats)} matrices and {len(scales)} scalings")
        batch = rhs[0].shape[0]
        for i, r in enumerate(rhs):
            if r.dim() != 2 or r.shape[0] != batch:
                raise ValueError(f"rhs block {i} has shape {tuple(r.shape)}, expected ({batch}, n)")
            if r.dtype != rhs[0].dtype or r.device != rhs[0].device:
                raise ValueError(f"rhs block {i} is {r.dtype} on {r.device}, "
                                 f"block 0 is {rhs[0].dtype} on {rhs[0].device}")
        sizes = [r.shape[1] for r in rhs]
        for l, (m, d) in enumerate(zip(mats, scales)):
            rows, cols = (sizes[l], sizes[l + 1]) if upper else (sizes[l + 1], sizes[l])
            _check_block(f"B_{l + 1}", d, m, rows, cols, batch)
        self.__dict__.update(mats=tuple(mats), scales=tuple(scales), rhs=rhs,
                             block_sizes=tuple(sizes))
        self._k, self._batch, self._like = len(rhs), batch, rhs[0]
        self.upper = bool(upper)
        self.symbol = symbol

    @classmethod
    def from_stacks(cls, mats: Sequence[torch.Tensor], scales: Sequence[torch.Tensor | None],
                    rhs: Sequence[torch.Tensor], *, upper: bool, symbol: str = "u"
                    ) -> BlockBidiagonalSystem:
        """The system from stacked runs: no Python work per block.

        Args:
            mats: runs of consecutive coupling matrices, each ``(g, rows, cols)`` (shared) or
                ``(g, batch, rows, cols)``; their lengths ``g`` add up to ``k - 1``.
            scales: one entry per run of ``mats``: ``(g, batch, rows)`` or ``None``.
            rhs: runs of consecutive right-hand-side rows, each ``(g, batch, n)``; the lengths
                add up to ``k``.
            upper, symbol: as for the constructor.

        Example:
            >>> import torch
            >>> U = BlockBidiagonalSystem.from_stacks([torch.eye(2).expand(3, 2, 2)], [None],
            ...                                       [torch.ones(4, 1, 2)], upper=True)
            >>> U.k, U.block_sizes, len(U.mats)
            (4, (2, 2, 2, 2), 3)
        """
        if not rhs or any(r.dim() != 3 or r.shape[0] == 0 for r in rhs):
            raise ValueError("rhs must be a non-empty list of (g, batch, n) stacks with g >= 1, got "
                             f"shapes {[tuple(r.shape) for r in rhs]}")
        first = rhs[0]
        batch, row_runs, start = first.shape[1], [], 0
        for r in rhs:
            if r.shape[1] != batch or r.dtype != first.dtype or r.device != first.device:
                raise ValueError(f"rhs stacks disagree: {tuple(r.shape)} {r.dtype} on {r.device} "
                                 f"after {tuple(first.shape)} {first.dtype} on {first.device}")
            row_runs.append(RowRun(start, start + r.shape[0], r))
            start += r.shape[0]
        k = start
        if len(scales) != len(mats):
            raise ValueError(f"{len(mats)} runs of matrices need as many scalings, got {len(scales)}")
        self = cls.__new__(cls)
        self._k, self._batch, self._like = k, batch, first
        self.upper, self.symbol = bool(upper), symbol
        self._row_runs = tuple(row_runs)
        starts = [run.start for run in row_runs]
        block_runs, start = [], 0
        for m, d in zip(mats, scales):
            g = m.shape[0] if m.dim() in (3, 4) else 0
            stop = start + g
            if (g == 0 or (m.dim() == 4 and m.shape[1] != batch) or m.dtype != first.dtype
                    or m.device != first.device):
                raise ValueError(f"a run of matrices must be (g >= 1, [batch = {batch},] rows, cols) "
                                 f"of {first.dtype} on {first.device}, got {tuple(m.shape)} {m.dtype} "
                                 f"on {m.device}")
            rows, cols = (start, start + 1) if upper else (start + 1, start)
            for name, row0, want in (("rows", rows, m.shape[-2]), ("columns", cols, m.shape[-1])):
                run = row_runs[bisect_right(starts, row0) - 1] if row0 < k else None
                if run is None or run.stop < row0 + g or run.width != want:
                    raise ValueError(f"blocks {start}..{stop - 1}: {want} {name} do not match the "
                                     f"widths of the block rows {row0}..{row0 + g - 1}")
            if d is not None and d.shape != (g, batch, m.shape[-2]):
                raise ValueError(f"the scalings of blocks {start}..{stop - 1} have shape "
                                 f"{tuple(d.shape)}, expected {(g, batch, m.shape[-2])}")
            block_runs.append(BlockRun(start, stop, m, d))
            start = stop
        if start != k - 1:
            raise ValueError(f"k = {k} block rows need {k - 1} coupling blocks, the runs hold {start}")
        self._block_runs = tuple(block_runs)
        return self

    # -- sizes (without listing the blocks) ------------------------------------------------------
    @property
    def k(self) -> int:
        return self._k

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def dtype(self) -> torch.dtype:
        return self._like.dtype

    @property
    def device(self) -> torch.device:
        return self._like.device

    @cached_property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(chain.from_iterable((run.width,) * (run.stop - run.start) for run in self.row_runs))

    # -- the two storages ------------------------------------------------------------------------
    @cached_property
    def block_runs(self) -> tuple[BlockRun, ...]:
        """The coupling blocks as runs of one shape (see the module doc)."""
        if "_block_runs" in self.__dict__:
            return self._block_runs
        keys = [(tuple(m.shape), d is None) for m, d in zip(self.mats, self.scales)]
        return tuple(BlockRun(a, b, _stack(self.mats[a:b]),
                              None if keys[a][1] else _stack(self.scales[a:b]))
                     for a, b in runs_of(keys))

    @cached_property
    def uniform_run(self) -> BlockRun | None:
        """All ``k - 1`` blocks as one run, when they are ``n x n`` matrices shared by the batch
        and all scaled (or none): adjacent runs concatenated once. ``None`` otherwise (blocks of
        several widths, per-sample matrices) or when ``k = 1``."""
        runs = self.block_runs
        if not runs or len(set(self.block_sizes)) != 1 or not all(run.shared for run in runs):
            return None
        if len({run.scales is None for run in runs}) != 1:
            return None
        if len(runs) == 1:
            return runs[0]
        scales = None if runs[0].scales is None else torch.cat([run.scales for run in runs])
        return BlockRun(0, self.k - 1, torch.cat([run.mats for run in runs]), scales)

    @cached_property
    def row_runs(self) -> tuple[RowRun, ...]:
        """The right-hand side as runs of rows of one width."""
        if "_row_runs" in self.__dict__:
            return self._row_runs
        return tuple(RowRun(a, b, torch.stack(self.rhs[a:b]))
                     for a, b in runs_of([r.shape[-1] for r in self.rhs]))

    @cached_property
    def mats(self) -> tuple[torch.Tensor, ...]:
        """The ``k - 1`` matrices ``M_l`` (views of the runs)."""
        return tuple(chain.from_iterable(run.mats.unbind(0) for run in self.block_runs))

    @cached_property
    def scales(self) -> tuple[torch.Tensor | None, ...]:
        """The ``k - 1`` row scalings ``d_l`` or ``None`` (views of the runs)."""
        return tuple(chain.from_iterable((None,) * (run.stop - run.start) if run.scales is None
                                         else run.scales.unbind(0) for run in self.block_runs))

    @cached_property
    def rhs(self) -> tuple[torch.Tensor, ...]:
        """The ``k`` right-hand-side blocks ``(batch, n_l)`` (views of the runs)."""
        return tuple(chain.from_iterable(run.rhs.unbind(0) for run in self.row_runs))

    # -- the blocks -------------------------------------------------------------------------
    def row_col(self, l: int) -> tuple[int, int]:
        """0-based block position ``(row, col)`` of coupling block ``l`` (0-based)."""
        return (l, l + 1) if self.upper else (l + 1, l)

    def block(self, l: int) -> torch.Tensor:
        """Coupling block ``l`` (0-based) as a dense ``(batch, rows, cols)`` tensor."""
        m, d = self.mats[l], self.scales[l]
        if m.dim() == 2:
            m = m.expand(self.batch_size, *m.shape)
        return m if d is None else d.unsqueeze(-1) * m

    def blocks(self) -> list[torch.Tensor]:
        """All coupling blocks, dense and batched (memory-checked first)."""
        check_memory(self.dense_block_bytes(), f"materialising the {self.k - 1} coupling blocks",
                     "Use method='sequential', which never materialises them.")
        return [self.block(l).contiguous() for l in range(self.k - 1)]

    def dense_block_bytes(self) -> int:
        """Bytes needed to hold every coupling block densely for the whole batch."""
        sizes = self.block_sizes
        return self.batch_size * sum(a * b for a, b in zip(sizes, sizes[1:])) * self._like.element_size()

    def apply_block(self, l: int, u: torch.Tensor) -> torch.Tensor:
        """``B_l u`` for a ``(batch, cols)`` tensor ``u`` without materialising ``B_l``."""
        m, d = self.mats[l], self.scales[l]
        out = u @ m.transpose(-1, -2) if m.dim() == 2 else torch.bmm(m, u.unsqueeze(-1)).squeeze(-1)
        return out if d is None else out * d

    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``N u``: one batched product per run of blocks when every row has one width."""
        if self.k > 1 and len({run.width for run in self.row_runs}) == 1:
            stacked = torch.stack(list(u))
            out = torch.zeros_like(stacked)
            shift = 1 if self.upper else 0          # block l reads row l + shift, writes the other
            for run in self.block_runs:
                a, b = run.start, run.stop
                out[a + 1 - shift:b + 1 - shift] = run.apply(stacked[a + shift:b + shift])
            return list(out.unbind(0))
        out = [torch.zeros_like(ui) for ui in u]
        for l in range(self.k - 1):
            row, col = self.row_col(l)
            out[row] = out[row] + self.apply_block(l, u[col])
        return out

    def dense_blocks(self, sample: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        sample = self._check_sample(sample)
        for l in range(self.k - 1):
            m, d = self.mats[l], self.scales[l]
            m = m if m.dim() == 2 else m[sample]
            yield (*self.row_col(l), m if d is None else d[sample].unsqueeze(-1) * m)

    def _converted(self, convert) -> BlockBidiagonalSystem:
        return BlockBidiagonalSystem.from_stacks(
            [convert(run.mats) for run in self.block_runs], [convert(run.scales) for run in self.block_runs],
            [convert(run.rhs) for run in self.row_runs], upper=self.upper, symbol=self.symbol)

    def with_rhs(self, rhs: Sequence[torch.Tensor]) -> BlockBidiagonalSystem:
        """The same matrix with another right-hand side."""
        return BlockBidiagonalSystem(self.mats, self.scales, rhs, upper=self.upper, symbol=self.symbol)
