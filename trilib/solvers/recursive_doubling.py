"""Recursive doubling (Stone 1973; Hillis–Steele / Kogge–Stone scan): ⌈log2 k⌉ steps.

Every row is an affine map ``u_p = B_p u_{p-1} + r_p`` in scan order (see ``_affine.py``).
In step ``s`` every row ``p >= d = 2^s`` absorbs the row ``d`` places before it. Afterwards row
``p`` covers the ``2d`` rows ending at ``p``; once ``d >= k`` every row reaches ``p = 0`` and
holds its solution. All rows work in every step: the fewest steps, but ``~k log2 k`` products.
"""

from __future__ import annotations

from ..systems import BlockBidiagonalSystem, BlockVector
from ._affine import doubling
from ._direct import direct_solve, doubling_work
from ._registry import register

#: Block products of recursive doubling, ``k ⌈log2 k⌉ - 2^⌈log2 k⌉ + 1``.
work = doubling_work


@register("recursive_doubling", BlockBidiagonalSystem, family="direct")
def recursive_doubling(system: BlockBidiagonalSystem, trace, memory_limit: int | None = None
                       ) -> BlockVector:
    """Solve a block bi-diagonal system by recursive doubling.

    Args:
        system: upper (backward) or lower (forward) :class:`BlockBidiagonalSystem`, any k >= 1.
        trace: receives one step per doubling: pairs ``(row p, row p - d)`` in block rows.
        memory_limit: bytes allowed for the padded ``n x n`` products (default
            ``trilib.config.memory_limit_bytes``).

    Returns:
        ``k`` blocks ``(batch, n_l)``. Steps: exactly ``⌈log2 k⌉``; work (one combine = one
        block product): ``k ⌈log2 k⌉ - 2^⌈log2 k⌉ + 1`` (see :func:`work`).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "recursive_doubling", return_trace=True)
        >>> trace.steps, trace.work, trace.combines[1]
        (2, 5, [(1, 3), (0, 2)])
    """
    # every row p = d .. k-1 (it has a row d places before it) absorbs row p - d, d = 1, 2, 4, ...
    return direct_solve(system, "recursive_doubling", doubling(system.k), trace, memory_limit=memory_limit)
