"""Capture: ``torch.export`` records a module's forward pass as a graph of ATen operations, and
each operation whose output depends on a parameter and on the input (and keeps the samples
apart) becomes a block row of a :class:`~trilib.systems.GraphSystem` (docs/theory.md §3-4).

Node kinds: *unknowns* (block rows: floating tensors that depend on a parameter and on the
input, with a batch layout); *inlined* operations (parameter-only tensors such as ``W^T``, a
parametrized or pruned weight, and multi-output operations) recomputed inside the block row
that reads them, so their parameters get their gradients there; and *data* (everything that
does not depend on a parameter: token ids, masks, positions), held fixed at its recorded value.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import torch
import torch.fx
from torch import nn
from torch.utils import _pytree as pytree

from .._autograd import loss_gradients
from .._checks import UnsupportedLayerError, check_finite, check_finite_named, check_matches, module_tensors
from ..systems import BackwardProblem, GraphNode, GraphSystem
from . import layout as L
from ._fast import structured_vjp
from ._linearized import Linearized, params_vjps, row_vjp
from ._probes import mixes_samples
from .export import export_program, op_name, source_line

__all__ = ["capture", "backward_problem"]

# ATen operations that act element by element: with parents of the output's shape and layout,
# each Jacobian block is diagonal and J^T 1 is that diagonal.
_ELEMENTWISE = {"add", "sub", "mul", "div", "neg", "tanh", "sigmoid", "relu", "exp", "sin", "cos",
                "gelu", "silu", "elu", "softplus", "leaky_relu", "pow", "sqrt", "rsqrt", "log",
                "hardtanh", "clone", "alias", "_to_copy", "square", "abs", "erf"}


def _where(node) -> str:
    return f"operation {op_name(node)} (graph node {node.name!r}, at {source_line(node)})"


class _Recorded:
    """An exported program run once on ``x``: every node's value, what it depends on (a
    parameter, the input) and where its batch lives."""

    def __init__(self, module: nn.Module, x: torch.Tensor, batch_dim: int = 0):
        self.module, self.x, self.batch_dim, self.batch = module, x, batch_dim, x.shape[batch_dim]
        self.program = export_program(module, x)
        self.graph = self.program.graph_module.graph
        self.values: dict[torch.fx.Node, object] = {}
        self.param_name: dict[torch.fx.Node, str] = {}
        self.on_param: set[torch.fx.Node] = set()
        self.on_input: set[torch.fx.Node] = set()
        self.layout: dict[torch.fx.Node, object] = {}
        self._placeholders()
        with torch.no_grad():
            for node in self.graph.nodes:
                if node.op == "call_function":
                    self._record(node)
        self.output = next(n for n in self.graph.nodes if n.op == "output")

    def _placeholders(self) -> None:
        own = dict(self.module.named_parameters(remove_duplicate=False))
        tensors = {**self.program.state_dict, **self.program.constants}
        specs = {s.arg.name: s for s in self.program.graph_signature.input_specs}
        for node in self.graph.nodes:
            if node.op != "placeholder":
                continue
            spec = specs[node.name]
            kind = spec.kind.name
            if kind == "USER_INPUT":
                self.values[node] = self.x
                self.on_input.add(node)
                self.layout[node] = L.Layout(self.batch_dim, 1, 1)
            elif kind == "PARAMETER":
                self.values[node] = own[spec.target].detach()
                self.param_name[node] = spec.target
                self.on_param.add(node)
            else:
                self.values[node] = tensors[spec.target]

    def _record(self, node: torch.fx.Node) -> None:
        args = torch.fx.node.map_arg(node.args, self.values.__getitem__)
        kwargs = torch.fx.node.map_arg(node.kwargs, self.values.__getitem__)
        value = self.values[node] = node.target(*args, **kwargs)
        ins = node.all_input_nodes
        if any(a in self.on_param for a in ins):
            self.on_param.add(node)
        if not any(a in self.on_input for a in ins):
            return
        self.on_input.add(node)
        if node.target is operator.getitem:
            parent = self.layout.get(node.args[0])
            self.layout[node] = parent[node.args[1]] if isinstance(parent, tuple) else parent
            return
        info = [(self.values[a].shape, self.layout[a]) for a in ins
                if a in self.on_input and isinstance(self.values[a], torch.Tensor)]
        if any(lay is False for _, lay in info):
            self.layout[node] = False
            return
        info = [i for i in info if i[1] is not None]
        self.layout[node] = L.infer(node, value, info, self.batch, lambda: self._on_ids(node))

    def _on_ids(self, node: torch.fx.Node):
        """The node's shape operation applied to the sample indices of its first argument."""
        def ids(a):
            v = self.values[a]
            lay = self.layout.get(a) if a in self.on_input else None
            return L.sample_ids(v.shape, lay, self.batch) if isinstance(v, torch.Tensor) else v

        first = torch.fx.node.map_arg(node.args[0], ids)
        rest = torch.fx.node.map_arg(node.args[1:], self.values.__getitem__)
        kwargs = torch.fx.node.map_arg(node.kwargs, self.values.__getitem__)
        return node.target(first, *rest, **kwargs)

    def is_unknown(self, node: torch.fx.Node) -> bool:
        v = self.values.get(node)
        return (node.op == "call_function" and node in self.on_param and node in self.on_input
                and isinstance(v, torch.Tensor) and v.is_floating_point())


