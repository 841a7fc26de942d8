"""Shared machinery of the direct parallel solvers: block rows as affine maps (docs/theory.md §5).

Substitution visits the block rows of a bi-diagonal system in a fixed order, the **scan
order** ``p = 0 .. k-1``: ``p = 0`` is the row solved first (the last row ``v_k`` of an upper,
backward system; the first row ``z_1`` of a lower, forward one). In that order every row is an
affine map of the previous unknown,

    u_p = A_p u_{p-1} + c_p,       A_0 = 0,

where ``A_p`` is the coupling block ``B_l`` of the row and ``c_p`` its right-hand side. Two
maps compose associatively, ``(A, c) ∘ (A', c') = (A A', c + A c')``: after row ``p`` has
absorbed every earlier row its map reads ``u_p = c_p`` (``A_p`` became a product ending in
``A_0 = 0``). Each solver is a different order of absorbing; :meth:`AffineRows.step` does one
parallel step of them as batched tensor operations.

**O(log k) tensor operations.** The maps are stored in **block-row order** (scan position ``p``
is row ``k - 1 - p`` of an upper system, row ``p`` of a lower one), and every step of every
solver here absorbs an arithmetic progression of positions ``p = first + i·stride`` into
``p - dist``. In block rows that is again an arithmetic progression, so a step reads and writes
the stack through strided views (``A[a:b:s]``): a fixed handful of operations per step, whatever
``k``. Setting up is one operation per run of equal-shaped blocks (see
:class:`~trilib.systems.BlockBidiagonalSystem`), and so is handing back the solution (views of
the stack). The trace, when one is asked for, records each step as a :class:`StridedPairs`
description, listed only when read.

**Different widths.** The blocks are rectangular (``n_l x n_{l±1}``). All maps are stored in
one stack ``A`` of shape ``(k, batch, n, n)`` and ``c`` of shape ``(k, batch, n)`` with
``n = max_l n_l``, zero-padded where a block is narrower. Padding is exact: the padded rows and
columns of every block are zero, products of such blocks keep them zero (``0 · x = 0`` exactly
for finite ``x``), and the padded entries of ``c`` stay zero, so the unpadded part is
bit-for-bit what unpadded products would give. We chose padding over grouping rows of equal
shape because one stack keeps every step a single batched ``matmul`` whatever the widths; the
price is wasted work when the widths differ a lot (at most ``(n_max / n_min)^3`` per combine).
"""

from __future__ import annotations

import torch

from .._checks import MemoryLimitError, _human, check_memory
from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem
from ..trace import StridedPairs

__all__ = ["AffineRows", "affine_rows", "doubling_work"]

SUGGESTION = ("Use method='sequential' (one n x n_prev mat-vec per layer, never forms n x n "
              "products) or an iterative method (see trilib.methods()), or raise "
              "trilib.config.memory_limit_bytes / pass memory_limit=... deliberately.")


def doubling_work(k: int) -> int:
    """Block products of recursive doubling and of PCR, which perform the same combines on a
    bi-diagonal system: ``Σ_{s=0}^{L-1} (k - 2^s) = k L - 2^L + 1`` with ``L = ⌈log2 k⌉``."""
    L = ceil_log2(k)
    return k * L - 2**L + 1


