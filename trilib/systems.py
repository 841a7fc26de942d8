"""Triangular systems ``A u = r`` with a unit block diagonal, batched over samples.

Every system in trilib is written ``A = I - N`` where ``N`` holds the off-diagonal blocks
(strictly upper for backward propagation, strictly lower for forward propagation, THEORY §1-3).
A mini-batch is a batch of independent systems that share the sparsity pattern: each block
carries a leading batch dimension, or is shared by every sample.

:class:`TriangularSystem` holds what every pattern shares (sizes, dense view, residuals);
:class:`BlockBidiagonalSystem` is the FNN pattern of THEORY §1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cached_property

import torch

from ._checks import check_memory

__all__ = ["TriangularSystem", "BlockBidiagonalSystem"]


class TriangularSystem:
    """Base class: a unit block triangular system ``(I - N) u = r``.

    Subclasses set ``rhs`` once, in ``__init__`` (a tuple of ``(batch, n_i)`` tensors, one per
    block row; sizes derived from it are cached), and
    ``upper``, and implement :meth:`apply_offdiagonal` (``N u``) and :meth:`dense_blocks`.

    Attributes:
        rhs: the right-hand side, one ``(batch, n_i)`` tensor per block row.
        upper: True for an upper triangular (backward) system, False for a lower (forward) one.
        symbol: the name of the unknowns in plots (``"v"`` for errors, ``"z"`` for activations).
    """

    rhs: tuple[torch.Tensor, ...]
    upper: bool
    symbol: str = "u"

    # -- sizes -----------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Number of block rows (layers, for an FNN)."""
        return len(self.rhs)

    # Sizes are read inside solver loops: computed once (``rhs`` is set once, in ``__init__``).
    @cached_property
    def block_sizes(self) -> tuple[int, ...]:
        """Width ``n_i`` of every block row."""
        return tuple(r.shape[-1] for r in self.rhs)

    @property
    def batch_size(self) -> int:
        return self.rhs[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.rhs[0].dtype

    @property
    def device(self) -> torch.device:
        return self.rhs[0].device

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Row offset of every block in the dense matrix, plus the total size at the end."""
        out = [0]
        for n in self.block_sizes:
            out.append(out[-1] + n)
        return tuple(out)

    # -- to be provided by subclasses ----------------------------------------------------------
    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``N u`` for a block vector ``u`` (one ``(batch, n_i)`` tensor per block)."""
        raise NotImplementedError

    def dense_blocks(self, sample: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(i, j, N_ij)`` for each structurally non-zero off-diagonal block of one
        sample."""
        raise NotImplementedError

    # -- shared behaviour ------------------------------------------------------------------
    def _check_sample(self, sample: int) -> int:
        if not isinstance(sample, int) or not -self.batch_size <= sample < self.batch_size:
            raise IndexError(f"sample must be an int in [0, {self.batch_size}), got {sample!r}")
        return sample % self.batch_size

    def to_dense(self, sample: int = 0) -> torch.Tensor:
        """The whole matrix ``A = I - N`` of one sample as a dense ``(N, N)`` tensor."""
        sample = self._check_sample(sample)
        size = self.offsets[-1]
        check_memory(size * size * self.rhs[0].element_size(), f"to_dense() of a {size}x{size} system",
                     "Use a smaller model, or look at the blocks with dense_blocks().")
        a = torch.eye(size, dtype=self.dtype, device=self.device)
        off = self.offsets
        for i, j, block in self.dense_blocks(sample):
            a[off[i]:off[i + 1], off[j]:off[j + 1]] -= block
        return a

    def rhs_dense(self, sample: int = 0) -> torch.Tensor:
        """The right-hand side of one sample as a dense ``(N,)`` tensor."""
        sample = self._check_sample(sample)
        return torch.cat([r[sample] for r in self.rhs])

    def _check_solution(self, u: Sequence[torch.Tensor]) -> None:
        if len(u) != self.k:
            raise ValueError(f"solution must have {self.k} blocks, got {len(u)}")
        for i, (ui, ri) in enumerate(zip(u, self.rhs)):
            if ui.shape != ri.shape:
                raise ValueError(f"solution block {i} has shape {tuple(ui.shape)} "
                                 f"but the system expects {tuple(ri.shape)}")

    def matvec(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``A u = u - N u`` for a block vector ``u``."""
        self._check_solution(u)
        return [ui - ni for ui, ni in zip(u, self.apply_offdiagonal(u))]

    def residual(self, solution: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The block residual ``r - A u`` (one ``(batch, n_i)`` tensor per block row)."""
        return [ri - ai for ri, ai in zip(self.rhs, self.matvec(solution))]

    def residual_norm(self, solution: Sequence[torch.Tensor]) -> float:
        """Relative residual ``||r - A u|| / ||r||`` over all samples (``||r - A u||`` if r = 0)."""
        with torch.no_grad():
            res = math.sqrt(sum(float(t.pow(2).sum()) for t in self.residual(solution)))
        scale = math.sqrt(sum(float(t.pow(2).sum()) for t in self.rhs))
        return res / scale if scale > 0 else res

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
           ) -> TriangularSystem:
        """The same system with every tensor converted, like ``Tensor.to``: e.g. a float64 system
        in float32, to measure what rounding does to a solver.

        Example:
            >>> import torch, trilib
            >>> net = trilib.nets.mlp([3, 4, 2], seed=0, dtype=torch.float64)
            >>> U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
            >>> U.to(torch.float32).dtype
            torch.float32
        """
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        convert = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        return self._converted(convert)

    def _converted(self, convert) -> TriangularSystem:
        raise TypeError(f"a {type(self).__name__} holds functions of its model and cannot convert "
                        "itself; build it again from model.to(dtype) and x.to(dtype)")

    def __repr__(self) -> str:
        sizes = self.block_sizes
        shown = sizes if len(sizes) <= 8 else (*sizes[:3], "...", *sizes[-2:])
        return (f"{type(self).__name__}({'upper' if self.upper else 'lower'}, k={self.k}, "
                f"block_sizes={shown}, batch={self.batch_size}, dtype={self.dtype}, "
                f"device={self.device})")


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
    """A unit block bi-diagonal system (THEORY §1), batched over samples.

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
