"""Solvers for the backward system of a computation graph (docs/theory.md §3).

* ``sequential``: back-substitution in reverse topological order, matrix-free (one
  vector-Jacobian product per node): ordinary backprop through the graph. k steps.
* ``level_schedule``: the nodes grouped into level sets by longest path to the output; every
  row of a level is solved at once from the levels below, and the level's vector-Jacobian
  products (independent of each other) push its errors on. Steps = the graph's depth (the
  analysis/solve split of sparse triangular solvers); matrix-free, so no block is stored.
* ``doubling``: ``(I - N)^{-1} = (I + N)(I + N^2)(I + N^4)...`` on the nilpotent ``N``
  (``N^depth = 0``), ceil(log2 depth) steps of materialised products.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_memory
from .._numerics import ceil_log2
from ..systems import GraphSystem
from ._registry import register


@register("sequential", GraphSystem, family=("substitution", "matrix-free"))
def graph_substitution(system: GraphSystem, trace) -> list[torch.Tensor]:
    """``v_i = r_i + sum_j J_ji^T v_j`` in reverse topological order (backprop on the DAG).

    Matrix-free: once ``v_j`` is known its VJP pushes ``J_ji^T v_j`` to every parent ``i``.
    Steps: k; work: one block product per edge.

    Example:
        >>> import torch, trilib
        >>> net = trilib.graph.resnet_mlp(4, blocks=1, seed=0)
        >>> U = trilib.backward_system(net, torch.randn(2, 4), lambda out: out.sum())
        >>> v, trace = trilib.solve(U, "sequential", return_trace=True)
        >>> trace.steps == U.k
        True
    """
    acc = list(system.rhs)
    v: list[torch.Tensor | None] = [None] * system.k
    with torch.no_grad():
        for i in reversed(range(system.k)):
            v[i] = acc[i]
            if trace is not None:
                trace.add_step([(i, j) for j in system.children[i]])
            for p, c in system.transpose_jacobian(i, v[i]).items():
                acc[p] = acc[p] + c
    return v


@register("level_schedule", GraphSystem, family="graph")
def level_schedule(system: GraphSystem, trace) -> list[torch.Tensor]:
    """Level scheduling: all rows of a level set at once, then the level's products at once.

    ``levels[0]`` (the output) is ``r`` itself; level ``s`` needs only levels ``< s``:
    ``v[L_s] = r[L_s] + N[L_s, :] v``, where ``N[L_s, :] v`` was accumulated by the
    vector-Jacobian products of the lower levels (independent of each other: one parallel
    step). Steps: ``system.depth``; work: one product per edge; no block is materialised.

    Example:
        >>> import torch, trilib
        >>> net = trilib.graph.resnet_mlp(4, blocks=2, seed=0)
        >>> U = trilib.backward_system(net, torch.randn(2, 4), lambda out: out.sum())
        >>> v, trace = trilib.solve(U, "level_schedule", return_trace=True)
        >>> trace.steps == U.depth
        True
    """
    acc = list(system.rhs)
    v: list[torch.Tensor | None] = [None] * system.k
    with torch.no_grad():
        for level in system.levels:
            for i in level:
                v[i] = acc[i]
            pushed = [system.transpose_jacobian(i, v[i]) for i in level]   # one parallel step
            for contributions in pushed:
                for p, c in contributions.items():
                    acc[p] = acc[p] + c
            if trace is not None:
                trace.add_step([(i, j) for i in level for j in system.children[i]])
    return v


@register("doubling", GraphSystem, family=("graph", "direct"))
def doubling(system: GraphSystem, trace) -> list[torch.Tensor]:
    """``v = (I + N^{2^{m-1}}) ... (I + N^2)(I + N) r`` with ``2^m >= depth``.

    Step ``s`` applies ``I + P`` to the vector and squares ``P = N^{2^s}`` (both only need
    ``P``, so they form one parallel step). Steps: ``ceil(log2 depth)``; work: block products
    of both.

    Example:
        >>> import torch, trilib
        >>> net = trilib.graph.resnet_mlp(4, blocks=2, seed=0)
        >>> U = trilib.backward_system(net, torch.randn(2, 4), lambda out: out.sum())
        >>> v, trace = trilib.solve(U, "doubling", return_trace=True)
        >>> U.depth, trace.steps
        (8, 3)
    """
    m = ceil_log2(system.depth)
    check_memory(system.dense_peak_bytes(copies=3),
                 f"doubling on a dense {system.offsets[-1]}-wide N for {system.batch_size} samples "
                 "(N, its square and the product at once)",
                 "Use method='sequential' or 'level_schedule', which never materialise N.")
    p = system.dense_offdiagonal()
    u = torch.cat(system.rhs, dim=-1)
    pattern = np.zeros((system.k, system.k), dtype=np.int64)
    for i, j in system.graph.edges:
        pattern[i, j] = 1
    with torch.no_grad():
        for s in range(m):
            u = u + torch.bmm(p, u.unsqueeze(-1)).squeeze(-1)
            pairs = list(zip(*np.nonzero(pattern)))
            work = len(pairs)
            if s < m - 1:
                p = torch.bmm(p, p)
                work += int((pattern @ pattern).sum())
                pattern = ((pattern @ pattern) > 0).astype(np.int64)
            if trace is not None:
                trace.add_step(pairs, work=work)
    return system.split(u)
