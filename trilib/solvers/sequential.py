"""Sequential substitution: one block row after another, k steps.

For the backward (upper) system this is ordinary backpropagation, for the forward (lower)
system ordinary forward propagation (docs/theory.md §1).
"""

from __future__ import annotations

import torch

from ..systems import BlockBidiagonalSystem, NonlinearForwardSystem
from ._registry import register


@register("sequential", BlockBidiagonalSystem, family=("substitution", "matrix-free"))
def substitution(system: BlockBidiagonalSystem, trace) -> list[torch.Tensor]:
    """Back-substitution (upper) or forward substitution (lower), block by block.

    ``u_l = r_l + B_l u_{l+1}`` from the bottom row up (upper), or
    ``u_{l+1} = r_{l+1} + B_l u_l`` from the top down (lower). Steps: k; work: k - 1.
    """
    k = system.k
    u: list[torch.Tensor | None] = [None] * k
    first = k - 1 if system.upper else 0
    u[first] = system.rhs[first]
    if trace is not None:
        trace.add_step()
    for l in (range(k - 2, -1, -1) if system.upper else range(k - 1)):
        row, col = system.row_col(l)
        u[row] = system.rhs[row] + system.apply_block(l, u[col])
        if trace is not None:
            trace.add_step([(row, col)])
    return u


@register("sequential", NonlinearForwardSystem, family=("substitution", "matrix-free"))
def forward_substitution(system: NonlinearForwardSystem, trace) -> list[torch.Tensor]:
    """``z_l = f_l(W_l z_{l-1} + b_l)`` for l = 1..k: ordinary forward propagation."""
    z, out = system.x, []
    with torch.no_grad():
        for l in range(system.k):
            z = system.layer_map(l, z)
            out.append(z)
            if trace is not None:
                trace.add_step([(l, l - 1)] if l else [])
    return out
