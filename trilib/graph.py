"""General computation graphs (DAGs) as triangular systems, through Jacobians (THEORY §3-4).

``torch.fx`` traces a module into a graph of operations. Every operation ``i`` whose output
``x_i`` carries the batch becomes one block row; its error ``v_i = dE/dx_i`` (flattened per
sample) satisfies

    v_i = r_i + sum over children j of  J_ji^T v_j,        J_ji = d x_j / d x_i  (per sample)

with ``r = g = dE/d output`` at the output node and 0 elsewhere. In topological order this is
the unit upper block triangular system ``(I - N) v = r`` with ``N_ij = J_ji^T``: its sparsity
pattern is the graph's edges. An FNN is the chain; skips, branches and merges add blocks
further from the diagonal.

Matrix-free use (``sequential``, ``jacobi``) needs only vector-Jacobian products ``J^T v``
(:func:`torch.func.vjp`); direct parallel methods (``level_schedule``, ``doubling``) need the
blocks themselves, materialised per sample: structured where cheap (``W^T`` for a Linear,
``diag(f'(x))`` for element-wise operations) and otherwise by a VJP vmapped over basis
vectors (what ``torch.func.jacrev`` does).

Example:
    >>> import torch, trilib
    >>> net = trilib.graph.resnet_mlp(width=4, blocks=2, seed=0)
    >>> U = trilib.backward_system(net, torch.randn(3, 4), lambda out: out.square().sum())
    >>> U.k, U.depth
    (8, 8)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp

from ._checks import UnsupportedLayerError, check_finite, check_matches, check_memory
from .fnn import ELEMENTWISE, loss_gradient
from .systems import TriangularSystem

__all__ = [
    "GraphSystem", "GraphNode", "capture", "graph_problem",
    "SkipChain", "resnet_mlp", "densenet_mlp", "inception_mlp", "small_cnn", "layernorm_block",
]

# Functions and tensor methods that act element by element: when every graph parent has the
# output's shape, each Jacobian block is diagonal and J^T 1 is that diagonal.
_ELEMENTWISE_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.neg, operator.truediv, torch.add, torch.sub,
    torch.mul, torch.neg, torch.div, torch.tanh, torch.sigmoid, torch.relu, torch.exp, torch.sin,
    torch.cos, F.relu, F.gelu, F.silu, F.elu, F.softplus, F.leaky_relu, F.tanh, F.sigmoid,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "neg", "div", "tanh", "sigmoid", "relu", "exp", "sin",
                        "cos"}


def _op_name(node: torch.fx.Node, root: nn.Module | None = None) -> str:
    """A readable name of the operation a node performs, for errors and plots."""
    if node.op == "call_module":
        mod = root.get_submodule(node.target) if root is not None else None
        return f"{node.target} ({type(mod).__name__})" if mod is not None else str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return f"{node.op} {node.target}"


@dataclass
class GraphNode:
    """One block row of a :class:`GraphSystem`: an operation whose output carries the batch.

    Attributes:
        name: the ``torch.fx`` node name (unique).
        op: a readable name of the operation (module path and type, or function name).
        shape: the per-sample output shape; the block width is its product.
        parents: indices of the block rows this operation reads (its incoming edges).
        structure: ``"linear"`` (block ``W^T`` shared by the batch), ``"diagonal"``
            (element-wise: ``diag(J^T 1)``) or ``"dense"`` (materialised per sample).
    """

    name: str
    op: str
    shape: tuple[int, ...]
    parents: tuple[int, ...]
    structure: str


class GraphSystem(TriangularSystem):
    """The backward system ``(I - N) v = r`` of a traced computation graph (THEORY §3).

    Block row ``i`` is operation ``i`` in topological order; ``N_ij = J_ji^T`` for each edge
    ``i -> j``, so ``N`` is strictly block upper triangular with the graph's pattern. Build it
    with :func:`trilib.backward_system` (any ``torch.fx``-traceable module).

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
        cot = self._vjps[j](v_j.reshape(v_j.shape[0], *node.shape))
        return {i: c.reshape(c.shape[0], -1) for i, c in zip(node.parents, cot)}

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

    def blocks(self) -> dict[tuple[int, int], torch.Tensor]:
        """Every block ``N_ij = J_ji^T`` as a ``(batch, n_i, n_j)`` tensor (cached).

        Linear layers give ``W^T`` (shared, expanded without copy), element-wise operations
        ``diag(J^T 1)``, anything else a VJP vmapped over the ``n_j`` basis vectors.
        """
        if self._blocks is not None:
            return self._blocks
        check_memory(self.dense_block_bytes(), f"materialising the {self.graph.number_of_edges()} "
                     "Jacobian blocks of the graph",
                     "Use method='sequential' or 'jacobi', which only need vector-Jacobian products.")
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
                    rows = torch.vmap(lambda e, j=j: tuple(self.transpose_jacobian(j, e).values()))(basis)
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
        check_memory(self.batch_size * size * size * self.rhs[0].element_size(),
                     f"a dense {size}x{size} N for {self.batch_size} samples",
                     "Use method='sequential' or 'jacobi', which never materialise N.")
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


