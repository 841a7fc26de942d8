"""Parsing an ``nn.Sequential`` into FNN layers (docs/theory.md §1): ``nn.Linear`` s, each
followed by element-wise activations, with every parameter's name; the parse of a model is kept
while the model is unchanged.

A module whose computation differs from its class (a hook, a patched or overridden ``forward``;
:func:`trilib._features.module_features`) is never parsed as a plain layer: the parse refuses it,
naming the module and the feature. A ``Linear`` whose weight is parametrized
(``torch.nn.utils.parametrize``, ``weight_norm``) or pruned (``torch.nn.utils.prune``) is a
layer with its *effective* ``W_l``; its gradient is chained back to the original parameters."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from itertools import chain
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from .._autograd import ELEMENTWISE
from .._checks import UnsupportedLayerError
from .._features import (
    CHANGES_BACKWARD,
    CHANGES_FORWARD,
    global_hooks,
    hooks_registered,
    module_features,
    plain_module,
    refuse_features,
)

__all__ = ["FNNLayer", "FNNLayers", "parse_sequential"]


class FNNLayer(NamedTuple):
    """One layer ``z = f(W z_prev + b)``: an ``nn.Linear`` and the element-wise modules after it
    (``name`` is the Linear's path in the model, e.g. ``"3"`` or ``"block.0"``). A named tuple:
    a deep model has thousands, made on every call."""

    linear: nn.Linear
    activations: tuple[nn.Module, ...]
    name: str = ""
    derived: bool = False   #: W_l or b_l computed from other parameters (parametrized, pruned)

    @property
    def weight(self) -> torch.Tensor:
        """``W_l`` as the Linear's forward uses it (parametrized or pruned: computed now)."""
        return effective_parameters(self.linear)[0] if self.derived else self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return effective_parameters(self.linear)[1] if self.derived else self.linear.bias

    @property
    def is_linear(self) -> bool:
        """True when ``f`` is the identity (no activation, or only ``nn.Identity``)."""
        return all(type(a) is nn.Identity for a in self.activations)

    def activate(self, y: torch.Tensor) -> torch.Tensor:
        for a in self.activations:
            y = a(y)
        return y

    def pre_activation(self, z_prev: torch.Tensor) -> torch.Tensor:
        return F.linear(z_prev, *effective_parameters(self.linear))

    def forward_with_derivative(self, z_prev: torch.Tensor):
        """``(z, d)`` with ``z = f(W z_prev + b)`` and ``d = f'(y)`` (``None`` when f = id).

        ``d`` comes from autograd on the activation alone: it is element-wise, so the
        vector-Jacobian product with ones is the diagonal of its Jacobian.
        """
        return _with_derivative(self, self.pre_activation(z_prev))


def _derived(module: nn.Module) -> bool:
    """A Linear whose weight or bias is computed from other parameters when it runs."""
    return "parametrizations" in module._modules or any(
        isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values())


def effective_parameters(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` as ``linear``'s forward uses them: a parametrization is evaluated (reading the
    attribute does), a pruning mask applied to the original (as its forward pre-hook does: the
    attribute itself is only refreshed by a call). Differentiable when grad mode is on."""
    own = linear._parameters
    if "weight" in own and "bias" in own:
        return own["weight"], own["bias"]
    masked = {h._tensor_name: h.apply_mask(linear) for h in linear._forward_pre_hooks.values()
              if isinstance(h, prune.BasePruningMethod)}
    w = masked["weight"] if "weight" in masked else linear.weight
    return w, masked["bias"] if "bias" in masked else linear.bias


def _with_derivative(layer: FNNLayer, y: torch.Tensor):
    if layer.is_linear:
        return y, None
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        z = layer.activate(y)
        (d,) = torch.autograd.grad(z, y, torch.ones_like(z))
    return z.detach(), d


class FNNLayers(list):
    """The list of :class:`FNNLayer` s of a model, with what the gradients are keyed by.

    Attributes:
        params: every ``(name, parameter)`` of the model, in the order and with the names
            ``model.named_parameters()`` gives.
        plain: True when ``params`` is exactly every layer's weight and bias, layer by layer
            (no Linear used twice, no parameter elsewhere): gradients then zip with names.
    """

    params: list[tuple[str, nn.Parameter]]
    plain: bool


def _flatten(model: nn.Module, prefix: str, out: list, params: list, seen: set) -> bool:
    """Leaf modules of nested ``nn.Sequential`` s as ``(path, module)``, and every parameter as
    ``(name, parameter)`` in the order and with the names of ``model.named_parameters()``.
    Returns True when every parameter is a Linear's own and none is met twice."""
    plain = True
    for name, p in model._parameters.items():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            params.append((prefix + name, p))
            plain = False
    # _modules, not named_children(): a module used twice (shared weights) must appear twice.
    for name, child in model._modules.items():
        if type(child) is nn.Sequential:
            plain = _flatten(child, f"{prefix}{name}.", out, params, seen) and plain
            continue
        if child is None:
            continue
        path = prefix + name
        out.append((path, child))
        if child._modules:                       # a leaf with submodules: not an FNN layer
            own = child.named_parameters(prefix=path)
            plain = False
        elif child._parameters:
            own = ((f"{path}.{n}", p) for n, p in child._parameters.items() if p is not None)
            plain = plain and type(child) is nn.Linear
        else:
            continue
        for pname, p in own:
            if id(p) in seen:
                plain = False
            else:
                seen.add(id(p))
                params.append((pname, p))
    return plain


@contextmanager
def _gc_paused():
    """Pause CPython's cyclic garbage collector while O(k) Python objects are made (parsing k
    layers, the forward's k activations, 2k gradient views). None of them forms a cycle, but
    each burst of allocations would otherwise trigger collections, and the survivors a full
    traversal of the heap (every module and parameter of a deep model): on a 4096-layer MLP
    that traversal costs as much as the whole backward pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_sequential(model: nn.Module) -> FNNLayers:
    """Split an ``nn.Sequential`` into :class:`FNNLayer` s, or raise a clear error.

    Nested ``nn.Sequential`` containers are flattened. Raises:
        UnsupportedLayerError: a module that is neither ``nn.Linear`` nor an element-wise
            activation, an activation before the first ``nn.Linear``, or a subclass of
            ``nn.Sequential`` with its own ``forward`` (it may not chain its layers).
        ValueError: an empty model, or consecutive Linear layers whose widths do not chain.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential of nn.Linear and activations, "
                        f"got {type(model).__name__}")
    if type(model).forward is not nn.Sequential.forward:
        raise UnsupportedLayerError(
            f"{type(model).__name__} subclasses nn.Sequential with its own forward, which need not "
            "apply its layers one after the other; trilib.graph traces what it computes instead")
    with _gc_paused():
        objects: list = []
        sizes: list[int] = []
        mods: list[nn.Module] = []
        stamp = hooks_registered()
        _structure(model, objects, sizes, mods)
        key = (list(map(id, objects)), sizes)   # identities stay unique: the cache keeps them
        cached = _PARSED.get(model)
        if cached is not None and cached[0] == key and stamp is not None and cached[3] == stamp:
            # unchanged, and no hook registered anywhere since it was checked: only a forward
            # assigned on an instance could have changed what a module computes
            odd = [m for m in mods if "forward" in m.__dict__]
        else:
            odd = [m for m in mods if not plain_module(m)]
        if odd or global_hooks():
            _refuse_changed(model)
        if cached is None or cached[0] != key:
            modules: list[tuple[str, nn.Module]] = []
            params: list[tuple[str, nn.Parameter]] = []
            plain = _flatten(model, "", modules, params, set())
            layers = _layers(modules)
            layers.params, layers.plain = params, plain and not any(la.derived for la in layers)
            cached = (key, layers, objects, stamp)
        if cached[3] != stamp or _PARSED.get(model) is not cached:
            cached = _PARSED[model] = (*cached[:3], stamp)
        out = FNNLayers(cached[1])              # a copy: the caller may change its list
        out.params, out.plain = cached[1].params, cached[1].plain
    return out


# model -> (its structure, its parse, its objects, the hooks_registered() stamp of its last check):
# parsing a deep model walks thousands of modules and names every parameter; the structure is
# re-read on every call (every module and parameter object, compared by identity), so a model
# changed in any way is parsed again, and checked for hooks in full when any hook was registered.
_PARSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _refuse_changed(model: nn.Module) -> None:
    """Raise naming the first module whose forward (or backward) differs from its class's."""
    changed = [f for f in module_features(model) if f.feature in CHANGES_FORWARD + CHANGES_BACKWARD]
    refuse_features(model, changed, "the FNN builder reads nn.Linear and activations by their class, "
                    "so it would compute the plain layers. trilib.backward_system and "
                    "trilib.gradients hand such a model to the graph builder, which runs the real "
                    "module calls; or remove the hook (handle.remove()) or the patch")


def _structure(model: nn.Module, objects: list, sizes: list, mods: list) -> None:
    """Everything a parse depends on, in order: the modules of the nested ``nn.Sequential`` s,
    their names, the parameter objects of each (all compared by identity, not by value: the
    optimiser's in-place updates do not change a parse) and the widths of every Linear; every
    module (containers too) is appended to ``mods`` for the hook checks."""
    mods.append(model)
    objects.append(model)
    objects.extend(chain.from_iterable(model._parameters.items()))
    for name, child in model._modules.items():
        objects.append(name)
        if type(child) is nn.Sequential:
            _structure(child, objects, sizes, mods)
            continue
        objects.append(child)
        if child is None:
            continue
        objects.append(type(child))             # a class swapped on the instance changes its forward
        mods.append(child)
        objects.extend(chain.from_iterable(child._parameters.items()))
        if child._modules:
            objects.extend(chain.from_iterable(child.named_parameters()))
        if isinstance(child, nn.Linear):
            sizes += (child.in_features, child.out_features)


def _layers(modules: list[tuple[str, nn.Module]]) -> FNNLayers:
    layers: list[list] = []
    last = None
    for name, module in modules:
        kind = type(module)
        if isinstance(module, nn.Linear):   # modules with hooks or their own forward: refused before
            if last is not None and module.in_features != last.out_features:
                raise ValueError(f"layer {name} (Linear) expects {module.in_features} input "
                                 f"features but the previous Linear produces {last.out_features}")
            layers.append((module, [], name, _derived(module)))
            last = module
        elif kind in ELEMENTWISE:
            if last is None:
                raise UnsupportedLayerError(
                    f"layer {name} ({kind.__name__}) comes before the first nn.Linear; "
                    "an FNN system starts at z_0 = x, so apply it to x before calling trilib")
            layers[-1][1].append(module)
        else:
            supported = ", ".join(t.__name__ for t in ELEMENTWISE)
            raise UnsupportedLayerError(
                f"layer {name} ({kind.__name__}) is not supported in an FNN system: "
                f"use nn.Linear layers each followed by element-wise activations ({supported}). "
                "Replace or remove it (e.g. fold normalisation into the weights, drop Dropout "
                "in evaluation).")
    if not layers:
        raise ValueError("the model has no nn.Linear layer; an FNN system needs k >= 1 layers")
    return FNNLayers(FNNLayer(lin, tuple(acts), name, derived) for lin, acts, name, derived in layers)


def _parameters(layers: Sequence[FNNLayer]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """``W_l`` and ``b_l`` of every layer as its forward uses them (detached where derived)."""
    if getattr(layers, "plain", False) or not any(layer.derived for layer in layers):
        # straight from the Linear's parameter dict: Module.__getattr__ costs a microsecond a call
        own = [layer.linear._parameters for layer in layers]
        return [p["weight"] for p in own], [p.get("bias") for p in own]
    with torch.no_grad():
        pairs = [effective_parameters(layer.linear) for layer in layers]
    return [w for w, _ in pairs], [b for _, b in pairs]


