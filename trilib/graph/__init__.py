"""General computation graphs (DAGs) as triangular systems, through Jacobians (docs/theory.md §3-4).

``torch.export`` records a module's forward pass as a graph of ATen operations (hooks, patched
forwards, parametrizations and in-place ops included). Every operation ``i`` whose output
``x_i`` depends on a parameter and on the input becomes one block row (integer inputs such as
token ids are data); its error ``v_i = dE/dx_i`` (one sample's part, flattened, wherever the
batch lives in the tensor: :mod:`trilib.graph.layout`) satisfies

    v_i = r_i + sum over children j of  J_ji^T v_j,        J_ji = d x_j / d x_i  (per sample)

with ``r = g = dE/d output`` at the output node and 0 elsewhere. In topological order this is
the unit upper block triangular system ``(I - N) v = r`` with ``N_ij = J_ji^T``: its sparsity
pattern is the graph's edges. An FNN is the chain; skips, branches and merges add blocks
further from the diagonal.

Matrix-free methods (``sequential``, ``level_schedule``, ``jacobi``) need only vector-Jacobian
products ``J^T v``: applied in their structured form where a row has one (a shape operation is a
permutation, an element-wise one a diagonal, a Linear over tokens ``I_T ⊗ W^T``: ``GraphNode.
product``), else one ``torch.autograd.grad`` on the row's recorded forward; the parameter
gradients of all rows are one call of autograd's engine;
``doubling`` needs the blocks themselves, materialised per sample: structured where cheap
(``W^T`` for a Linear, ``diag(f'(x))`` for element-wise operations) and otherwise by the VJP
batched over basis vectors (what ``torch.func.jacrev`` does).

Example:
    >>> import torch, trilib
    >>> net = trilib.graph.resnet_mlp(width=4, blocks=2, seed=0)
    >>> U = trilib.backward_system(net, torch.randn(3, 4), lambda out: out.square().sum())
    >>> U.k, U.depth
    (8, 8)
"""

from .capture import backward_problem, capture
from .models import SkipChain, densenet_mlp, inception_mlp, layernorm_block, resnet_mlp, small_cnn

__all__ = ["SkipChain", "backward_problem", "capture", "densenet_mlp", "inception_mlp",
           "layernorm_block", "resnet_mlp", "small_cnn"]
