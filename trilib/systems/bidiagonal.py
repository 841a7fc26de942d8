"""The FNN pattern (docs/theory.md §1): a unit block bi-diagonal system, batched over samples."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .._checks import check_memory
from .base import TriangularSystem

__all__ = ["BlockBidiagonalSystem"]


def _as_block(name: str, scale: torch.Tensor | None, mat: torch.Tensor, rows: int, cols: int,
              batch: int) -> None:
    expected = (rows, cols)
    if mat.shape[-2:] != expected or mat.dim() not in (2, 3) or (mat.dim() == 3 and mat.shape[0] != batch):
        raise ValueError(f"{name} has shape {tuple(mat.shape)} but block widths say {expected} "
                         f"(or {(batch, *expected)} per sample)")
    if scale is not None and scale.shape != (batch, rows):
        raise ValueError(f"the row scaling of {name} has shape {tuple(scale.shape)}, "
                         f"expected {(batch, rows)}")


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
    method asks for it with :meth:`block`.

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
            _as_block(f"B_{l + 1}", d, m, rows, cols, batch)
        self.mats = tuple(mats)
        self.scales = tuple(scales)
        self.rhs = rhs
        self.upper = bool(upper)
        self.symbol = symbol

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
        return self.batch_size * sum(a * b for a, b in zip(sizes, sizes[1:])) * self.rhs[0].element_size()

    def apply_block(self, l: int, u: torch.Tensor) -> torch.Tensor:
        """``B_l u`` for a ``(batch, cols)`` tensor ``u`` without materialising ``B_l``."""
        m, d = self.mats[l], self.scales[l]
        out = u @ m.transpose(-1, -2) if m.dim() == 2 else torch.bmm(m, u.unsqueeze(-1)).squeeze(-1)
        return out if d is None else out * d

    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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
        return BlockBidiagonalSystem([convert(m) for m in self.mats], [convert(d) for d in self.scales],
                                     [convert(r) for r in self.rhs], upper=self.upper, symbol=self.symbol)

    def with_rhs(self, rhs: Sequence[torch.Tensor]) -> BlockBidiagonalSystem:
        """The same matrix with another right-hand side."""
        return BlockBidiagonalSystem(self.mats, self.scales, rhs, upper=self.upper, symbol=self.symbol)