def _batch_hint(rec: _Recorded) -> str:
    return (f" (trilib took dimension {rec.batch_dim} of x, of size {rec.batch}, as the batch; if "
            "the batch is elsewhere, pass batch_dim= that dimension to trilib.graph.capture or "
            "trilib.graph.backward_problem)")


def _unknowns(rec: _Recorded) -> list[torch.fx.Node]:
    """The block rows, each checked to carry the batch in a layout trilib can follow."""
    found = []
    for node in rec.graph.nodes:
        if not rec.is_unknown(node):
            continue
        lay = rec.layout[node]
        if not isinstance(lay, L.Layout):
            shape = tuple(rec.values[node].shape)
            raise UnsupportedLayerError(
                f"{_where(node)} returns shape {shape}, in which trilib cannot find the batch of "
                f"size {rec.batch} as one factor of one dimension: it mixes samples (or reshapes "
                "them together with other dimensions), so per-sample Jacobians cannot describe "
                "it. Keep the batch dimension (e.g. flatten(1) instead of view(-1)) or move the "
                "reduction into loss_fn" + _batch_hint(rec))
        found.append(node)
    return found


class _Row:
    """One block row: its parents, the operations it recomputes, its parameters, and
    ``f(parent values, parameters) -> value``."""

    def __init__(self, rec: _Recorded, node: torch.fx.Node, index: dict):
        self.rec, self.node = rec, node
        parents, inlined, params = [], [], []
        stack, seen = list(node.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in index:
                parents.append(n)
            elif n in rec.param_name:
                params.append(n)
            elif n.op == "call_function" and n in rec.on_param and not (
                    isinstance(rec.values[n], torch.Tensor) and not rec.values[n].is_floating_point()):
                inlined.append(n)
                stack.extend(n.all_input_nodes)
        order = {n: i for i, n in enumerate(rec.graph.nodes)}
        self.parents = sorted(parents, key=index.get)
        self.inlined = sorted(inlined, key=order.get)
        self.params = {rec.param_name[p]: p for p in sorted(params, key=order.get)}

    def __call__(self, values: Sequence[torch.Tensor], params: dict[str, torch.Tensor]):
        env = dict(zip(self.parents, values))
        env.update((p, params[name]) for name, p in self.params.items() if name in params)
        look = lambda n: env[n] if n in env else self.rec.values[n]  # noqa: E731
        for n in (*self.inlined, self.node):
            env[n] = n.target(*torch.fx.node.map_arg(n.args, look),
                              **torch.fx.node.map_arg(n.kwargs, look))
        return env[self.node]


def _structure(rec: _Recorded, row: _Row) -> str:
    node, value = row.node, rec.values[row.node]
    kind = L.op_kind(node)
    if (kind == "linear" and (not row.parents or (len(row.parents) == 1 and node.args[0] is row.parents[0]))
            and value.dim() == 2 and rec.layout[node] == (0, 1, 1) and not row.inlined):
        return "linear"
    if kind in _ELEMENTWISE and all(rec.values[p].shape == value.shape
                                    and rec.layout[p] == rec.layout[node] for p in row.parents):
        return "diagonal"
    return "dense"


def _checked_vjp(rec: _Recorded, row: _Row, width: int) -> Linearized:
    """:class:`Linearized`, refused before any solve if it has no rule or mixes samples."""
    node = row.node
    try:
        lin = Linearized(rec, row)
        fn = lin.parents_vjp
        with torch.no_grad():
            fn(rec.values[node].new_zeros(rec.batch, width))
            lin.params_vjp(rec.values[node].new_zeros(rec.batch, width))
    except Exception as e:
        raise UnsupportedLayerError(
            f"{_where(node)} has no Jacobian rule in torch.func: {type(e).__name__}: {e}. Replace "
            "it with a differentiable torch operation, or compute dE/dp with torch.autograd") from e
    if mixes_samples(fn, rec.values[node].new_zeros(rec.batch, width), rec.batch):
        raise UnsupportedLayerError(
            f"{_where(node)} mixes samples: probing its vector-Jacobian product across the batch, "
            "one sample's output sends gradient to another sample's input, so per-sample "
            "Jacobians cannot describe it. Keep every operation per sample (reduce over "
            "features, not over the batch dimension) or move the reduction into loss_fn"
            + _batch_hint(rec))
    return lin


def _check_inputs(module: nn.Module, x: torch.Tensor, batch_dim: int | None) -> int:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    params = list(module.parameters())
    for i, p in enumerate(params):
        check_matches(f"parameter {i}", p, params[0].dtype, params[0].device,
                      owner="the first parameter")
    if x.is_floating_point() and params:
        check_matches("x", x, params[0].dtype, params[0].device)
    if x.dim() < 1 or (x.is_floating_point() and x.dim() < 2):
        raise ValueError(f"x must have a leading batch dimension, (batch, ...), got shape "
                         f"{tuple(x.shape)}; for one sample use x.unsqueeze(0)")
    batch_dim = L.input_batch_dim(module, x, batch_dim)
    if x.shape[batch_dim] == 0:
        raise ValueError(f"x must have a non-empty {'leading ' if batch_dim == 0 else ''}batch "
                         f"dimension (dimension {batch_dim}), got shape {tuple(x.shape)}")
    if x.is_floating_point():
        check_finite("x", x)
    check_finite_named(module_tensors(module))
    return batch_dim


def _output_gradients(rec: _Recorded, index: dict, g, loss_fn) -> tuple:
    """``(loss, [(row, dE/d value)])`` for the outputs that are block rows."""
    leaves = list(rec.output.args[0])
    values = [rec.values[n] if isinstance(n, torch.fx.Node) else n for n in leaves]
    rows = [i for i, n in enumerate(leaves) if isinstance(n, torch.fx.Node) and n in index]
    if not rows:
        raise UnsupportedLayerError(
            f"{type(rec.module).__name__} returns nothing computed from its parameters and x "
            "with the batch kept apart; it must return a tensor (or tuple / dataclass of tensors) "
            "that depends on both")
    loss = None
    if g is None:
        if loss_fn is None:
            raise TypeError("give either g (dE/d output) or loss_fn")
        spec = rec.program.call_spec.out_spec
        tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]

        def pack(*ts):
            full = list(values)
            for i, t in zip(tensors, ts):
                full[i] = t
            return pytree.tree_unflatten(full, spec)

        loss, grads = loss_gradients([values[i] for i in tensors], loss_fn, pack)
        by_leaf = dict(zip(tensors, grads))
        return loss, [(index[leaves[i]], by_leaf[i]) for i in rows if by_leaf.get(i) is not None]
    out = values[rows[0]]
    if g.shape != out.shape:
        raise ValueError(f"g has shape {tuple(g.shape)} but the module output has {tuple(out.shape)}")
    return loss, [(index[leaves[rows[0]]], g)]


