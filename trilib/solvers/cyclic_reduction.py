"""Cyclic (odd–even) reduction: halve the system, recurse, back-substitute.

The equations are numbered in scan order ``p`` (``p = 0`` is solved first; block rows and scan
positions are mapped in ``_direct.py``): equation ``p`` couples to the one before it only,
``u_p = B_p u_{p-1} + r_p`` with ``B_0 = 0``. Level ``j`` keeps the equations
``p = k-1 - i·2^j`` (``i < m_j = ⌈k/2^j⌉``), counted from the last one solved.

* **Reduction.** Of the active equations, those with even ``i`` absorb the next one (odd ``i``,
  ``gap = 2^j`` positions before them: ``B <- B B'``, ``r <- r + B r'``) and now couple to the
  next even one: a bi-diagonal system of half the size. Repeat until one equation is left; it
  is solved.
* **Back-substitution.** Level by level in reverse, each eliminated (odd) equation takes its
  solved predecessor: ``u_p = r_p + B_p u_{p-gap}``, a mat-vec. The equation of a level with
  ``i = m_j - 1`` never needs this: it already couples to nothing.

The loop over levels *is* the tree: each level's active equations are one strided view of the
stack; their number halves on the way down and the saved levels are replayed on the way up.
"""

from __future__ import annotations

from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem, BlockVector
from ._affine import Step
from ._direct import direct_solve
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


def schedule(k: int) -> list[Step]:
    """The reduction levels, then the back-substitution levels in reverse."""
    gap, levels, tree = 1, [], []
    while -(-k // gap) > 1:                     # reduction: evens absorb the odd after them
        m = -(-k // gap)
        levels.append((gap, m))
        tree.append(Step(first=k - 1, stride=-2 * gap, count=m // 2, dist=gap))   # i = 0, 2, ..
        gap *= 2
    for gap, m in reversed(levels):             # back-substitution: odds take their predecessor
        count = (m - 1) // 2                    # i = 1, 3, .. below the level's last one
        if count:
            tree.append(Step(first=k - 1 - gap, stride=-2 * gap, count=count, dist=gap, matrix=False))
    return tree


@register("cyclic_reduction", BlockBidiagonalSystem, family="direct")
def cyclic_reduction(system: BlockBidiagonalSystem, trace, memory_limit: int | None = None
                     ) -> BlockVector:
    """Solve a block bi-diagonal system by odd–even cyclic reduction.

    Args:
        system: upper or lower :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: one step per reduction level, then one per back-substitution level; pairs
            ``(equation, equation it uses)`` in block rows.
        memory_limit: bytes allowed for the padded ``n x n`` products.

    Returns:
        ``k`` blocks ``(batch, n_l)``. Steps: ``2⌈log2 k⌉ - 1`` (k >= 2); work:
        ``Σ_{i<⌈log2 k⌉} (⌈k/2^i⌉ - 1)`` (see :func:`work`), about ``2k``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "cyclic_reduction", return_trace=True)
        >>> trace.steps, trace.work
        (3, 4)
    """
    return direct_solve(system, "cyclic_reduction", schedule(system.k), trace, memory_limit=memory_limit)
