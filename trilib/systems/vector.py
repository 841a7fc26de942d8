"""A block vector ``u = (u_1, ..., u_k)``: what every solve returns.

A solution has one block per block row, ``u_i`` of shape ``(batch, n_i)``. The parallel solvers
compute all of them in one stacked tensor ``(k, batch, n)`` (``n = max n_i``, zero-padded), and
handing that stack back as ``k`` separate tensors costs about half a microsecond per tensor
object: at ``k = 4096`` that is a third of a direct solve. :class:`BlockVector` therefore keeps
whichever form the solver made and makes the other one only when it is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .._numerics import runs_of

__all__ = ["BlockVector"]


class BlockVector(Sequence):
    """The ``k`` blocks of a solution, each ``(batch, n_i)``: a read-only sequence of tensors.

    Index it (``v[i]``, ``v[-1]``; a slice gives a list), iterate it, take ``len(v)``, unpack it,
    or make a list with ``list(v)``. ``torch.stack`` and ``torch.cat`` accept only lists and
    tuples: write ``torch.cat(list(v), -1)``, or ``v.stacked(a, b)`` for blocks of one width
    as one ``(b - a, batch, n)`` tensor (a view, when a solver stacked them).

    Example:
        >>> import torch
        >>> v = BlockVector.from_stack(torch.arange(12.).view(3, 2, 2), widths=(2, 2, 1))
        >>> len(v), v[2], [tuple(b.shape) for b in v]
        (3, tensor([[ 8.],
                [10.]]), [(2, 2), (2, 2), (2, 1)])
        >>> v.stacked(0, 2).shape
        torch.Size([2, 2, 2])
    """

    __slots__ = ("_blocks", "_stack", "_widths")

    def __init__(self, blocks: Sequence[torch.Tensor]):
        """Wrap the blocks a solver made one by one (kept as they are, not copied)."""
        self._blocks: tuple[torch.Tensor, ...] | None = tuple(blocks)
        self._stack: torch.Tensor | None = None
        self._widths: tuple[int, ...] | None = None      # read off the blocks when asked for

    @classmethod
    def from_stack(cls, stack: torch.Tensor, widths: Sequence[int] | None = None) -> BlockVector:
        """The blocks ``stack[i, ..., :widths[i]]`` of a ``(k, ..., n)`` stack (no copy).

        ``widths`` defaults to ``n`` for every block; a block narrower than ``n`` is the leading
        part of its row (the rest is padding and never read).
        """
        if not isinstance(stack, torch.Tensor) or stack.dim() < 2:
            raise ValueError("stack must be a tensor (k, ..., n) with one row per block")
        k, n = stack.shape[0], stack.shape[-1]
        widths = (n,) * k if widths is None else tuple(widths)
        if len(widths) != k or (k and not 0 <= min(widths) <= max(widths) <= n):
            raise ValueError(f"widths must give k = {k} block widths in [0, {n}], got {len(widths)}")
        out = cls.__new__(cls)
        out._blocks, out._stack, out._widths = None, stack, widths
        return out

    @classmethod
    def of(cls, blocks: Sequence[torch.Tensor]) -> BlockVector:
        """``blocks`` as a :class:`BlockVector` (itself when it is one already)."""
        return blocks if isinstance(blocks, BlockVector) else cls(blocks)

    # -- the sequence ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._blocks) if self._blocks is not None else len(self._widths)

    @property
    def widths(self) -> tuple[int, ...]:
        """The width ``n_i`` of every block."""
        if self._widths is None:
            self._widths = tuple(b.shape[-1] for b in self._blocks)
        return self._widths

    def __getitem__(self, index):
        if self._blocks is not None:
            item = self._blocks[index]
            return list(item) if isinstance(index, slice) else item
        if isinstance(index, slice):
            return list(self.blocks[index])
        row = self._stack[index]                  # IndexError for an index out of range
        width = self._widths[index]
        return row if width == row.shape[-1] else row[..., :width]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.blocks)

    def __repr__(self) -> str:
        if not len(self):
            return "BlockVector(k=0)"
        widths = sorted(set(self.widths))
        shown = widths[0] if len(widths) == 1 else f"{widths[0]}..{widths[-1]}"
        first = self[0]
        return (f"BlockVector(k={len(self)}, batch={tuple(first.shape[:-1])}, widths={shown}, "
                f"dtype={first.dtype}, device={first.device})")

    def has_shapes(self, widths: Sequence[int], batch_shape: Sequence[int]) -> bool:
        """Whether block ``i`` has shape ``(*batch_shape, widths[i])`` for every ``i``, answered
        from the stack when there is one (``False`` sends a caller to its block-by-block check)."""
        if self._stack is None:
            return False
        return self._widths == tuple(widths) and self._stack.shape[1:-1] == tuple(batch_shape)

    # -- the stacked form --------------------------------------------------------------------
    @property
    def blocks(self) -> tuple[torch.Tensor, ...]:
        """The ``k`` blocks as tensors (made once, from the stack: one view per block)."""
        if self._blocks is None:
            n, blocks = self._stack.shape[-1], []
            for start, stop in runs_of(self._widths):
                rows, width = self._stack[start:stop], self._widths[start]
                blocks.extend((rows if width == n else rows[..., :width]).unbind(0))
            self._blocks = tuple(blocks)
        return self._blocks

    def stacked(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start .. stop - 1`` (all by default) as one ``(stop - start, batch, n)``
        tensor: a view of the solver's stack when it made one, else a new ``torch.stack``.

        Raises:
            ValueError: the blocks have different widths (they do not stack), or the range is
                empty or outside ``0 .. k``.
        """
        k = len(self)
        stop = k if stop is None else stop
        if not 0 <= start < stop <= k:
            raise ValueError(f"need 0 <= start < stop <= k = {k}, got start={start}, stop={stop}")
        widths = set(self.widths[start:stop])
        if len(widths) != 1:
            raise ValueError(f"blocks {start}..{stop - 1} have widths {sorted(widths)}; only "
                             "blocks of one width stack (use list(v) for the others)")
        if self._stack is None:
            return torch.stack(self._blocks[start:stop])
        rows = self._stack[start:stop]
        (width,) = widths
        return rows if width == rows.shape[-1] else rows[..., :width]

