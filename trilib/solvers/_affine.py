"""The one affine-map scan of trilib (docs/theory.md §5): the combine and its schedule.

Substitution visits the rows of a bi-diagonal system in a fixed order, the **scan order**
``p = 0 .. k-1`` (``p = 0`` is the row solved first). In that order every row is an affine map
of the row before it,

    u_p = B_p u_{p-1} + r_p,        B_0 = 0,

and two maps compose associatively (:func:`combine`):

    (B, r) ∘ (B', r') = (B B', r + B r').

After row ``p`` has absorbed every earlier row its map reads ``u_p = r_p``. A parallel solver is
a **schedule**: a list of :class:`Step` s, each a set of rows that absorb, all at once, the row
``dist`` places before them. :func:`scan` runs a schedule on stacks ``B`` and ``r`` whose first
axis is the scan order. The targets of every step are an arithmetic progression, so a step is
one :func:`combine` on strided views of the stacks: a fixed handful of tensor operations per
step, whatever ``k``, and no value is ever read back to the host (a step is decided by ``k``
alone), so a scan can be captured in a CUDA graph.

Every user of the scan is a schedule on these stacks: the direct solvers of
:mod:`trilib.solvers` (their stacks are set up in :mod:`trilib.solvers._direct`), Newton in time's
element-wise scan (``diagonal=True``: ``B_p`` is the diagonal of a matrix, products are
element-wise), the time scans of :func:`trilib.solvers.rnn_methods.time_scan` and the tree of
:mod:`trilib.distributed.schedules` (a scan over ranks, one message per combine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = ["Step", "buffer_rows", "combine", "doubling", "scan"]


def combine(B_t: torch.Tensor, r_t: torch.Tensor | None, B_s: torch.Tensor | None,
            r_s: torch.Tensor | None, *, diagonal: bool = False, out=None):
    """``(B_t, r_t) ∘ (B_s, r_s) = (B_t B_s, r_t + B_t r_s)``: the target map after absorbing
    the source map.

    ``B_s = None``: the source is a constant (solved, ``u_s = r_s``), and only ``r`` is formed.
    ``r = None``: a map with no constant part (``r = 0``). Products are matrix products, or
    element-wise with ``diagonal=True`` (each ``B`` is the diagonal of a matrix). ``r`` is a
    column (or a matrix of columns) ``(..., n, m)`` for matrix products, ``(..., n)`` else.
    ``out=(B, r)``: tensors the result is written into (``B`` unused when ``B_s`` is ``None``);
    they must not share memory with the operands.

    Example:
        >>> B, r = torch.tensor([[2.0]]), torch.tensor([[1.0]])
        >>> combine(B, r, B, r)                    # u = 2 (2 u' + 1) + 1
        (tensor([[4.]]), tensor([[3.]]))
    """
    mul = torch.mul if diagonal else torch.matmul
    B_out, r_out = (None, None) if out is None else out
    B = None if B_s is None else mul(B_t, B_s, out=B_out)
    if r_s is None:
        return B, r_t
    r = mul(B_t, r_s, out=r_out)
    return B, (r if r_t is None else r.add_(r_t))


@dataclass(frozen=True)
class Step:
    """One parallel step of a scan: the rows ``p = first + i·stride`` (``i < count``) absorb the
    rows ``p - dist``, all at once. ``stride`` and ``dist`` may have either sign (a scan run
    from the last row up has ``dist < 0``). ``matrix=False``: only ``r`` is formed (the sources
    are solved, or the targets' ``B`` is not read again)."""

    first: int
    stride: int
    count: int
    dist: int
    matrix: bool = True

    def slices(self) -> tuple[slice, slice]:
        """The targets and their sources as ascending slices of the scan order."""
        last = self.first + (self.count - 1) * self.stride
        lo, hi, every = min(self.first, last), max(self.first, last) + 1, abs(self.stride)
        return slice(lo, hi, every), slice(lo - self.dist, hi - self.dist, every)


def doubling(k: int) -> list[Step]:
    """Recursive doubling (Stone; Hillis–Steele): in step ``s`` every row ``p >= d = 2^s``
    absorbs row ``p - d``; after ``⌈log2 k⌉`` steps every row reaches ``p = 0``. The last step
    needs no ``B``.

    Example:
        >>> [(s.first, s.count, s.dist) for s in doubling(5)]
        [(1, 4, 1), (2, 3, 2), (4, 1, 4)]
    """
    steps, d = [], 1
    while d < k:
        steps.append(Step(first=d, stride=1, count=k - d, dist=d, matrix=2 * d < k))
        d *= 2
    return steps


def buffer_rows(schedule: Iterable[Step]) -> tuple[int, int]:
    """Rows of the buffers :func:`scan` allocates for ``schedule``: ``(blocks, columns)``, room
    for the largest step's targets, sources and products of ``B`` (a step that forms no ``B``
    needs only its targets), and for its ``r`` sources and products.

    Example:
        >>> buffer_rows(doubling(5))        # steps of 4, 3 and 1 rows; the last forms no B
        (12, 8)
    """
    steps = list(schedule)
    most = max((s.count for s in steps), default=0)
    most_matrix = max((s.count for s in steps if s.matrix), default=0)
    return most + 2 * most_matrix, 2 * most


def _read(X: torch.Tensor, rows: slice, buffer: torch.Tensor) -> torch.Tensor:
    """Rows of a stack: a view where they are contiguous, else copied into ``buffer``."""
    view = X[rows]
    return view if view.is_contiguous() else buffer.copy_(view)


def scan(B: torch.Tensor, r: torch.Tensor, schedule: Iterable[Step], *, diagonal: bool = False,
         buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
         record: Callable[[Step], None] | None = None) -> torch.Tensor:
    """Run ``schedule`` on the stacks ``B`` and ``r`` (first axis: the rows), in place; returns
    ``r``, which then holds the solution in every row the schedule solved. ``B`` of the row
    solved first must be zero. ``record(step)`` is called after each step (a trace).

    A step reads its operands (views of the stacks where they are contiguous rows, else copies
    in buffers) before it writes, so a row may be a target and a source of the same
    step. **Memory**: the buffers are allocated once, before the first step, sized by the
    largest step (:func:`buffer_rows`; or given as ``buffers``, tensors with at least those
    rows), and every product is written into them; a scan allocates nothing else (fresh memory
    per step can go back to the OS and be mapped again by the next solve, a page fault per
    4 KiB page: benchmarks/README.md, issue 20).

    Example:
        >>> B, r = torch.tensor([[0.0], [2.0], [2.0], [2.0]]), torch.ones(4, 1)
        >>> scan(B, r, doubling(4), diagonal=True).flatten().tolist()   # u_p = 2 u_{p-1} + 1
        [1.0, 3.0, 7.0, 15.0]
    """
    schedule = tuple(schedule)
    blocks, columns = buffer_rows(schedule)
    if buffers is None:
        buffers = B.new_empty((blocks, *B.shape[1:])), r.new_empty((columns, *r.shape[1:]))
    B_buf, r_buf = buffers
    most = columns // 2                                 # the largest step's rows
    for step in schedule:
        t, s, c = *step.slices(), step.count
        B_t = _read(B, t, B_buf[:c])                    # the targets' maps, read by both products
        B_s = _read(B, s, B_buf[most:most + c]) if step.matrix else None
        r_s = _read(r, s, r_buf[:c])
        out = B_buf[blocks - c:] if step.matrix else None, r_buf[most:most + c]
        B_t, r_t = combine(B_t, r[t], B_s, r_s, diagonal=diagonal, out=out)
        r[t] = r_t
        if B_t is not None:
            B[t] = B_t
        if record is not None:
            record(step)
    return r