class AffineRows:
    """The padded stack of affine row maps of one system, in block-row order.

    Attributes:
        A: ``(k, batch, n, n)``: ``A[row]`` is the row's coupling block, ``0`` for the row solved
            first; after a step it is the product of the blocks the row has absorbed.
        c: ``(k, batch, n)`` right-hand sides; after a solver finishes, ``c[row] = u_row``.
    """

    def __init__(self, system: BlockBidiagonalSystem, A: torch.Tensor, c: torch.Tensor):
        self.system, self.A, self.c = system, A, c
        self._work: dict[str, torch.Tensor] = {}

    def _scratch(self, slot: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Scratch buffer ``slot`` viewed as ``shape`` ``(m, batch, ...)``: allocated once per
        solve, for the first step (every method's largest), and reused by the later steps, so a
        step allocates nothing."""
        buf = self._work.get(slot)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]:
            buf = self._work[slot] = self.A.new_empty(shape)
        return buf[:shape[0]]

    def _batched(self, view: torch.Tensor, slot: str) -> torch.Tensor:
        """The strided view ``(m, batch, ...)`` as one batch ``(m·batch, ...)``: a view of the
        stack when it happens to be contiguous (steps of stride 1), else a copy in ``slot``."""
        if not view.is_contiguous():
            view = self._scratch(slot, view.shape).copy_(view)
        return view.flatten(0, 1)

    def step(self, trace, first: int, stride: int, count: int, dist: int, matrix: bool = True) -> None:
        """One parallel step: scan positions ``p = first + i·stride`` (``i < count``) absorb
        ``p - dist``, all at once, and the trace (if any) records the step.

        ``(A_t, c_t) <- (A_t A_s, c_t + A_t c_s)`` as batched ``matmul`` s over strided views of
        the stack. Operands are read before anything is written, so a row may be a target and a
        source in the same step. With ``matrix=False`` only ``c_t`` is updated: the source is
        already solved (``A_s = 0``), or ``A_t`` is not needed again.
        """
        k = self.system.k
        # in block rows: targets t0 + i·rs, each reading row t + off
        t0, rs, off = (k - 1 - first, -stride, dist) if self.system.upper else (first, stride, -dist)
        if trace is not None:
            trace.add_step(StridedPairs(t0, rs, count, off))
        lo, st = min(t0, t0 + (count - 1) * rs), abs(rs)
        hi = lo + (count - 1) * st + 1
        A_t, c_t = self.A[lo:hi:st], self.c[lo:hi:st]
        a_t = self._batched(A_t, "A_t")                          # read every operand before writing
        update = self._scratch("update", (*c_t.shape, 1))
        torch.bmm(a_t, self._batched(self.c[lo + off:hi + off:st].unsqueeze(-1), "c_s"),
                  out=update.flatten(0, 1))
        if matrix:
            product = self._scratch("product", A_t.shape)
            torch.bmm(a_t, self._batched(self.A[lo + off:hi + off:st], "A_s"), out=product.flatten(0, 1))
            A_t.copy_(product)
        c_t.add_(update.squeeze(-1))

    def solution(self) -> list[torch.Tensor]:
        """The ``k`` blocks ``(batch, n_l)``: views of ``c``, unpadded one run of widths at a time."""
        n, out = self.c.shape[-1], []
        for run in self.system.row_runs:
            rows = self.c[run.start:run.stop]
            out.extend((rows if run.width == n else rows[..., :run.width]).unbind(0))
        return out


def check_memory_limit(memory_limit: object) -> int | None:
    if memory_limit is None:
        return None
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0:
        raise ValueError(f"memory_limit must be a positive int (bytes) or None, got {memory_limit!r}")
    return memory_limit


def affine_rows(system: BlockBidiagonalSystem, method: str, live_products: int,
                memory_limit: int | None = None) -> AffineRows:
    """Build the padded affine stack after checking its memory.

    One operation per run of equal-shaped blocks (and per run of equal-width rows): the blocks
    ``B_l = diag(d_l) M_l`` of a run are formed by one broadcast product written into the stack.

    Args:
        system: the block bi-diagonal system (upper or lower).
        method: the solver's name, for the error message.
        live_products: the most ``n x n`` products one step of the method forms at once; the
            estimate is ``(k + 3 · live_products) · batch · n² · itemsize`` bytes (the stack,
            plus the gathered operands and the result of one step).
        memory_limit: overrides ``trilib.config.memory_limit_bytes`` when given.

    Raises:
        MemoryLimitError: the estimate exceeds the limit (raised before allocating anything).
    """
    memory_limit = check_memory_limit(memory_limit)
    k, batch, sizes = system.k, system.batch_size, system.block_sizes
    n = max(sizes)
    nbytes = (k + 3 * live_products) * batch * n * n * system.dtype.itemsize
    what = (f"method={method!r}: {k} padded {n}x{n} blocks for a batch of {batch} "
            f"and one step's products")
    if memory_limit is None:
        check_memory(nbytes, what, SUGGESTION)
    elif nbytes > memory_limit:
        raise MemoryLimitError(f"{what} would need about {_human(nbytes)}, above memory_limit = "
                               f"{_human(memory_limit)}. {SUGGESTION}")

    like = system.row_runs[0].rhs
    padded = any(run.mats.shape[-2:] != (n, n) for run in system.block_runs)
    A = like.new_zeros(k, batch, n, n) if padded else like.new_empty(k, batch, n, n)
    if not padded:
        A[k - 1 if system.upper else 0].zero_()   # the row solved first couples to nothing
    shift = 0 if system.upper else 1             # block l sits in block row l + shift
    for run in system.block_runs:                # set-up, not a step: one product per run
        rows, cols = run.mats.shape[-2:]
        dst = A[run.start + shift:run.stop + shift, :, :rows, :cols]
        m = run.mats.unsqueeze(1) if run.shared else run.mats
        if run.scales is None:
            dst.copy_(m.expand_as(dst))
        elif dst.is_contiguous():
            torch.mul(run.scales.unsqueeze(-1), m, out=dst)
        else:
            dst.copy_(run.scales.unsqueeze(-1) * m)
    runs = system.row_runs
    if len(runs) == 1 and runs[0].width == n:
        c = runs[0].rhs.clone(memory_format=torch.contiguous_format)
    else:
        c = like.new_zeros(k, batch, n)
        for run in runs:
            c[run.start:run.stop, :, :run.width] = run.rhs
    return AffineRows(system, A, c)
