"""Block Jacobi with p contiguous blocks of rows (docs/theory.md §6): each block substitutes
inside itself, reading its neighbour block's value from the previous sweep. Exact after p
sweeps (default p = min(2, k)); p = 1 is substitution, p = k is Jacobi. One block per device is
pipelined model parallelism."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_int, check_memory
from ..systems import BlockBidiagonalSystem
from ._registry import register
from ._sweeps import (
    check_common,
    jacobi_step,
    own_trace,
    record_step,
    slabs,
    sweep_loop,
    sweep_pairs,
)

__all__ = ["block_jacobi", "dependency_order", "coupling_of_row"]


def dependency_order(system: BlockBidiagonalSystem, rows: range) -> list[int]:
    """Rows in the order substitution visits them (bottom-up for upper, top-down for lower)."""
    return list(reversed(rows)) if system.upper else list(rows)


def coupling_of_row(system: BlockBidiagonalSystem) -> dict[int, int]:
    """``row -> l``: the coupling block that row ``row`` reads (rows without one are absent)."""
    return {system.row_col(l)[0]: l for l in range(system.k - 1)}


@register("block_jacobi", BlockBidiagonalSystem, family="iterative")
def block_jacobi(system: BlockBidiagonalSystem, trace, *, p: int | None = None, tol: float | None = None,
                 max_sweeps: int | None = None, reference: Sequence[torch.Tensor] | None = None,
                 on_failure: str = "warn") -> list[torch.Tensor]:
    """Block Jacobi with ``p`` contiguous blocks of rows (p devices, each owning a slab).

    In a sweep every block substitutes through its rows at the same time; the one row that
    reads outside its block reads the neighbour's value from the previous sweep. The inner
    step ``i`` treats row ``i`` of every block at once. Exact after p sweeps.

    Args:
        system: upper or lower :class:`~trilib.systems.BlockBidiagonalSystem`.
        trace: one step per sweep (pairs: the k - 1 couplings);
            ``trace.info["steps_per_sweep"]`` = the longest block.
        p: number of blocks, ``1 <= p <= k`` (p = 1 is substitution, p = k is Jacobi); default
            ``min(2, k)`` (two devices; one on a single-layer system).
        tol, reference, on_failure: as for :func:`~trilib.solvers.jacobi.jacobi`.
        max_sweeps: sweep limit (default and cap: p, the exact count).

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "block_jacobi", p=2, return_trace=True)
        >>> trace.steps, trace.info["steps_per_sweep"]
        (2, 3)
    """
    trace, wanted = own_trace(trace, "block_jacobi")
    p = min(2, system.k) if p is None else check_int("p", p, 1, system.k)
    tol, max_sweeps, reference = check_common(system, tol, max_sweeps, reference, on_failure)
    blocks = [dependency_order(system, rows) for rows in slabs(system.k, p)]
    reads = coupling_of_row(system)
    pairs = sweep_pairs([system.row_col(l) for l in range(system.k - 1)], wanted)
    owner = {row: j for j, b in enumerate(blocks) for row in b}
    longest = max(len(b) for b in blocks)
    trace.info["steps_per_sweep"] = longest
    trace.info["blocks"] = [sorted(b) for b in blocks]
    trace.info["p"] = p
    # inner step i treats row i of every block: its rows, the coupling each reads, and whether
    # that coupling reaches outside the block (then it reads the previous sweep)
    inner = []
    for i in range(longest):
        rows = [b[i] for b in blocks if i < len(b)]
        free = [row for row in rows if row not in reads]
        coupled = [(row, reads[row]) for row in rows if row in reads]
        outside = [owner[system.row_col(l)[1]] != owner[row] for row, l in coupled]
        inner.append((free, coupled, outside, _RowBatch(system, coupled)))

    def sweep(u):
        new = list(u)
        for free, coupled, outside, batch in inner:     # one parallel step each
            for row in free:
                new[row] = system.rhs[row]
            sources = [(u if out else new)[system.row_col(l)[1]] for (_, l), out in zip(coupled, outside)]
            for (row, _), value in zip(coupled, batch(sources)):
                new[row] = value
        record_step(trace, pairs, system.k - 1)
        return new, jacobi_step(system, new)[1]

    return sweep_loop(trace, sweep, [torch.zeros_like(r) for r in system.rhs], system=system, tol=tol,
                      max_sweeps=max_sweeps, exact=p, reference=reference, on_failure=on_failure,
                      exact_after=f"block Jacobi is exact after p = {p} sweeps")


class _RowBatch:
    """``r_row + B_l u_col`` for several independent rows ``(row, l)`` as one batched product
    when their blocks share a shape (the usual case: equal hidden widths), else block by block."""

    def __init__(self, system: BlockBidiagonalSystem, coupled: list[tuple[int, int]]):
        self.system, self.coupled = system, coupled
        mats = [system.mats[l] for _, l in coupled]
        scales = [system.scales[l] for _, l in coupled]
        self.batched = (len(coupled) > 1 and all(m.shape == mats[0].shape for m in mats)
                        and all((d is None) == (scales[0] is None) for d in scales))
        if self.batched:
            check_memory(sum(m.numel() * m.element_size() for m in mats),
                         f"stacking {len(mats)} coupling blocks for block Jacobi",
                         "Use fewer blocks p, or method='sequential'.")
            self.mats = torch.stack(mats)                               # (q, [batch,] rows, cols)
            self.scales = None if scales[0] is None else torch.stack(scales)
            self.rhs = torch.stack([system.rhs[row] for row, _ in coupled])

    def __call__(self, sources: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.batched:
            return [self.system.rhs[row] + self.system.apply_block(l, x)
                    for (row, l), x in zip(self.coupled, sources)]
        x = torch.stack(sources)                                        # (q, batch, cols)
        if self.mats.dim() == 3:
            out = x @ self.mats.transpose(-1, -2)
        else:
            out = (self.mats @ x.unsqueeze(-1)).squeeze(-1)
        if self.scales is not None:
            out = out * self.scales
        return list((self.rhs + out).unbind(0))
