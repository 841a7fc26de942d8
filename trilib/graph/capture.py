"""Capture: ``torch.fx`` traces a module into a graph, and each operation whose output carries
the batch becomes a block row of a :class:`~trilib.systems.GraphSystem` (docs/theory.md §3-4)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp

from .._autograd import ELEMENTWISE, loss_gradients
from .._checks import (
    UnsupportedLayerError,
    check_finite,
    check_finite_named,
    check_matches,
    global_hooks,
    module_tensors,
    plain_module,
)
from ..systems import BackwardProblem, GraphNode, GraphSystem
from ._probes import mixes_samples, runs

__all__ = ["capture", "backward_problem"]

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
                    where = f"operation {_op_name(node, self.gm)} (graph node {node.name!r})"
                    if not runs(module, x):       # the module itself fails: blame x, not the layer
                        raise ValueError(
                            f"the model fails on x of shape {tuple(x.shape)} at {where}: "
                            f"{type(e).__name__}: {e}. Check x's shape (batch first) against "
                            "what the model expects") from e
                    raise UnsupportedLayerError(
                        f"{where} failed when trilib ran the traced module: {type(e).__name__}: "
                        f"{e}") from e
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
        if not plain_module(mod) or global_hooks():     # hooks, patches: only its VJP is exact
            return "dense"
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
            rule or mixes samples (found structurally: the batch dimension must have the batch
            size, and a probe of each operation's vector-Jacobian product across the batch must
            keep samples apart); the message names the operation and what to do.
        ValueError: ``x``, a parameter, a buffer or a tensor attribute is not finite (named).
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
    check_finite_named(module_tensors(module))
    cap = _Capture(module, x)
    known = {id(t) for *_, t in module_tensors(module)}
    check_finite_named([("tensor attribute", n.target, cap.values[n]) for n in cap.graph.nodes
                        if n.op == "get_attr" and isinstance(cap.values.get(n), torch.Tensor)
                        and id(cap.values[n]) not in known])
    out = cap.values[cap.output]
    loss = None
    if g is None:
        if loss_fn is None:
            raise TypeError("give either g (dE/d output) or loss_fn")
        loss, (g,) = loss_gradients([out], loss_fn)
    elif g.shape != out.shape:
        raise ValueError(f"g has shape {tuple(g.shape)} but the module output has {tuple(out.shape)}")
    batch = cap.batch
    gm_params = dict(cap.gm.named_parameters(remove_duplicate=False))   # tied weights: every name

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
            if structure == "dense" and mixes_samples(fn, value, batch):
                raise UnsupportedLayerError(
                    f"operation {_op_name(node, cap.gm)} (graph node {node.name!r}) mixes samples: "
                    "probing its vector-Jacobian product across the batch, one sample's output sends "
                    "gradient to another sample's input, so per-sample Jacobians cannot describe it. "
                    "Keep every operation per sample (reduce over features, not over the batch "
                    "dimension) or move the reduction into loss_fn")
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


def backward_problem(model: nn.Module, x: torch.Tensor, loss_fn: Callable) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of any ``torch.fx``-traceable module."""
    system, loss, grads = capture(model, x, loss_fn=loss_fn)
    return BackwardProblem(system, loss, grads)