# -- capture ------------------------------------------------------------------------------
_TRAIN_ONLY = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _trace(module: nn.Module) -> torch.fx.GraphModule:
    for name, sub in module.named_modules():
        if isinstance(sub, _TRAIN_ONLY) and sub.training:
            raise UnsupportedLayerError(
                f"layer {name or type(module).__name__} ({type(sub).__name__}) is in training mode, "
                "where it mixes samples or is random, so per-sample Jacobians do not describe it; "
                "call model.eval() first")
    try:
        return torch.fx.symbolic_trace(module)
    except Exception as e:  # fx raises many kinds: TraceError, TypeError, NotImplementedError
        raise UnsupportedLayerError(
            f"torch.fx cannot trace {type(module).__name__}: {type(e).__name__}: {e}. Make its "
            "forward free of control flow that depends on tensor values (or move that part into "
            "a submodule torch.fx treats as a leaf), or compute dE/dp with torch.autograd") from e


class _Capture:
    """A traced module run once, keeping what each graph node needs to be re-evaluated."""

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.module = module
        self.gm = _trace(module)
        self.graph = self.gm.graph
        places = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(places) != 1:
            raise UnsupportedLayerError(
                f"{type(module).__name__}.forward takes {len(places)} inputs "
                f"({', '.join(n.name for n in places)}); trilib's graph path needs exactly one "
                "input tensor x: wrap the model so the other inputs are fixed attributes")
        self.input = places[0]
        self.x = x
        self.batch = x.shape[0]
        self.values: dict[torch.fx.Node, object] = {}
        with torch.no_grad():
            for node in self.graph.nodes:
                if node.op == "output":
                    self.output = node.args[0]
                    break
                try:
                    self.values[node] = self._eval(node, self._lookup_recorded, {})
                except Exception as e:
                    raise UnsupportedLayerError(
                        f"operation {_op_name(node, self.gm)} (graph node {node.name!r}) failed "
                        f"when trilib ran the traced module: {type(e).__name__}: {e}") from e
        self._find_unknowns()

    # evaluation of one node with a given way of looking up its argument nodes
    def _eval(self, node: torch.fx.Node, lookup: Callable, params: dict[str, torch.Tensor]):
        if node.op == "placeholder":
            return self.x
        if node.op == "get_attr":
            if node.target in params:
                return params[node.target]
            obj = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        args = torch.fx.node.map_arg(node.args, lookup)
        kwargs = torch.fx.node.map_arg(node.kwargs, lookup)
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            prefix = f"{node.target}."
            local = {n[len(prefix):]: p for n, p in params.items() if n.startswith(prefix)}
            if local:
                return functional_call(mod, local, tuple(args), kwargs)
            return mod(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise AssertionError(f"unexpected fx node kind {node.op}")

    def _lookup_recorded(self, n: torch.fx.Node):
        return self.values[n]

    def _find_unknowns(self) -> None:
        """Block rows: floating tensors that depend on x and keep the batch dimension first."""
        depends: set[torch.fx.Node] = {self.input}
        self.unknowns: list[torch.fx.Node] = []
        for node in self.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if not any(a in depends for a in node.all_input_nodes):
                continue
            depends.add(node)
            val = self.values[node]
            if isinstance(val, torch.Tensor):
                if not val.is_floating_point():
                    raise UnsupportedLayerError(
                        f"operation {_op_name(node, self.gm)} (graph node {node.name!r}) returns a "
                        f"{val.dtype} tensor that depends on x; it has no Jacobian rule (it is not "
                        "differentiable). Remove it from the part of the model trilib solves")
                if val.dim() == 0 or val.shape[0] != self.batch:
                    raise UnsupportedLayerError(
                        f"operation {_op_name(node, self.gm)} (graph node {node.name!r}) returns "
                        f"shape {tuple(val.shape)}, which has no leading batch dimension of size "
                        f"{self.batch}: it mixes samples, so per-sample Jacobians cannot describe "
                        "it. Keep the batch dimension (e.g. flatten(1) instead of view(-1)) or "
                        "move the reduction into loss_fn")
                self.unknowns.append(node)
        self.index = {n: i for i, n in enumerate(self.unknowns)}
        out = self.output
        if not isinstance(out, torch.fx.Node) or out not in self.index:
            raise UnsupportedLayerError(
                f"{type(self.module).__name__} must return one tensor computed from x with the "
                f"batch dimension first; it returns {out!r}. Wrap it so forward returns a single "
                "tensor")

    def parents(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """Unknowns reached through node's arguments (through ints, tuples, constants)."""
        found: list[torch.fx.Node] = []
        stack = list(node.all_input_nodes)
        seen = set()
        while stack:
            n = stack.pop(0)
            if n in seen:
                continue
            seen.add(n)
            if n in self.index:
                found.append(n)
            elif n.op != "placeholder":
                stack.extend(n.all_input_nodes)
        return sorted(found, key=self.index.get)

    def param_names(self, node: torch.fx.Node) -> list[str]:
        """Qualified names of the parameters node's operation reads (its own and inlined)."""
        names, stack, seen = [], [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module":
                names += [f"{n.target}.{p}" for p, _ in
                          self.gm.get_submodule(n.target).named_parameters()]
            elif n.op == "get_attr" and isinstance(self.values.get(n), nn.Parameter):
                names.append(str(n.target))
            if n is node or n not in self.index:
                stack.extend(a for a in n.all_input_nodes if a not in self.index)
        return list(dict.fromkeys(names))

    def node_function(self, node: torch.fx.Node, parents: list[torch.fx.Node]) -> Callable:
        """``f(parent_values, params) -> node's value``, recomputing any inlined ancestors."""

        def f(values: Sequence[torch.Tensor], params: dict[str, torch.Tensor]):
            env = dict(zip(parents, values))

            def lookup(n):
                if n in env:
                    return env[n]
                if n.op == "placeholder":
                    return self.x
                env[n] = self._eval(n, lookup, params)
                return env[n]

            return self._eval(node, lookup, params)

        return f


def _structure(cap: _Capture, node: torch.fx.Node, parents: list[torch.fx.Node]) -> str:
    out_shape = cap.values[node].shape
    if node.op == "call_module":
        mod = cap.gm.get_submodule(node.target)
        if type(mod) is nn.Linear and (not parents or (
                len(parents) == 1 and node.args[0] is parents[0] and cap.values[parents[0]].dim() == 2)):
            return "linear"
        elementwise = type(mod) in ELEMENTWISE
    elif node.op == "call_function":
        elementwise = node.target in _ELEMENTWISE_FUNCS
    elif node.op == "call_method":
        elementwise = node.target in _ELEMENTWISE_METHODS
    else:
        elementwise = False
    if elementwise and all(cap.values[p].shape == out_shape for p in parents):
        return "diagonal"
    return "dense"


def capture(module: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None,
            loss_fn: Callable | None = None):
    """Trace ``module`` on ``x`` and build its backward :class:`GraphSystem`.

    Args:
        module: any ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace, with one input
            and one output tensor, both with the batch dimension first, and no operation that
            mixes samples.
        x: the input batch ``(batch, ...)``.
        g: ``dE/d output`` ``(batch, ...)``; or give ``loss_fn`` and it comes from autograd.
        loss_fn: ``loss_fn(module(x))`` returns the scalar loss E.

    Returns:
        ``(system, loss, parameter_gradients)`` where ``parameter_gradients(v)`` maps a solution
        to ``{name: dE/dp}`` (one VJP per node w.r.t. its parameters, all independent).

    Raises:
        UnsupportedLayerError: the module cannot be traced, or an operation has no Jacobian
            rule or mixes samples; the message names the operation and what to do.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    params = list(module.parameters())
    if params:
        for i, p in enumerate(params):
            check_matches(f"parameter {i}", p, params[0].dtype, params[0].device,
                          owner="the first parameter")
        check_matches("x", x, params[0].dtype, params[0].device)
    elif not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading batch dimension, (batch, ...), got "
                         f"shape {tuple(x.shape)}; for one sample use x.unsqueeze(0)")
    check_finite("x", x)
    cap = _Capture(module, x)
    out = cap.values[cap.output]
    loss = None
    if g is None:
        if loss_fn is None:
            raise TypeError("give either g (dE/d output) or loss_fn")
        loss, g = loss_gradient(out, loss_fn)
    elif g.shape != out.shape:
        raise ValueError(f"g has shape {tuple(g.shape)} but the module output has {tuple(out.shape)}")
    batch = cap.batch
    gm_params = dict(cap.gm.named_parameters())

    nodes, vjps, weights, fns = [], [], [], []
    for node in cap.unknowns:
        parents = cap.parents(node)
        value = cap.values[node]
        f = cap.node_function(node, parents)
        structure = _structure(cap, node, parents)
        nodes.append(GraphNode(node.name, _op_name(node, cap.gm), tuple(value.shape[1:]),
                               tuple(cap.index[p] for p in parents), structure))
        pnames = cap.param_names(node)
        fns.append((node, f, parents, pnames))
        frozen = {n: gm_params[n].detach() for n in pnames}
        if parents:
            primals = tuple(cap.values[p] for p in parents)
            try:
                with torch.no_grad():
                    _, fn = vjp(lambda *vals, f=f, frozen=frozen: f(vals, frozen), *primals)
                    fn(torch.zeros_like(value))      # fail here, not in the middle of a solve
            except UnsupportedLayerError:
                raise
            except Exception as e:
                raise UnsupportedLayerError(
                    f"operation {_op_name(node, cap.gm)} (graph node {node.name!r}) has no Jacobian "
                    f"rule in torch.func: {type(e).__name__}: {e}. Replace it with a "
                    "differentiable torch operation, or compute dE/dp with torch.autograd") from e
        else:
            fn = None
        vjps.append(fn)
        weights.append(cap.gm.get_submodule(node.target).weight.detach()
                       if structure == "linear" else None)

    rhs = [cap.values[n].new_zeros(batch, math.prod(cap.values[n].shape[1:])) for n in cap.unknowns]
    rhs[cap.index[cap.output]] = g.reshape(batch, -1).to(rhs[0].dtype)
    system = GraphSystem(nodes, rhs, vjps, weights)

    canonical = {id(p): n for n, p in module.named_parameters()}

    def parameter_gradients(v: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``dE/dp`` from the solved errors: one VJP per node w.r.t. its parameters."""
        system._check_solution(v)
        found: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for j, (_node, f, parents, pnames) in enumerate(fns):
                if not pnames:
                    continue
                vals = tuple(cap.values[p] for p in parents)
                ps = {n: gm_params[n].detach() for n in pnames}
                _, fn = vjp(lambda p, f=f, vals=vals: f(vals, p), ps)
                (grads,) = fn(v[j].reshape(batch, *nodes[j].shape))
                for n, gr in grads.items():
                    key = canonical.get(id(gm_params[n]), n)
                    found[key] = gr if key not in found else found[key] + gr
        return {n: found[n] if n in found else torch.zeros_like(p)
                for n, p in module.named_parameters()}

    return system, loss, parameter_gradients


def graph_problem(model: nn.Module, x: torch.Tensor, loss_fn: Callable):
    """The :class:`~trilib.problems.BackwardProblem` of any ``torch.fx``-traceable module."""
    from .problems import BackwardProblem

    system, loss, grads = capture(model, x, loss_fn=loss_fn)
    return BackwardProblem(system, loss, grads)


# -- example networks (tests and notebooks) ------------------------------------------------
def _init(module: nn.Module, seed: int | None, dtype: torch.dtype) -> nn.Module:
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                fan_in = p.shape[1:].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in ** 0.5
                        * (1.0 if p.dim() > 1 else 0.1))
    return module.to(dtype)


class SkipChain(nn.Module):
    """``blocks`` layers ``h_l = tanh(W_l h_{l-1} + b_l)``, and layer ``l`` also adds
    ``h_{l-skip}`` (a skip connection of distance ``skip``; ``skip=0`` for a plain chain).
    """

    def __init__(self, width: int = 8, blocks: int = 4, skip: int = 2):
        super().__init__()
        if blocks < 1 or width < 1 or skip < 0:
            raise ValueError(f"need width >= 1, blocks >= 1, skip >= 0; got width={width}, "
                             f"blocks={blocks}, skip={skip}")
        self.skip = skip
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))

    def forward(self, x):
        hs = [x]
        for l, layer in enumerate(self.layers, start=1):
            h = torch.tanh(layer(hs[-1]))
            if self.skip and l - self.skip >= 1:
                h = h + hs[l - self.skip]
            hs.append(h)
        return hs[-1]


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


