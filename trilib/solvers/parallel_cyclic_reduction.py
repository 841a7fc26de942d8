"""Parallel cyclic reduction (Hockney & Jesshope): ⌈log2 k⌉ steps.

PCR works on the *equations* of the system, numbered in scan order ``p`` (``p = 0`` is solved
first; block rows and scan positions are mapped in ``_direct.py``). Equation ``p`` couples to
unknown ``p - d`` only:

    u_p - B_p u_{p-d} = r_p          (d = 1 at the start, B_0 = 0).

In each step *every* equation whose partner ``p - d`` exists eliminates ``u_{p-d}`` with that
partner's equation: ``B_p <- B_p B_{p-d}``, ``r_p <- r_p + B_p r_{p-d}``, and ``d`` doubles.
After ``⌈log2 k⌉`` steps no equation couples to anything: ``u_p = r_p``.

For a tridiagonal system PCR and recursive doubling differ; for a bi-diagonal one (docs/theory.md §5)
they perform the same combines, which the traces show (PCR lists each step's equations from the
last one solved down).
"""

from __future__ import annotations

from ..systems import BlockBidiagonalSystem, BlockVector
from ._affine import Step
from ._direct import direct_solve, doubling_work
from ._registry import register

#: Block products of PCR: the same combines as recursive doubling on a bi-diagonal system.
work = doubling_work


def schedule(k: int) -> list[Step]:
    """Every equation ``p = k-1, k-2, .., d`` (its partner ``p - d`` exists) eliminates
    ``u_{p-d}``, for ``d = 1, 2, 4, ...``; the last step needs ``B_p`` no more."""
    steps, d = [], 1
    while d < k:
        steps.append(Step(first=k - 1, stride=-1, count=k - d, dist=d, matrix=2 * d < k))
        d *= 2
    return steps


@register("parallel_cyclic_reduction", BlockBidiagonalSystem, family="direct")
def parallel_cyclic_reduction(system: BlockBidiagonalSystem, trace,
                              memory_limit: int | None = None) -> BlockVector:
    """Solve a block bi-diagonal system by parallel cyclic reduction.

    Args:
        system: upper or lower :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: one step per halving of the coupling distance; pairs ``(equation, partner)``
            in block rows.
        memory_limit: bytes allowed for the padded ``n x n`` products.

    Returns:
        ``k`` blocks ``(batch, n_l)``. Steps: exactly ``⌈log2 k⌉``; work:
        ``k ⌈log2 k⌉ - 2^⌈log2 k⌉ + 1`` (see :func:`work`).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "parallel_cyclic_reduction", return_trace=True)
        >>> trace.steps, trace.work
        (2, 5)
    """
    return direct_solve(system, "parallel_cyclic_reduction", schedule(system.k), trace,
                        memory_limit=memory_limit)
