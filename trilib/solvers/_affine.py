"""Shared machinery of the direct parallel solvers: block rows as affine maps (docs/theory.md §5).

Substitution visits the block rows of a bi-diagonal system in a fixed order, the **scan
order** ``p = 0 .. k-1``: ``p = 0`` is the row solved first (the last row ``v_k`` of an upper,
backward system; the first row ``z_1`` of a lower, forward one). In that order every row is an
affine map of the previous unknown,

    u_p = A_p u_{p-1} + c_p,       A_0 = 0,

where ``A_p`` is the coupling block ``B_l`` of the row and ``c_p`` its right-hand side. Two
maps compose associatively, ``(A, c) ∘ (A', c') = (A A', c + A c')``: after row ``p`` has
absorbed every earlier row its map reads ``u_p = c_p`` (``A_p`` became a product ending in
``A_0 = 0``). Each solver is a different order of absorbing; :func:`combine` does one parallel
step of them as batched tensor operations.

**Different widths.** The blocks are rectangular (``n_l x n_{l±1}``). All maps are stored in
one stack ``A`` of shape ``(k, batch, n, n)`` and ``c`` of shape ``(k, batch, n)`` with
``n = max_l n_l``, zero-padded. Padding is exact: the padded rows and columns of every block
are zero, products of such blocks keep them zero (``0 · x = 0`` exactly for finite ``x``), and
the padded entries of ``c`` stay zero, so the unpadded part is bit-for-bit what unpadded
products would give. We chose padding over grouping rows of equal shape because one stack keeps
every step a single batched ``matmul`` whatever the widths; the price is wasted work when the
widths differ a lot (at most ``(n_max / n_min)^3`` per combine).
"""

from __future__ import annotations

import torch

from .._checks import MemoryLimitError, _human, check_memory
from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem

__all__ = ["AffineRows", "affine_rows", "combine", "doubling_work"]

SUGGESTION = ("Use method='sequential' (one n x n_prev mat-vec per layer, never forms n x n "
              "products) or an iterative method (see trilib.methods()), or raise "
              "trilib.config.memory_limit_bytes / pass memory_limit=... deliberately.")


def doubling_work(k: int) -> int:
    """Block products of recursive doubling and of PCR, which perform the same combines on a
    bi-diagonal system: ``Σ_{s=0}^{L-1} (k - 2^s) = k L - 2^L + 1`` with ``L = ⌈log2 k⌉``."""
    L = ceil_log2(k)
    return k * L - 2**L + 1


class AffineRows:
    """The padded stack of affine row maps of one system, in scan order.

    Attributes:
        A: ``(k, batch, n, n)`` coupling blocks, ``A[0] = 0``.
        c: ``(k, batch, n)`` right-hand sides; after a solver finishes, ``c[p] = u_{row(p)}``.
        rows: ``rows[p]`` is the 0-based block row of scan position ``p``.
    """

    def __init__(self, A: torch.Tensor, c: torch.Tensor, rows: list[int]):
        self.A, self.c, self.rows = A, c, rows

    def index(self, positions) -> torch.Tensor:
        """Scan positions as an index tensor on the stack's device."""
        return torch.as_tensor(positions, dtype=torch.long, device=self.A.device)

    def pairs(self, targets: torch.Tensor, sources: torch.Tensor) -> list[tuple[int, int]]:
        """The ``(target_row, source_row)`` pairs of a step, in block-row numbers for the trace."""
        return [(self.rows[t], self.rows[s]) for t, s in zip(targets.tolist(), sources.tolist())]

    def solution(self, system: BlockBidiagonalSystem) -> list[torch.Tensor]:
        """Unpad ``c`` into the list of ``k`` blocks ``(batch, n_l)`` in block-row order."""
        u: list[torch.Tensor | None] = [None] * system.k
        sizes = system.block_sizes
        for p, row in enumerate(self.rows):
            u[row] = self.c[p, :, : sizes[row]]
        return u


def check_memory_limit(memory_limit: object) -> int | None:
    if memory_limit is None:
        return None
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0:
        raise ValueError(f"memory_limit must be a positive int (bytes) or None, got {memory_limit!r}")
    return memory_limit


def affine_rows(system: BlockBidiagonalSystem, method: str, live_products: int,
                memory_limit: int | None = None) -> AffineRows:
    """Build the padded affine stack after checking its memory.

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
    nbytes = (k + 3 * live_products) * batch * n * n * system.rhs[0].element_size()
    what = (f"method={method!r}: {k} padded {n}x{n} blocks for a batch of {batch} "
            f"and one step's products")
    if memory_limit is None:
        check_memory(nbytes, what, SUGGESTION)
    elif nbytes > memory_limit:
        raise MemoryLimitError(f"{what} would need about {_human(nbytes)}, above memory_limit = "
                               f"{_human(memory_limit)}. {SUGGESTION}")

    rows = list(range(k - 1, -1, -1)) if system.upper else list(range(k))
    position = {row: p for p, row in enumerate(rows)}
    A = system.rhs[0].new_zeros(k, batch, n, n)
    c = system.rhs[0].new_zeros(k, batch, n)
    for p, row in enumerate(rows):
        c[p, :, : sizes[row]] = system.rhs[row]
    for l in range(k - 1):                      # set-up, not a step: copy B_l into its slot
        row, col = system.row_col(l)
        A[position[row], :, : sizes[row], : sizes[col]] = system.block(l)
    return AffineRows(A, c, rows)


def combine(maps: AffineRows, targets: torch.Tensor, sources: torch.Tensor,
            matrix: bool = True) -> None:
    """One parallel step: every ``target`` absorbs its ``source``, all at once.

    ``(A_t, c_t) <- (A_t A_s, c_t + A_t c_s)`` as batched ``matmul`` s over the pairs (and the
    samples). Operands are gathered before anything is written, so a row may be a target and a
    source in the same step. With ``matrix=False`` only ``c_t`` is updated: the source is
    already solved (``A_s = 0``), so ``A_t A_s`` would be zero and is not needed again.
    """
    A_t = maps.A[targets]
    c_new = maps.c[targets] + (A_t @ maps.c[sources].unsqueeze(-1)).squeeze(-1)
    if matrix:
        maps.A[targets] = A_t @ maps.A[sources]
    maps.c[targets] = c_new
