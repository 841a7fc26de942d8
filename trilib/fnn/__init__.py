"""The FNN builder: an ``nn.Sequential`` of ``nn.Linear`` and element-wise activations as
triangular systems (docs/theory.md §1). Parsing the model is :mod:`trilib.fnn.layers`.

Layer ``l`` computes ``y_l = W_l z_{l-1} + b_l`` and ``z_l = f_l(y_l)``. Its errors
``v_l = dE/dy_l`` solve the upper block bi-diagonal system with ``B_l = D_l W_{l+1}^T``,
``D_l = diag(f_l'(y_l))``; its activations ``z_l`` solve the lower system
``F_l(z) = z_l - f_l(W_l z_{l-1} + b_l) = 0``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from .._autograd import loss_gradients
from .._checks import check_finite, check_finite_named, check_matches
from .._numerics import runs_of
from ..systems import (
    BackwardProblem,
    BlockBidiagonalSystem,
    BlockVector,
    NonlinearForwardSystem,
    TriangularSystem,
)
from .layers import (
    FNNLayer,
    FNNLayers,
    _gc_paused,
    _parameters,
    _with_derivative,
    effective_parameters,
    parse_sequential,
)

__all__ = ["FNNLayer", "FNNLayers", "parse_sequential", "record_forward", "backward_problem",
           "forward_system"]


def _check_input(layers: Sequence[FNNLayer], x: torch.Tensor, weights=None, biases=None) -> None:
    if weights is None:
        weights, biases = _parameters(layers)
    first = weights[0]
    if first.device.type == "meta":             # no values to check, nor to compute with
        check_finite_named(_named_parameters(layers, weights, biases))
    want = (first.dtype, first.device)
    if any(p.dtype != want[0] for p in chain(weights, biases) if p is not None):
        for p in chain(weights, biases):
            if p is not None and (p.dtype, p.device) != want:
                check_matches("a parameter", p, *want, owner="the first layer's weight")
    check_matches("x", x, first.dtype, first.device)
    if x.dim() != 2:
        hint = "; for one sample use x.unsqueeze(0)" if x.dim() == 1 else ""
        raise ValueError(f"x must be 2-D (batch, features), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != first.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but the first Linear expects "
                         f"{first.shape[1]}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch (shape[0] == 0)")
    check_finite("x", x)


def _stacked_parameters(layers, weights, biases, runs
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``W_l`` and ``b_l`` stacked per run of layers, checked finite (one reduction per stack; the
    per-parameter check then names the culprit). A device mismatch is reported by name."""
    with torch.no_grad():
        try:
            w_runs = [torch.stack(weights[a:b]) for a, b in runs]
            b_runs = [None if biases[a] is None else torch.stack(biases[a:b]) for a, b in runs]
        except RuntimeError:
            for p in chain(weights, biases):
                if p is not None:
                    check_matches("a parameter", p, weights[0].dtype, weights[0].device,
                                  owner="the first layer's weight")
            raise
        # a non-finite entry makes its stack's sum non-finite (a finite overflow only costs the
        # per-parameter check); one synchronisation for the whole model
        stacks = [t for t in chain(w_runs, b_runs) if t is not None]
        if not torch.stack([t.sum() for t in stacks]).isfinite().all():
            check_finite_named(_named_parameters(layers, weights, biases))
    return w_runs, b_runs


def _named_parameters(layers, weights, biases) -> list[tuple[str, str, torch.Tensor]]:
    """``("parameter", name, p)`` for :func:`check_finite_named`: the model's names when the
    layers were parsed from it, else the parameters' positions."""
    named = layers.params if isinstance(layers, FNNLayers) else [
        (f"{i}", p) for i, p in enumerate(chain.from_iterable(zip(weights, biases))) if p is not None]
    return [("parameter", name, p) for name, p in named]


