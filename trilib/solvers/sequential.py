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
    ``B_l = diag(d_l) M_l`` is never formed: each row is one product ``M_l u`` and one fused
    ``r + d * (M_l u)``, on views of the system's stacked runs of blocks.
    """
    k, upper = system.k, system.upper
    rhs = system.rhs
    u: list[torch.Tensor | None] = [None] * k
    first = k - 1 if upper else 0
    u[first] = rhs[first]
    if trace is not None:
        trace.add_step()
    for run in (reversed(system.block_runs) if upper else system.block_runs):
        blocks = range(run.stop - 1, run.start - 1, -1) if upper else range(run.start, run.stop)
        # the per-block views, in the order substitution visits them
        mats = (run.mats.mT if run.shared else run.mats).unbind(0)
        scales = (None,) * len(mats) if run.scales is None else run.scales.unbind(0)
        if upper:
            mats, scales = mats[::-1], scales[::-1]
        for l, m, d in zip(blocks, mats, scales):
            row, col = (l, l + 1) if upper else (l + 1, l)
            x = u[col]
            prod = torch.mm(x, m) if run.shared else torch.bmm(m, x.unsqueeze(-1)).squeeze(-1)
            u[row] = rhs[row] + prod if d is None else torch.addcmul(rhs[row], d, prod)
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
