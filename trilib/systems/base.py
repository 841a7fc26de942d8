"""The base class of every system: ``A u = r`` with a unit block diagonal, batched over samples.

Every system in trilib is written ``A = I - N`` where ``N`` holds the off-diagonal blocks
(strictly upper for backward propagation, strictly lower for forward propagation,
docs/theory.md §1-3). A mini-batch is a batch of independent systems that share the sparsity
pattern: each block carries a leading batch dimension, or is shared by every sample.
:class:`TriangularSystem` holds what every pattern shares (sizes, dense view, residuals).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property

import torch

from .._checks import check_int, check_memory
from .._numerics import rel_error
from .vector import BlockVector

__all__ = ["TriangularSystem"]


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
        sample = check_int("sample", sample, -self.batch_size, self.batch_size - 1, error=IndexError,
                           span=f"in [0, {self.batch_size})")
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
        if isinstance(u, BlockVector) and u.has_shapes(self.block_sizes, self.rhs[0].shape[:-1]):
            return                          # checked on its stack: no tensor per block made
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
            return rel_error(self.matvec(solution), self.rhs)

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
