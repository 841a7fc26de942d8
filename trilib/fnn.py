"""The FNN builder: an ``nn.Sequential`` of ``nn.Linear`` and element-wise activations as
triangular systems (docs/theory.md §1).

Layer ``l`` computes ``y_l = W_l z_{l-1} + b_l`` and ``z_l = f_l(y_l)``. Its errors
``v_l = dE/dy_l`` solve the upper block bi-diagonal system with ``B_l = D_l W_{l+1}^T``,
``D_l = diag(f_l'(y_l))``; its activations ``z_l`` solve the lower system
``F_l(z) = z_l - f_l(W_l z_{l-1} + b_l) = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._autograd import ELEMENTWISE, loss_gradients
from ._checks import UnsupportedLayerError, check_finite, check_matches
from .systems import BackwardProblem, BlockBidiagonalSystem, NonlinearForwardSystem, TriangularSystem

__all__ = ["FNNLayer", "parse_sequential", "record_forward", "backward_problem", "forward_system"]

@dataclass(frozen=True)
class FNNLayer:
    """One layer ``z = f(W z_prev + b)``: an ``nn.Linear`` and the element-wise modules after it."""

    linear: nn.Linear
    activations: tuple[nn.Module, ...]

    @property
    def is_linear(self) -> bool:
        """True when ``f`` is the identity (no activation, or only ``nn.Identity``)."""
        return all(type(a) is nn.Identity for a in self.activations)

    def activate(self, y: torch.Tensor) -> torch.Tensor:
        for a in self.activations:
            y = a(y)
        return y

    def pre_activation(self, z_prev: torch.Tensor) -> torch.Tensor:
        return F.linear(z_prev, self.linear.weight, self.linear.bias)

    def forward_with_derivative(self, z_prev: torch.Tensor):
        """``(z, d)`` with ``z = f(W z_prev + b)`` and ``d = f'(y)`` (``None`` when f = id).

        ``d`` comes from autograd on the activation alone: it is element-wise, so the
        vector-Jacobian product with ones is the diagonal of its Jacobian.
        """
        y = self.pre_activation(z_prev)
        if self.is_linear:
            return y, None
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            z = self.activate(y)
            (d,) = torch.autograd.grad(z, y, torch.ones_like(z))
        return z.detach(), d


def _flatten(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    # _modules, not named_children(): a module used twice (shared weights) must appear twice.
    for name, child in model._modules.items():
        if type(child) is nn.Sequential:
            out += _flatten(child, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", child))
    return out


def parse_sequential(model: nn.Module) -> list[FNNLayer]:
    """Split an ``nn.Sequential`` into :class:`FNNLayer` s, or raise a clear error.

    Nested ``nn.Sequential`` containers are flattened. Raises:
        UnsupportedLayerError: a module that is neither ``nn.Linear`` nor an element-wise
            activation, or an activation before the first ``nn.Linear``.
        ValueError: an empty model, or consecutive Linear layers whose widths do not chain.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential of nn.Linear and activations, "
                        f"got {type(model).__name__}")
    supported = ", ".join(t.__name__ for t in ELEMENTWISE)
    layers: list[list] = []
    for name, module in _flatten(model):
        if type(module) is nn.Linear:
            if layers and module.in_features != layers[-1][0].out_features:
                raise ValueError(f"layer {name} (Linear) expects {module.in_features} input "
                                 f"features but the previous Linear produces "
                                 f"{layers[-1][0].out_features}")
            layers.append([module, []])
        elif type(module) in ELEMENTWISE:
            if not layers:
                raise UnsupportedLayerError(
                    f"layer {name} ({type(module).__name__}) comes before the first nn.Linear; "
                    "an FNN system starts at z_0 = x, so apply it to x before calling trilib")
            layers[-1][1].append(module)
        else:
            raise UnsupportedLayerError(
                f"layer {name} ({type(module).__name__}) is not supported in an FNN system: "
                f"use nn.Linear layers each followed by element-wise activations ({supported}). "
                "Replace or remove it (e.g. fold normalisation into the weights, drop Dropout "
                "in evaluation).")
    if not layers:
        raise ValueError("the model has no nn.Linear layer; an FNN system needs k >= 1 layers")
    return [FNNLayer(lin, tuple(acts)) for lin, acts in layers]


def _check_input(layers: Sequence[FNNLayer], x: torch.Tensor) -> None:
    first = layers[0].linear
    params = [p for layer in layers for p in (layer.linear.weight, layer.linear.bias) if p is not None]
    want = (first.weight.dtype, first.weight.device)
    for p in params:
        if (p.dtype, p.device) != want or not p.is_floating_point():
            check_matches("a parameter", p, *want, owner="the first layer's weight")
    check_matches("x", x, first.weight.dtype, first.weight.device)
    if x.dim() != 2:
        hint = "; for one sample use x.unsqueeze(0)" if x.dim() == 1 else ""
        raise ValueError(f"x must be 2-D (batch, features), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != first.in_features:
        raise ValueError(f"x has {x.shape[1]} features but the first Linear expects "
                         f"{first.in_features}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch (shape[0] == 0)")
    check_finite("x", x)
    # One fused reduction over all parameters: a non-finite entry makes its norm non-finite (a
    # finite overflow only costs the slow path); the per-parameter check names the culprit.
    if params and not torch.isfinite(torch.stack(torch._foreach_norm(params, 2))).all():
        for i, p in enumerate(params):
            check_finite(f"parameter {i} of the model", p)


@dataclass
class FNNRecord:
    """A forward pass kept for the backward system: ``zs[l]`` is ``z_l`` (``zs[0] = x``) and
    ``ds[l-1]`` is ``f_l'(y_l)`` or ``None``."""

    layers: list[FNNLayer]
    zs: list[torch.Tensor]
    ds: list[torch.Tensor | None]


# f'(y) from z = f(y) alone, for activations whose derivative needs nothing else: computed
# after the forward loop for all layers of one kind and shape at once (one op instead of k).
_FROM_OUTPUT: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda z: 1 - z * z,
    nn.Sigmoid: lambda z: z * (1 - z),
    nn.ReLU: lambda z: (z > 0).to(z.dtype),          # z > 0 exactly when y > 0
}


