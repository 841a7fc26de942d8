"""Cyclic (odd–even) reduction: halve the system, recurse, back-substitute.

Number the equations in elimination order ``q = 0..k-1`` so that equation ``q`` couples to the
next one only, ``u_q = C_q u_{q+1} + f_q`` (the upper system's block rows; the lower system's
rows counted from the bottom), with ``C_{k-1} = 0``.

* **Reduction.** Keep the even equations of the active list; each absorbs the odd equation
  after it (``C <- C C'``, ``f <- f + C f'``) and now couples to the next even one: a
  bi-diagonal system of half the size. Repeat until one equation is left; it is solved.
* **Back-substitution.** Level by level in reverse, each eliminated (odd) equation takes its
  solved successor: ``u_q = f_q + C_q u_{q'}``, a mat-vec. The last equation of a level never
  needs this: it already couples to nothing.

The loop over levels *is* the tree: the active equations of level ``j`` are ``q = i·2^j``, so
each level is one strided view of the stack; their number halves on the way down and the saved
levels are replayed on the way up.
"""

from __future__ import annotations

import torch

from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem
from ._affine import affine_rows
from ._registry import register


def steps(k: int) -> int:
    """Parallel steps: ``⌈log2 k⌉`` reductions and ``⌈log2 k⌉ - 1`` back-substitutions
    (the level of two equations has nothing to substitute); ``2⌈log2 k⌉ - 1`` for k >= 2."""
    return max(0, 2 * ceil_log2(k) - 1)


def work(k: int) -> int:
    """Block products: a level of ``m`` equations does ``⌊m/2⌋`` reductions and ``⌊(m-1)/2⌋``
    back-substitutions, ``m - 1`` in all; with ``m_i = ⌈k/2^i⌉`` the total is
    ``Σ_{i<⌈log2 k⌉} (⌈k/2^i⌉ - 1)``."""
    return sum(-(-k // 2**i) - 1 for i in range(ceil_log2(k)))


@register("cyclic_reduction", BlockBidiagonalSystem, family="direct")
def cyclic_reduction(system: BlockBidiagonalSystem, trace, memory_limit: int | None = None
                     ) -> list[torch.Tensor]:
    """Solve a block bi-diagonal system by odd–even cyclic reduction.

    Args:
        system: upper or lower :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: one step per reduction level, then one per back-substitution level; pairs
            ``(equation, equation it uses)`` in block rows.
        memory_limit: bytes allowed for the padded ``n x n`` products.

    Returns:
        ``k`` tensors ``(batch, n_l)``. Steps: ``2⌈log2 k⌉ - 1`` (k >= 2); work:
        ``Σ_{i<⌈log2 k⌉} (⌈k/2^i⌉ - 1)`` (see :func:`work`), about ``2k``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "cyclic_reduction", return_trace=True)
        >>> trace.steps, trace.work
        (3, 4)
    """
    k = system.k
    maps = affine_rows(system, "cyclic_reduction", live_products=k // 2, memory_limit=memory_limit)
    # Equation q sits at scan position p = k - 1 - q. The active equations of level j are
    # q = i·2^j (i < m_j = ⌈k / 2^j⌉): arithmetic progressions, so every step is one strided view.
    gap, sizes = 1, []
    while -(-k // gap) > 1:                     # reduction: evens absorb the odd after them
        m = -(-k // gap)
        sizes.append((gap, m))
        # q = 0, 2·gap, ... (m // 2 of them) absorb q + gap
        maps.step(trace, first=k - 1, stride=-2 * gap, count=m // 2, dist=gap)
        gap *= 2
    for gap, m in reversed(sizes):              # back-substitution: odds take their successor
        count = (m - 1) // 2                    # q = gap, 3·gap, ... below the level's last one
        if count:
            maps.step(trace, first=k - 1 - gap, stride=-2 * gap, count=count, dist=gap, matrix=False)
    return maps.solution()