# f'(y) from z = f(y) alone, for activations whose derivative needs nothing else: computed
# after the forward loop for all layers of one kind and shape at once (one op instead of k).
_FROM_OUTPUT: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda z: 1 - z * z,
    nn.Sigmoid: lambda z: z * (1 - z),
    nn.ReLU: lambda z: (z > 0).to(z.dtype),          # z > 0 exactly when y > 0
}
# what these modules' forward computes, called directly when the module has no hooks
_FUNCTIONAL = {nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid, nn.ReLU: torch.relu}


def _kind(layer: FNNLayer):
    """How a layer's f and f' are computed: ``"linear"`` (f = id), an activation type of
    :data:`_FROM_OUTPUT` (f' from z, for a whole run at once) or ``"autograd"`` (f' per layer)."""
    acts = layer.activations
    if len(acts) == 1:
        kind = type(acts[0])
        return kind if kind in _FROM_OUTPUT else "linear" if kind is nn.Identity else "autograd"
    return "linear" if layer.is_linear else "autograd"


def _forward_run(layers: Sequence[FNNLayer], kind, weights, biases, z: torch.Tensor, zs: list,
                 ds: list) -> torch.Tensor:
    """The forward pass through a run of layers of one ``kind`` (see :func:`_kind`), appending
    each ``z_l`` to ``zs`` (and ``f_l'`` to ``ds`` for kind ``"autograd"``): one ``F.linear`` and
    one activation per layer; an activation is called as the function it computes (e.g.
    ``torch.tanh``), sparing the module call (the parse refuses modules with hooks)."""
    linear, append = F.linear, zs.append
    if isinstance(kind, type):
        act = _FUNCTIONAL[kind]
        for w, b in zip(weights, biases):
            z = act(linear(z, w, b))
            append(z)
    elif kind == "autograd":
        for layer, w, b in zip(layers, weights, biases):
            z, d = _with_derivative(layer, linear(z, w, b))
            append(z)
            ds.append(d)
    else:
        for layer, w, b in zip(layers, weights, biases):
            z = layer.activate(linear(z, w, b))
            append(z)
    return z


@dataclass
class FNNRecord:
    """A forward pass kept for the backward system, stacked by **runs** of consecutive layers
    with the same weight shape, bias presence and activation kind.

    Attributes:
        layers: the parsed layers (with ``layers.params``, the model's named parameters).
        x: the input ``z_0``.
        zs: ``zs[l]`` is ``z_l`` (``zs[0] = x``), one tensor per layer as the forward made it.
        runs: ``(start, stop)`` 0-based layers of each run.
        weights, biases: per run, ``W_l`` stacked ``(g, n_l, n_{l-1})`` and ``b_l`` ``(g, n_l)``
            (``None`` without bias).
        outputs: per run, ``z_l`` of its layers stacked ``(g, batch, n_l)``.
        derivatives: per run, ``f_l'(y_l)`` stacked like ``outputs``, ``None`` when f = id.
    """

    layers: list[FNNLayer]
    x: torch.Tensor
    zs: list[torch.Tensor]
    runs: list[tuple[int, int]]
    weights: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    outputs: list[torch.Tensor]
    derivatives: list[torch.Tensor | None]

    def run_of(self, layer: int) -> int:
        return bisect_right([a for a, _ in self.runs], layer) - 1

    def rows(self, which: list, start: int, stop: int) -> torch.Tensor:
        """Layers ``start .. stop-1`` of the per-run stacks ``which`` (a view inside one run)."""
        i = self.run_of(start)
        a, b = self.runs[i]
        if stop <= b:
            return which[i][start - a:stop - a]
        return torch.cat([which[i][start - a:], self.rows(which, b, stop)])