def capture(module: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None,
            loss_fn: Callable | None = None, batch_dim: int | None = None):
    """Export ``module`` on ``x`` and build its backward :class:`GraphSystem`.

    Args:
        module: any ``nn.Module`` that ``torch.export`` can capture on ``(x,)``; its
            operations must keep samples apart (the batch may move between dimensions and merge
            with others, as in ``(B, T, C) -> (B·T, C)`` or ``(B, T, E) -> (T, B, E)``).
        x: the input batch (batch in dimension ``batch_dim``): floating, or integer / boolean
            data such as token ids (data is never an unknown; the system starts at the first
            operation that depends on a parameter).
        g: ``dE/d output`` for a module returning one tensor; or give ``loss_fn``.
        loss_fn: ``loss_fn(module(x))`` returns the scalar loss E; it receives what the module
            returns (a tensor, a tuple, a dataclass such as ``out.logits``).
        batch_dim: the dimension of ``x`` that holds the batch; by default the one the module
            declares (1 for a bare ``nn.TransformerEncoderLayer`` or ``nn.GRU`` with
            ``batch_first=False``, see :func:`trilib.graph.layout.input_batch_dim`), else 0.

    Returns:
        ``(system, loss, parameter_gradients)`` where ``parameter_gradients(v)`` maps a solution
        to ``{name: dE/dp}`` (one VJP per node w.r.t. the parameters it reads; a parameter used
        by several nodes, e.g. tied embeddings, gets the sum).

    Raises:
        UnsupportedLayerError: export fails, or an operation has no Jacobian rule or mixes
            samples; the message names the operation, its source line and what to do.
        ValueError: ``x``, a parameter, a buffer or a tensor attribute is not finite (named),
            or the module fails on ``x``.
    """
    rec = _Recorded(module, x, _check_inputs(module, x, batch_dim))
    check_finite_named([("tensor attribute", n, t) for n, t in rec.program.constants.items()
                        if isinstance(t, torch.Tensor)])
    unknowns = _unknowns(rec)
    index = {n: i for i, n in enumerate(unknowns)}
    loss, out_grads = _output_gradients(rec, index, g, loss_fn)
    batch = rec.batch
    rows = [_Row(rec, n, index) for n in unknowns]
    nodes, vjps, weights, lins = [], [], [], []
    for row in rows:
        value, lay = rec.values[row.node], rec.layout[row.node]
        width = value.numel() // batch
        structure = _structure(rec, row)
        lins.append(_checked_vjp(rec, row, width))
        product, fast = structured_vjp(rec, row, lins[-1], structure) if row.parents else ("", None)
        nodes.append(GraphNode(row.node.name, op_name(row.node), (width,),
                               tuple(index[p] for p in row.parents), structure, lay, product))
        vjps.append(row_vjp(lins[-1], fast) if row.parents else None)
        weights.append(rec.values[row.node.args[1]] if structure == "linear" else None)
    rhs = [rec.values[n].new_zeros(batch, rec.values[n].numel() // batch) for n in unknowns]
    for i, gi in out_grads:
        rhs[i] = rhs[i] + L.to_blocks(gi.to(rhs[i].dtype), rec.layout[unknowns[i]], batch)
    system = GraphSystem(nodes, rhs, vjps, weights)
    canonical = {id(p): n for n, p in module.named_parameters()}
    owner = {n: canonical[id(p)] for n, p in module.named_parameters(remove_duplicate=False)}

    def parameter_gradients(v: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``dE/dp`` from the solved errors: one VJP per node w.r.t. its parameters."""
        system._check_solution(v)
        found: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, gr in params_vjps(lins, v).items():
                key = owner.get(n, n)
                found[key] = gr if key not in found else found[key] + gr
        return {n: found[n] if n in found else torch.zeros_like(p)
                for n, p in module.named_parameters()}

    return system, loss, parameter_gradients


def backward_problem(model: nn.Module, x: torch.Tensor, loss_fn: Callable,
                     batch_dim: int | None = None) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of any module ``torch.export`` captures
    (``batch_dim`` as in :func:`capture`)."""
    system, loss, grads = capture(model, x, loss_fn=loss_fn, batch_dim=batch_dim)
    return BackwardProblem(system, loss, grads)

