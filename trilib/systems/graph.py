"""The backward system of a computation graph (DAG): unit upper block triangular with the graph's
pattern, ``N_ij = J_ji^T`` for each edge ``i -> j`` (docs/theory.md §3-4).

The system holds, per node, a vector-Jacobian-product function on per-sample blocks and (for
``linear`` nodes) the weight; :mod:`trilib.graph` builds it from a module captured by
``torch.export``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from .._checks import check_memory
from .base import TriangularSystem

__all__ = ["GraphNode", "GraphSystem"]


@dataclass
class GraphNode:
    """One block row of a :class:`GraphSystem`: an operation whose output carries the batch.

    Attributes:
        name: the graph node name (unique).
        op: a readable name of the operation (ATen name and the module it ran in).
        shape: the per-sample block shape; the block width is its product.
        parents: indices of the block rows this operation reads (its incoming edges).
        structure: ``"linear"`` (block ``W^T`` shared by the batch), ``"diagonal"``
            (element-wise: ``diag(J^T 1)``) or ``"dense"`` (materialised per sample).
        layout: where the batch lives in the node's value (a ``trilib.graph.layout.Layout``
            ``(dim, outer, inner)``), or None when the batch is dimension 0.
        product: how ``J_ji^T v`` is applied: ``"permutation"`` (a shape operation: a gather
            or scatter-add of ``v``), ``"diagonal"`` (``d ⊙ v``), ``"linear"`` (``v W`` per
            token: ``I_T ⊗ W^T``), all without a call into autograd, or ``"autograd"`` (one
            ``torch.autograd.grad`` on the row's recorded forward); ``""`` for a row without
            parents.
    """

    name: str
    op: str
    shape: tuple[int, ...]
    parents: tuple[int, ...]
    structure: str
    layout: tuple[int, int, int] | None = None
    product: str = "autograd"


class GraphSystem(TriangularSystem):
    """The backward system ``(I - N) v = r`` of a traced computation graph (docs/theory.md §3).

    Block row ``i`` is operation ``i`` in topological order; ``N_ij = J_ji^T`` for each edge
    ``i -> j``, so ``N`` is strictly block upper triangular with the graph's pattern. Build it
    with :func:`trilib.backward_system` (any module ``torch.export`` captures).

    Attributes:
        nodes: the :class:`GraphNode` of every block row.
        graph: the DAG as a ``networkx.DiGraph`` on block indices, edges parent -> child.
        levels: backward level sets: ``levels[0]`` holds the rows with no child (the output),
            ``levels[s]`` the rows whose longest path to a sink has ``s`` edges.
        depth: the number of levels (nodes on the longest path).
    """

    upper = True
    symbol = "v"

    def __init__(self, nodes: Sequence[GraphNode], rhs: Sequence[torch.Tensor],
                 vjps: Sequence[Callable | None], linear_weights: Sequence[torch.Tensor | None]):
        self.nodes = list(nodes)
        self.rhs = tuple(rhs)
        self._vjps = list(vjps)
        self._weights = list(linear_weights)
        self._blocks: dict[tuple[int, int], torch.Tensor] | None = None
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.nodes)))
        g.add_edges_from((i, j) for j, node in enumerate(self.nodes) for i in node.parents)
        self.graph = g
        self.levels = [sorted(level) for level in nx.topological_generations(g.reverse(copy=False))]
        self.depth = len(self.levels)
        self.children = [sorted(g.successors(i)) for i in range(len(self.nodes))]

    # -- matrix-free ------------------------------------------------------------------------
    def transpose_jacobian(self, j: int, v_j: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{i: J_ji^T v_j}`` for every parent ``i`` of node ``j``: one vector-Jacobian product.

        Args:
            j: the node (block row) index.
            v_j: a ``(batch, n_j)`` block of a vector.

        Returns:
            A dict from parent index to its ``(batch, n_i)`` contribution.
        """
        node = self.nodes[j]
        if not node.parents:
            return {}
        return dict(zip(node.parents, self._vjps[j](v_j)))

    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``N u`` by one VJP per node (no block is materialised)."""
        out = [torch.zeros_like(r) for r in self.rhs]
        for j in range(self.k):
            for i, c in self.transpose_jacobian(j, u[j]).items():
                out[i] = out[i] + c
        return out

    # -- materialised blocks ----------------------------------------------------------------
    def dense_block_bytes(self) -> int:
        """Bytes needed to hold every off-diagonal block densely for the whole batch."""
        sizes = self.block_sizes
        per = sum(sizes[i] * sizes[j] for i, j in self.graph.edges)
        return self.batch_size * per * self.rhs[0].element_size()

    def dense_peak_bytes(self, copies: int = 1) -> int:
        """Peak bytes of a method holding ``copies`` dense ``(batch, N, N)`` matrices at once
        (doubling: ``P``, its square and the product's workspace) next to the blocks."""
        size = self.offsets[-1]
        return (copies * self.batch_size * size * size * self.rhs[0].element_size()
                + self.dense_block_bytes())

    def blocks(self) -> dict[tuple[int, int], torch.Tensor]:
        """Every block ``N_ij = J_ji^T`` as a ``(batch, n_i, n_j)`` tensor (cached).

        Linear layers give ``W^T`` (shared, expanded without copy), element-wise operations
        ``diag(J^T 1)``, anything else the VJP batched over the ``n_j`` basis vectors.
        """
        if self._blocks is not None:
            return self._blocks
        check_memory(self.dense_block_bytes(), f"materialising the {self.graph.number_of_edges()} "
                     "Jacobian blocks of the graph",
                     "Use method='sequential' or 'level_schedule', which only need vector-Jacobian "
                     "products.")
        batch, sizes = self.batch_size, self.block_sizes
        blocks: dict[tuple[int, int], torch.Tensor] = {}
        with torch.no_grad():
            for j, node in enumerate(self.nodes):
                if not node.parents:
                    continue
                if node.structure == "linear":
                    (i,) = node.parents
                    blocks[(i, j)] = self._weights[j].t().expand(batch, -1, -1)
                elif node.structure == "diagonal":
                    ones = self.rhs[j].new_ones(batch, sizes[j])
                    for i, d in self.transpose_jacobian(j, ones).items():
                        blocks[(i, j)] = torch.diag_embed(d)
                else:
                    eye = torch.eye(sizes[j], dtype=self.dtype, device=self.device)
                    basis = eye.unsqueeze(1).expand(sizes[j], batch, sizes[j])
                    rows = self._vjps[j](basis, batched=True)
                    for i, r in zip(node.parents, rows):
                        blocks[(i, j)] = r.permute(1, 2, 0)       # (batch, n_i, n_j) = J_ji^T
        self._blocks = blocks
        return blocks

    def dense_blocks(self, sample: int = 0):
        sample = self._check_sample(sample)
        for (i, j), b in self.blocks().items():
            yield i, j, b[sample]

    def dense_offdiagonal(self) -> torch.Tensor:
        """``N`` of every sample as one dense ``(batch, N, N)`` tensor (memory-checked)."""
        size = self.offsets[-1]
        check_memory(self.dense_peak_bytes(), f"a dense {size}x{size} N for {self.batch_size} samples",
                     "Use method='sequential' or 'level_schedule', which never materialise N.")
        off = self.offsets
        n = self.rhs[0].new_zeros(self.batch_size, size, size)
        for (i, j), b in self.blocks().items():
            n[:, off[i]:off[i + 1], off[j]:off[j + 1]] = b
        return n

    def split(self, u: torch.Tensor) -> list[torch.Tensor]:
        """A ``(batch, N)`` tensor cut into the ``k`` blocks ``(batch, n_i)``."""
        return list(torch.split(u, self.block_sizes, dim=-1))

    def with_rhs(self, rhs: Sequence[torch.Tensor]) -> GraphSystem:
        """The same matrix with another right-hand side."""
        out = GraphSystem(self.nodes, rhs, self._vjps, self._weights)
        out._blocks = self._blocks
        return out

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", depth={self.depth})"
