"""A block bi-diagonal system as the stacks of the affine scan (:mod:`._affine`), and back.

**Scan order and block rows**, the one place they are mapped: a method's schedule is written in
scan order (``p = 0`` is solved first, :mod:`._affine`). For an upper (backward) system that is
the last block row, so scan position ``p`` is block row ``l = k - 1 - p``; for a lower (forward)
system ``p = l``. :func:`in_block_rows` turns the schedule's steps into steps of block rows; the
stacks, the scan, the solution and the trace all speak block rows. Block row ``l`` holds the map
``u_l = B u_{l±1} + r_l`` with ``B`` its coupling block (``B_l`` at ``(l, l+1)`` upper,
``B_{l-1}`` at ``(l, l-1)`` lower) and ``r_l`` its right-hand side.

**Different widths.** The blocks are rectangular (``n_l x n_{l±1}``); the stacks hold them
zero-padded to ``n = max_l n_l``: ``B`` is ``(k, batch, n, n)``, ``r`` is ``(k, batch, n, 1)``
(a column, so every combine is a ``matmul``). Padding is exact: the padded rows and columns stay
zero in every product (``0 · x = 0`` for finite ``x``). One stack keeps every step one batched
``matmul`` whatever the widths; the price is wasted work when widths differ a lot (at most
``(n_max / n_min)^3`` per combine).
"""

from __future__ import annotations

import torch

from .._checks import check_memory
from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem, BlockVector
from ..trace import StridedPairs
from ._affine import Step, buffer_rows, scan

__all__ = ["direct_solve", "doubling_work", "in_block_rows", "stacks"]

SUGGESTION = ("Use method='sequential' (one n x n_prev mat-vec per layer, never forms n x n "
              "products) or an iterative method (see trilib.methods()), or raise "
              "trilib.config.memory_limit_bytes / pass memory_limit=... deliberately.")


def doubling_work(k: int) -> int:
    """Block products of recursive doubling and of PCR, which perform the same combines on a
    bi-diagonal system: ``Σ_{s=0}^{L-1} (k - 2^s) = k L - 2^L + 1`` with ``L = ⌈log2 k⌉``."""
    L = ceil_log2(k)
    return k * L - 2**L + 1


def in_block_rows(schedule: list[Step], system: BlockBidiagonalSystem) -> list[Step]:
    """The steps of a schedule in scan positions as steps of block rows (see the module doc)."""
    if not system.upper:
        return schedule
    k = system.k
    return [Step(k - 1 - s.first, -s.stride, s.count, -s.dist, s.matrix) for s in schedule]


def stacks(system: BlockBidiagonalSystem, B: torch.Tensor, r: torch.Tensor) -> None:
    """Write the system into ``B`` ``(k, batch, n, n)`` and ``r`` ``(k, batch, n, 1)``, in block
    rows: one operation per run of equal-shaped blocks or rows."""
    k, n, upper = system.k, B.shape[-1], system.upper
    r = r.squeeze(-1)
    if any(run.width != n for run in system.row_runs):
        r.zero_()                                # padded rows: zeros below each block
    for run in system.row_runs:
        r[run.start:run.stop, :, :run.width] = run.rhs
    if any(run.mats.shape[-2:] != (n, n) for run in system.block_runs):
        B.zero_()                                # padded blocks: zeros outside each block
    else:
        B[k - 1 if upper else 0].zero_()         # the row solved first couples to nothing
    shift = 0 if upper else 1                    # block l sits in block row l + shift
    for run in system.block_runs:
        rows, cols = run.mats.shape[-2:]
        dst = B[run.start + shift:run.stop + shift, :, :rows, :cols]
        dst.copy_((run.mats.unsqueeze(1) if run.shared else run.mats).expand_as(dst))
        if run.scales is not None:
            dst.mul_(run.scales.unsqueeze(-1))


def _record(trace):
    """The trace's recorder: a step of block rows as its ``(target, source)`` pairs."""
    if trace is None:
        return None
    return lambda step: trace.add_step(StridedPairs(step.first, step.stride, step.count, -step.dist))


def direct_solve(system: BlockBidiagonalSystem, method: str, schedule: list[Step], trace,
                 memory_limit: int | None = None) -> BlockVector:
    """Solve ``system`` by the affine scan ``schedule`` (scan positions, see the module doc).

    Args:
        system: the block bi-diagonal system (upper or lower).
        method: the solver's name, for the error message.
        schedule: the method's steps.
        trace: a :class:`~trilib.trace.Trace` or ``None``.
        memory_limit: overrides ``trilib.config.memory_limit_bytes`` when given.

    **Memory**: a solve allocates twice, the amount checked against the limit: the solution
    ``(k, batch, n)`` and, once for the whole scan, the blocks and the scan's buffers
    (:func:`~._affine.buffer_rows`), ``(k + blocks) · batch · n² + columns · batch · n``
    elements.

    Raises:
        MemoryLimitError: the estimate exceeds the limit (raised before allocating anything).
    """
    k, batch, n = system.k, system.batch_size, max(system.block_sizes)
    blocks, columns = buffer_rows(schedule)
    sizes = [(k + blocks) * batch * n * n, columns * batch * n]
    nbytes = (sum(sizes) + k * batch * n) * system.dtype.itemsize
    check_memory(nbytes, f"method={method!r}: {k} padded {n}x{n} blocks for a batch of {batch} "
                 f"and the largest step's products", SUGGESTION, limit=memory_limit)
    r = system.row_runs[0].rhs.new_empty(k, batch, n, 1)
    memory = r.new_empty(sum(sizes)).split(sizes)
    B, B_buffer = memory[0].view(k + blocks, batch, n, n).split([k, blocks])
    stacks(system, B, r)
    scan(B, r, in_block_rows(schedule, system), buffers=(B_buffer, memory[1].view(columns, batch, n, 1)),
         record=_record(trace))
    return BlockVector.from_stack(r.squeeze(-1), system.block_sizes)