def record_forward(layers: Sequence[FNNLayer], x: torch.Tensor) -> FNNRecord:
    """Check the inputs, then run the forward pass of the parsed ``layers`` keeping ``z_l`` and
    ``f_l'(y_l)``."""
    layers = list(layers)
    _check_input(layers, x)
    zs: list[torch.Tensor] = [x]
    ds: list[torch.Tensor | None] = [None] * len(layers)
    later: dict[tuple, list[int]] = {}   # (activation type, shape) -> layers whose d waits
    with torch.no_grad():
        for l, layer in enumerate(layers):
            acts = layer.activations
            if len(acts) == 1 and type(acts[0]) in _FROM_OUTPUT:
                z = acts[0](layer.pre_activation(zs[-1]))
                later.setdefault((type(acts[0]), z.shape), []).append(l)
            else:
                z, ds[l] = layer.forward_with_derivative(zs[-1])
            zs.append(z)
        for (kind, _), idx in later.items():
            stacked = torch.stack([zs[l + 1] for l in idx])
            for l, d in zip(idx, _FROM_OUTPUT[kind](stacked).unbind(0)):
                ds[l] = d
    return FNNRecord(layers, zs, ds)


def backward_system_from_record(rec: FNNRecord, g: torch.Tensor) -> BlockBidiagonalSystem:
    """``U v = r`` with ``B_l = D_l W_{l+1}^T`` and ``r = (0, ..., 0, D_k g)``."""
    mats = [layer.linear.weight.detach().t() for layer in rec.layers[1:]]
    scales = rec.ds[:-1]
    last = g if rec.ds[-1] is None else rec.ds[-1] * g
    # Rows 1..k-1 have r_l = 0: one zero tensor per distinct width, shared (solvers are pure
    # functions and never write into the right-hand side).
    zeros: dict[tuple, torch.Tensor] = {}
    rhs = [zeros.setdefault(tuple(z.shape), torch.zeros_like(z)) for z in rec.zs[1:-1]] + [last]
    return BlockBidiagonalSystem(mats, scales, rhs, upper=True, symbol="v")


def parameter_gradients(model: nn.Module, rec: FNNRecord,
                        v: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``dE/dW_l = sum_batch v_l z_{l-1}^T`` and ``dE/db_l = sum_batch v_l``: all independent."""
    named = list(model.named_parameters())
    names = {id(p): n for n, p in named}
    found: dict[str, torch.Tensor] = {}

    def add(p: torch.Tensor, g: torch.Tensor) -> None:
        n = names[id(p)]
        found[n] = g if n not in found else found[n] + g   # a Linear used twice accumulates

    for layer, vl, z_prev in zip(rec.layers, v, rec.zs[:-1]):
        add(layer.linear.weight, vl.t() @ z_prev)
        if layer.linear.bias is not None:
            add(layer.linear.bias, vl.sum(0))
    return {n: found[n] if n in found else torch.zeros_like(p) for n, p in named}


def linear_forward_system(layers: Sequence[FNNLayer], x: torch.Tensor) -> BlockBidiagonalSystem:
    """Identity activations: ``z_1 = W_1 x + b_1``, ``z_l - W_l z_{l-1} = b_l``."""
    batch = x.shape[0]
    rhs = [layers[0].pre_activation(x)]
    for layer in layers[1:]:
        lin = layer.linear
        b = lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
        rhs.append(b.detach().expand(batch, -1).clone())
    mats = [layer.linear.weight.detach() for layer in layers[1:]]
    return BlockBidiagonalSystem(mats, [None] * len(mats), rhs, upper=False, symbol="z")


def forward_system(model: nn.Module, x: torch.Tensor) -> TriangularSystem:
    layers = parse_sequential(model)
    _check_input(layers, x)
    with torch.no_grad():
        if all(layer.is_linear for layer in layers):
            return linear_forward_system(layers, x)
        return NonlinearForwardSystem(layers, x)


def backward_problem(model: nn.Sequential, layers: Sequence[FNNLayer], x: torch.Tensor,
                     loss_fn: Callable) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of an FNN whose ``layers`` were parsed from
    ``model`` by :func:`parse_sequential`."""
    rec = record_forward(layers, x)
    loss, (g,) = loss_gradients([rec.zs[-1]], loss_fn)
    system = backward_system_from_record(rec, g)
    return BackwardProblem(system, loss, lambda v: parameter_gradients(model, rec, v))
