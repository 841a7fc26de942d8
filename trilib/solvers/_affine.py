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

import threading

import torch

from .._checks import MemoryLimitError, _human, check_memory
from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem, BlockVector
from ..systems.bidiagonal import BlockRun
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


class _Arena(threading.local):
    """One flat buffer per thread, reused by every direct solve for its stack ``A`` and its
    scratch: repeated solves of one size (a training loop, a benchmark) touch warm memory
    instead of fresh pages from the allocator. Kept only up to :data:`ARENA_BYTES`."""

    buf: torch.Tensor | None = None


_ARENA = _Arena()
#: The most memory (bytes) kept between solves for the stack and scratch of the direct solvers.
ARENA_BYTES = 64 * 2**20


class AffineRows:
    """The padded stack of affine row maps of one system, in block-row order.

    Attributes:
        A: ``(k, batch, n, n)``: ``A[row]`` is the product of the coupling blocks the row has
            absorbed (``0`` for the row solved first). With ``blocks`` given, the original blocks
            are read from their factors and ``A`` holds only the products steps have formed.
        c: ``(k, batch, n)`` right-hand sides; after a solver finishes, ``c[row] = u_row``.
        blocks: all coupling blocks as one run ``B = diag(d) M`` with ``M`` shared by the
            batch (``system.uniform_run``), or ``None``: then ``A`` starts as the blocks.
    """

    def __init__(self, system: BlockBidiagonalSystem, n: int, blocks: BlockRun | None):
        self.system, self.blocks = system, blocks
        like = system.row_runs[0].rhs
        arena, _ARENA.buf = _ARENA.buf, None      # taken, not shared: a nested solve gets none
        usable = arena is not None and arena.dtype == like.dtype and arena.device == like.device
        self._arena, self._used, self._like = arena if usable else None, 0, like
        self._work: dict[str, torch.Tensor] = {}
        self.A = self._take((system.k, system.batch_size, n, n))
        self.c = _rhs_stack(system, n)

    def _take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Uninitialised memory for ``shape``, from the arena while it lasts."""
        numel = 1
        for size in shape:
            numel *= size
        self._used += numel
        if self._arena is not None and self._used <= self._arena.numel():
            return self._arena[self._used - numel:self._used].view(shape)
        return self._like.new_empty(shape)

    def _scratch(self, slot: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Scratch buffer ``slot`` viewed as ``shape`` ``(m, ...)``: taken once per solve, at the
        first step that needs it (the largest: steps shrink), and reused by the later steps."""
        buf = self._work.get(slot)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]:
            buf = self._work[slot] = self._take(shape)
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
        if self.blocks is not None and dist == 1:
            self._first_step(lo, hi, st, off, matrix)
            return
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

    def _first_step(self, lo: int, hi: int, st: int, off: int, matrix: bool) -> None:
        """A step at distance 1, on the original blocks ``B = diag(d) M`` (``M`` shared by the
        batch) read from their factors, never formed: the mat-vecs ``d * (M c)`` are one ``bmm``
        with the samples as columns, the products ``diag(d_t) M_t diag(d_s) M_s`` one ``bmm`` of
        ``(batch·n) x n`` by ``n x n`` matrices. Every method's first step is such a step and
        fills ``A`` for its targets, the only rows that later products read; its other steps at
        distance 1 are mat-vecs on rows that no earlier step changed."""
        upper, k = self.system.upper, self.system.k
        M, d = self.blocks.mats, self.blocks.scales
        shift = 0 if upper else 1                       # row r holds block r - shift
        m_t = M[lo - shift:hi - shift:st]               # (m, n, n): a strided batch, no copy
        d_t = None if d is None else d[lo - shift:hi - shift:st]
        c_t, c_s = self.c[lo:hi:st], self.c[lo + off:hi + off:st]
        m, batch, n = c_t.shape
        prod = self._scratch("first_c", (m, n, batch))
        torch.bmm(m_t, c_s.transpose(1, 2), out=prod)    # every sample at once
        if matrix:
            A_t = self.A[lo:hi:st]
            # the target whose source is the row solved first (it has no block) gets A = 0
            first, last = int(lo + off - shift < 0), int(hi - 1 + off - shift > k - 2)
            if first or last:
                A_t[0 if first else -1].zero_()
            g = m - first - last
            if g > 0:
                sources = slice(lo + st * first + off - shift, hi - st * last + off - shift, st)
                m_keep, A_keep = m_t[first:m - last], A_t[first:m - last]
                if d is None:
                    rows = self._scratch("first_A", (g, n, n))
                    A_keep.copy_(torch.bmm(m_keep, M[sources], out=rows).unsqueeze(1).expand(g, batch, n, n))
                else:
                    cols = self._scratch("first_A", (g, batch, n, n))
                    torch.mul(m_keep.unsqueeze(1), d[sources].unsqueeze(-2), out=cols)
                    cols = cols.view(g, batch * n, n)
                    if n <= 16 and batch > 1:   # MKL multiplies these faster transposed
                        rows = self._scratch("first_B", (g, n, batch * n))
                        rows = torch.bmm(M[sources].mT, cols.mT, out=rows).mT
                    else:
                        rows = torch.bmm(cols, M[sources], out=self._scratch("first_B", (g, batch * n, n)))
                    torch.mul(rows.view(g, batch, n, n), d_t[first:m - last].unsqueeze(-1), out=A_keep)
        if d_t is None:
            c_t.add_(prod.transpose(1, 2))
        else:
            c_t.addcmul_(d_t, prod.transpose(1, 2))

    def solution(self) -> BlockVector:
        """The ``k`` blocks ``(batch, n_l)``: the stack ``c`` itself, as a :class:`BlockVector`
        (no tensor per block is made unless one is asked for). The arena is given back, grown
        to this solve's needs when they fit in ``ARENA_BYTES``."""
        _ARENA.buf = self._arena
        if self._arena is None or self._used > self._arena.numel():
            nbytes = self._used * self._like.element_size()
            _ARENA.buf = self._like.new_empty(self._used) if nbytes <= ARENA_BYTES else self._arena
        return BlockVector.from_stack(self.c, self.system.block_sizes)


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

    blocks = system.uniform_run
    maps = AffineRows(system, n, blocks)
    A = maps.A
    if blocks is not None:
        # no set-up: the first step forms the products it needs from the blocks' factors
        A[k - 1 if system.upper else 0].zero_()   # the row solved first couples to nothing
        return maps
    if any(run.mats.shape[-2:] != (n, n) for run in system.block_runs):
        A.zero_()                                # padded blocks: zeros outside each block
    else:
        A[k - 1 if system.upper else 0].zero_()
    shift = 0 if system.upper else 1             # block l sits in block row l + shift
    for run in system.block_runs:                # set-up, not a step: one product per run
        rows, cols = run.mats.shape[-2:]
        dst = A[run.start + shift:run.stop + shift, :, :rows, :cols]
        m = run.mats.unsqueeze(1) if run.shared else run.mats
        if run.scales is None:
            dst.copy_(m.expand_as(dst))
        else:
            torch.mul(run.scales.unsqueeze(-1), m, out=dst)
    return maps


def _rhs_stack(system: BlockBidiagonalSystem, n: int) -> torch.Tensor:
    """The right-hand side as one ``(k, batch, n)`` stack (a copy: the solver writes into it)."""
    runs = system.row_runs
    if all(run.width == n for run in runs):      # nothing to pad: one copy, no zero fill
        if len(runs) == 1:
            return runs[0].rhs.clone(memory_format=torch.contiguous_format)
        return torch.cat([run.rhs for run in runs])
    c = runs[0].rhs.new_zeros(system.k, system.batch_size, n)
    for run in runs:
        c[run.start:run.stop, :, :run.width] = run.rhs
    return c
