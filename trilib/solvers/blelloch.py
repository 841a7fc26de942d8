"""Blelloch's work-efficient scan: an up-sweep and a down-sweep over a balanced tree.

Rows are affine maps ``u_p = B_p u_{p-1} + r_p`` in scan order (see ``_affine.py``).

* **Up-sweep** (reduce), ``d = 1, 2, 4, ...``: row ``p`` with ``p + 1`` a multiple of ``2d``
  absorbs row ``p - d``. Row ``p`` then covers the block of rows ``(p - lowbit(p+1), p]``; rows
  ``p = 2^m - 1`` reach ``p = 0`` and are solved.
* **Down-sweep**, ``d`` halving: row ``p`` with ``p + 1`` an odd multiple ``≥ 3d`` of ``d``
  absorbs the already-solved row ``p - d`` and is solved too. The source is solved, so only
  the vector part ``r_p + B_p r_{p-d}`` is needed: the down-sweep does mat-vecs.

This is the inclusive form of Blelloch's tree (as in the Brent–Kung adder): it needs neither an
identity element nor padding ``k`` to a power of two, and no step is empty.
"""

from __future__ import annotations

from ..systems import BlockBidiagonalSystem, BlockVector
from ._affine import Step
from ._direct import direct_solve
from ._registry import register


def steps(k: int) -> int:
    """Parallel steps: ``⌊log2 k⌋`` up-sweep steps plus ``⌊log2(k/3)⌋ + 1`` down-sweep steps
    (none when k < 3); at most ``2⌈log2 k⌉``."""
    up = k.bit_length() - 1
    down = (k // 3).bit_length()               # number of d = 2^s with 3d <= k
    return up + down


def work(k: int) -> int:
    """Block products: up-sweep ``Σ_s ⌊k/2^{s+1}⌋ = k - popcount(k)``, down-sweep
    ``Σ_s ⌊(k - 2^s)/2^{s+1}⌋ = k - ⌊log2 k⌋ - 1``; total ``2k - popcount(k) - ⌊log2 k⌋ - 1``."""
    return 2 * k - bin(k).count("1") - (k.bit_length() - 1) - 1


def schedule(k: int) -> list[Step]:
    """The up-sweep, then the down-sweep, as steps of scan positions."""
    sweep, d = [], 1
    while 2 * d <= k:                           # up-sweep: the tree's levels, bottom up
        # rows p = 2d-1, 4d-1, ... absorb p - d
        sweep.append(Step(first=2 * d - 1, stride=2 * d, count=len(range(2 * d - 1, k, 2 * d)), dist=d))
        d *= 2
    while d > 1:                                # down-sweep: top down, fill in the gaps
        d //= 2
        count = len(range(3 * d - 1, k, 2 * d))   # rows p = 3d-1, 5d-1, ... absorb p - d
        if count:                               # none when the tree is lopsided (k no power of 2)
            sweep.append(Step(first=3 * d - 1, stride=2 * d, count=count, dist=d, matrix=False))
    return sweep


@register("blelloch", BlockBidiagonalSystem, family="direct")
def blelloch(system: BlockBidiagonalSystem, trace, memory_limit: int | None = None
             ) -> BlockVector:
    """Solve a block bi-diagonal system with Blelloch's up-sweep / down-sweep scan.

    Args:
        system: upper or lower :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: one step per tree level of each sweep; pairs ``(row p, row p - d)``.
        memory_limit: bytes allowed for the padded ``n x n`` products.

    Returns:
        ``k`` blocks ``(batch, n_l)``. Steps: :func:`steps` (``≤ 2⌈log2 k⌉``); work:
        ``2k - popcount(k) - ⌊log2 k⌋ - 1`` (see :func:`work`), i.e. fewer than ``2k``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "blelloch", return_trace=True)
        >>> trace.steps, trace.work
        (3, 4)
    """
    return direct_solve(system, "blelloch", schedule(system.k), trace, memory_limit=memory_limit)
