"""Parallel cyclic reduction (Hockney & Jesshope): ⌈log2 k⌉ steps.

PCR works on the *equations* of the system. Number them in elimination order ``q = 0..k-1``
so that equation ``q`` couples to unknown ``q + 1`` only (for an upper system ``q`` is the block
row; for a lower one the rows counted from the bottom):

    u_q - C_q u_{q+d} = f_q          (d = 1 at the start, C_q = B_l, and C_{k-1} = 0).

In each step *every* equation whose partner ``q + d`` exists eliminates ``u_{q+d}`` with that
partner's equation: ``C_q <- C_q C_{q+d}``, ``f_q <- f_q + C_q f_{q+d}``, and ``d`` doubles.
After ``⌈log2 k⌉`` steps no equation couples to anything: ``u_q = f_q``.

For a tridiagonal system PCR and recursive doubling differ; for a bi-diagonal one (docs/theory.md §5)
they perform the same combines, which the traces show. The code here states the algorithm in
PCR's own terms (equations eliminating neighbours), not as a scan.
"""

from __future__ import annotations

import torch

from ..systems import BlockBidiagonalSystem
from ._affine import affine_rows, doubling_work
from ._registry import register

#: Block products of PCR: the same combines as recursive doubling on a bi-diagonal system.
work = doubling_work


@register("parallel_cyclic_reduction", BlockBidiagonalSystem, family="direct")
def parallel_cyclic_reduction(system: BlockBidiagonalSystem, trace,
                              memory_limit: int | None = None) -> list[torch.Tensor]:
    """Solve a block bi-diagonal system by parallel cyclic reduction.

    Args:
        system: upper or lower :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: one step per halving of the coupling distance; pairs ``(equation, partner)``
            in block rows.
        memory_limit: bytes allowed for the padded ``n x n`` products.

    Returns:
        ``k`` tensors ``(batch, n_l)``. Steps: exactly ``⌈log2 k⌉``; work:
        ``k ⌈log2 k⌉ - 2^⌈log2 k⌉ + 1`` (see :func:`work`).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "parallel_cyclic_reduction", return_trace=True)
        >>> trace.steps, trace.work
        (2, 5)
    """
    k = system.k
    maps = affine_rows(system, "parallel_cyclic_reduction", live_products=k - 1,
                       memory_limit=memory_limit)
    # equation q of the elimination order sits at scan position p = k - 1 - q
    d = 1
    while d < k:
        # every equation q = 0 .. k-d-1 (its partner q + d exists) eliminates u_{q+d};
        # the last step needs C_q no more
        maps.step(trace, first=k - 1, stride=-1, count=k - d, dist=d, matrix=2 * d < k)
        d *= 2
    return maps.solution()