def resnet_mlp(width: int = 8, blocks: int = 2, *, seed: int | None = None,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """ResNet-style MLP: ``blocks`` residual blocks ``x + W2 tanh(W1 x + b1) + b2``."""
    return _init(nn.Sequential(*[_Residual(width) for _ in range(blocks)]), seed, dtype)


class _Dense(nn.Module):
    def __init__(self, width: int, growth: int, blocks: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width + l * growth, growth) for l in range(blocks))
        self.head = nn.Linear(width + blocks * growth, 3)

    def forward(self, x):
        h = x
        for layer in self.layers:
            h = torch.cat([h, F.gelu(layer(h))], dim=1)
        return self.head(h)


def densenet_mlp(width: int = 4, growth: int = 3, blocks: int = 3, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """DenseNet-style MLP: each layer's output is concatenated to all earlier features."""
    return _init(_Dense(width, growth, blocks), seed, dtype)


class _Inception(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b1, self.b2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.c = nn.Sequential(nn.Linear(width, width), nn.Sigmoid())
        self.out = nn.Linear(3 * width, width)

    def forward(self, x):
        branches = [torch.relu(self.a(x)), self.b2(torch.tanh(self.b1(x))), self.c(x) * x]
        return self.out(torch.cat(branches, dim=-1))


def inception_mlp(width: int = 4, blocks: int = 2, *, seed: int | None = None,
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """Inception-style: parallel branches of different depth, concatenated, ``blocks`` times."""
    return _init(nn.Sequential(*[_Inception(width) for _ in range(blocks)]), seed, dtype)


class _SmallCNN(nn.Module):
    def __init__(self, channels: int, size: int, conv1d: bool):
        super().__init__()
        conv = nn.Conv1d if conv1d else nn.Conv2d
        self.conv1 = conv(1, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels * size ** (1 if conv1d else 2), 2)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = h + F.silu(self.conv2(h))             # a skip around conv2
        return self.fc(h.flatten(1))


def small_cnn(channels: int = 2, size: int = 4, *, conv1d: bool = False, seed: int | None = None,
              dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two convolutions with a skip, then a Linear head; input ``(batch, 1, size[, size])``."""
    return _init(_SmallCNN(channels, size, conv1d), seed, dtype)


def layernorm_block(width: int = 6, *, seed: int | None = None,
                    dtype: torch.dtype = torch.float32) -> nn.Module:
    """``Linear -> LayerNorm -> GELU -> Linear``: an nn.Sequential that is not an FNN."""
    net = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
                        nn.Linear(width, 3))
    return _init(net, seed, dtype)