def record_forward(layers: Sequence[FNNLayer], x: torch.Tensor) -> FNNRecord:
    """Check the inputs, then run the forward pass of the parsed ``layers`` keeping ``z_l`` and
    ``f_l'(y_l)``, stacked by runs of equal layers (:class:`FNNRecord`)."""
    weights, biases = _parameters(layers)
    _check_input(layers, x, weights, biases)
    kinds = [_kind(layer) for layer in layers]
    keys = [(w.shape, b is None, kind) for w, b, kind in zip(weights, biases, kinds)]
    runs = runs_of(keys)
    zs: list[torch.Tensor] = [x]
    w_runs, b_runs = _stacked_parameters(layers, weights, biases, runs)
    outputs, derivs = [], []
    with torch.no_grad():
        z = x
        for a, b in runs:
            ds: list[torch.Tensor] = []
            z = _forward_run(layers[a:b], kinds[a], weights[a:b], biases[a:b], z, zs, ds)
            outputs.append(torch.stack(zs[a + 1:b + 1]))
            derivs.append(None if kinds[a] == "linear" else torch.stack(ds) if ds
                          else _FROM_OUTPUT[kinds[a]](outputs[-1]))
    return FNNRecord(layers, x, zs, runs, w_runs, b_runs, outputs, derivs)

def backward_system_from_record(rec: FNNRecord, g: torch.Tensor) -> BlockBidiagonalSystem:
    """``U v = r`` with ``B_l = D_l W_{l+1}^T`` and ``r = (0, ..., 0, D_k g)``, from the stacked
    runs: one view (or one concatenation) per run, no Python work per layer."""
    k, batch = len(rec.layers), g.shape[0]
    d_last = rec.derivatives[-1]
    last = g if d_last is None else d_last[-1] * g
    rhs = []
    for (a, b), out in zip(rec.runs, rec.outputs):     # rows of one run share their width
        r = out.new_zeros(b - a, batch, out.shape[-1])
        if b == k:
            r[-1] = last
        rhs.append(r)
    # block l (0-based) is D_l W_{l+1}^T: split the blocks where either factor's run changes
    cuts = sorted({a for a, _ in rec.runs[1:]} | {a - 1 for a, _ in rec.runs[1:]} | {0, k - 1})
    mats, scales = [], []
    for a, b in zip(cuts, cuts[1:]):
        if a == b:
            continue
        # M_l = W_{l+1}^T, stored contiguous (one copy per run): forming B_l = D_l M_l is then a
        # vectorised broadcast product
        mats.append(rec.rows(rec.weights, a + 1, b + 1).mT.contiguous())
        d_run = rec.derivatives[rec.run_of(a)]
        scales.append(None if d_run is None else rec.rows(rec.derivatives, a, b))
    return BlockBidiagonalSystem.from_stacks(mats, scales, rhs, upper=True, symbol="v")


def _outer_sums(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``sum_batch v z^T`` for stacks ``v`` ``(g, batch, n)`` and ``z`` ``(g, batch, m)``: one
    ``bmm``. A small batch is zero-padded to 8: ATen multiplies tiny matrices
    (``batch·n·m < 400``) with a plain loop that is several times slower than its BLAS path."""
    batch = v.shape[1]
    if batch < 8 and batch * v.shape[2] * z.shape[2] < 400:
        v, z = (F.pad(t, (0, 0, 0, 8 - batch)) for t in (v, z))
    return torch.bmm(v.mT, z)


def parameter_gradients(model: nn.Module, rec: FNNRecord,
                        v: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``dE/dW_l = sum_batch v_l z_{l-1}^T`` and ``dE/db_l = sum_batch v_l``: all independent,
    one batched product per run of equal-shaped layers; keyed like ``model.named_parameters()``."""
    layers = rec.layers
    if not isinstance(layers, FNNLayers):
        layers = parse_sequential(model)
    v = BlockVector.of(v)
    per_run = []                                # (first layer, dW views, db views or None)
    for (a, b), bias in zip(rec.runs, rec.biases):
        vs = v.stacked(a, b)                                       # (g, batch, n_l)
        if a > 0:                                                  # z_{l-1}: (g, batch, n_{l-1})
            inputs = rec.rows(rec.outputs, a - 1, b - 1)
        else:
            inputs = rec.x.unsqueeze(0)
            if b > 1:
                inputs = torch.cat([inputs, rec.rows(rec.outputs, 0, b - 1)])
        per_run.append((a, _outer_sums(vs, inputs).unbind(0), None if bias is None else vs.sum(1).unbind(0)))
    if layers.plain:                            # names and gradients in the same order: zip them
        grads = chain.from_iterable(dw if db is None else chain.from_iterable(zip(dw, db))
                                    for _, dw, db in per_run)
        return {name: g for (name, _), g in zip(layers.params, grads)}
    names = {id(p): n for n, p in layers.params}
    found: dict[str, torch.Tensor] = {}
    for a, dw, db in per_run:
        for layer, gw, gb in zip(layers[a:], dw, db or [None] * len(dw)):
            own = layer.linear._parameters
            pairs = (_chained(layer, gw, gb) if layer.derived
                     else ((own["weight"], gw), (own.get("bias"), gb)))
            for p, g in pairs:
                if p is not None:
                    n = names[id(p)]
                    found[n] = g if n not in found else found[n] + g   # a Linear used twice accumulates
    return {n: found[n] if n in found else torch.zeros_like(p) for n, p in layers.params}


def _chained(layer: FNNLayer, gw: torch.Tensor, gb: torch.Tensor | None):
    """``(p, dE/dp)`` for the parameters a derived layer's ``W_l``, ``b_l`` are computed from
    (a parametrization's originals, a pruned weight's ``weight_orig``): ``dE/dW_l`` and
    ``dE/db_l`` pulled back through that computation by autograd."""
    leaves = [p for p in layer.linear.parameters() if p.requires_grad]
    with torch.enable_grad():
        w, b = effective_parameters(layer.linear)
        pairs = [(t, g) for t, g in ((w, gw), (b, gb)) if t is not None and g is not None and t.requires_grad]
        if not pairs or not leaves:
            return []
        pulled = torch.autograd.grad([t for t, _ in pairs], leaves, [g for _, g in pairs],
                                     allow_unused=True)
    return [(p, g) for p, g in zip(leaves, pulled) if g is not None]


def linear_forward_system(layers: Sequence[FNNLayer], x: torch.Tensor) -> BlockBidiagonalSystem:
    """Identity activations: ``z_1 = W_1 x + b_1``, ``z_l - W_l z_{l-1} = b_l``."""
    batch = x.shape[0]
    rhs = [layers[0].pre_activation(x)]
    weights, biases = _parameters(layers)
    for w, b in zip(weights[1:], biases[1:]):
        b = b if b is not None else w.new_zeros(w.shape[0])
        rhs.append(b.detach().expand(batch, -1).clone())
    mats = [w.detach() for w in weights[1:]]
    return BlockBidiagonalSystem(mats, [None] * len(mats), rhs, upper=False, symbol="z")


def forward_system(model: nn.Module, x: torch.Tensor) -> TriangularSystem:
    layers = parse_sequential(model)
    weights, biases = _parameters(layers)
    _check_input(layers, x, weights, biases)
    runs = runs_of([(w.shape, b is None) for w, b in zip(weights, biases)])
    _stacked_parameters(layers, weights, biases, runs)
    with torch.no_grad():
        if all(layer.is_linear for layer in layers):
            return linear_forward_system(layers, x)
        return NonlinearForwardSystem(layers, x)


def backward_problem(model: nn.Sequential, layers: Sequence[FNNLayer], x: torch.Tensor,
                     loss_fn: Callable) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of an FNN whose ``layers`` were parsed from
    ``model`` by :func:`parse_sequential`.

    Every tensor that enters the system is checked finite before the forward pass: the Linear
    layers' weights and biases on their stacks (one reduction per run of layers), any other
    parameter one by one. (An FNN reads no buffer.)
    """
    if not layers.plain:
        check_finite_named(_named_parameters(layers, None, None))
    with _gc_paused():
        rec = record_forward(layers, x)
    loss, (g,) = loss_gradients([rec.zs[-1]], loss_fn)
    system = backward_system_from_record(rec, g)

    def gradients(v: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        with _gc_paused():
            return parameter_gradients(model, rec, v)

    return BackwardProblem(system, loss, gradients, layers.params)
