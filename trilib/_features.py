"""What makes a module compute other than its class says: hooks of every kind, a patched or
overridden ``forward``, parametrizations, pruning, shared parameters, ``inplace=True``.

A builder that reads a module's class to know its function (the FNN parse) asks
:func:`module_features` first and either computes the feature exactly or refuses it with
:func:`refuse_features`, naming the module, the feature and what to do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm

from ._checks import UnsupportedLayerError

__all__ = ["ModuleFeature", "module_features", "refuse_features", "plain_module", "global_hooks",
           "hooks_registered", "CHANGES_FORWARD", "CHANGES_BACKWARD"]


class ModuleFeature(NamedTuple):
    """Something that makes a module compute other than its class's ``forward`` says.

    Attributes:
        module: the module's qualified name in the model (``"net.3"``; ``""`` for the model
            itself, ``"*"`` for every module: a global hook).
        feature: e.g. ``"a forward hook"`` (:data:`CHANGES_FORWARD`, :data:`CHANGES_BACKWARD`).
        detail: what exactly, for the message (e.g. which tensor is parametrized).
    """
    module: str
    feature: str
    detail: str = ""

    def describe(self, model: nn.Module) -> str:
        """``"module 'net.3' (Linear) has a forward hook (...)"`` for error messages."""
        if self.module == "*":
            where = "every module (a global hook, torch.nn.modules.module.register_module_*)"
        else:
            sub = model.get_submodule(self.module) if self.module else model
            where = f"module {self.module or '(the model)'!r} ({type(sub).__name__})"
        return f"{where} has {self.feature}" + (f" ({self.detail})" if self.detail else "")


#: What :func:`module_features` reports that makes the forward pass differ from the module's
#: class, and what changes autograd's gradients themselves (no forward-pass builder can
#: reproduce it). The rest ("a parametrization", "pruning", "a shared parameter",
#: "inplace=True") change how parameters enter the computation: the FNN builder computes them.
CHANGES_FORWARD = ("a forward hook", "a forward pre-hook", "a patched forward", "its own forward",
                   "a global forward hook")
CHANGES_BACKWARD = ("a backward hook", "a global backward hook", "a gradient hook on a parameter",
                    "a stateful parametrization")
_HOOKS = (("_forward_hooks", "a forward hook"), ("_forward_pre_hooks", "a forward pre-hook"),
          ("_backward_hooks", "a backward hook"), ("_backward_pre_hooks", "a backward hook"))
_GLOBAL = {"_global_forward_hooks": "a global forward hook", "_global_backward_hooks":
           "a global backward hook", "_global_forward_pre_hooks": "a global forward hook",
           "_global_backward_pre_hooks": "a global backward hook"}
_OWN_FORWARD: dict[type, bool] = {}
_POWER_ITERATION = ("spectral_norm in training mode updates its power-iteration vectors on every "
                    "call; call model.eval()")


def _torch_base(cls: type) -> type:     # the first class of cls's MRO that torch.nn defines
    return next((b for b in cls.__mro__ if b.__module__.startswith("torch.nn.")), nn.Module)


def _own_forward(cls: type) -> bool:
    """Whether ``cls`` subclasses a ``torch.nn`` layer (not ``nn.Module`` itself) and replaces
    its ``forward``: builders that recognise the layer by its class would compute the base's."""
    if cls not in _OWN_FORWARD:
        base = _torch_base(cls)
        _OWN_FORWARD[cls] = base not in (nn.Module, cls) and cls.forward is not base.forward
    return _OWN_FORWARD[cls]


def plain_module(m: nn.Module) -> bool:
    """Whether ``m`` itself computes what its class says, with parameters as registered: no hook
    (module or on its parameters), patched or subclass ``forward``, parametrization or pruning
    (``inplace=True`` and shared parameters aside). A few dictionary reads: builders call it on
    every module of every model before reading the model by its classes (global hooks are
    :func:`global_hooks`)."""
    d = m.__dict__
    if (d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"]
            or d["_backward_pre_hooks"] or "forward" in d or "parametrizations" in d["_modules"]):
        return False
    own = _OWN_FORWARD.get(type(m))
    if own if own is not None else _own_forward(type(m)):
        return False
    for p in d["_parameters"].values():
        if p is not None and (p._backward_hooks or p._post_accumulate_grad_hooks):
            return False
    return True


def hooks_registered() -> int | None:
    """A stamp that changes whenever any hook is registered anywhere (module, global, tensor:
    PyTorch numbers every hook handle from one counter), or ``None`` if PyTorch has no such
    counter. A check that found a model clean at one stamp need not read its hooks again."""
    return getattr(torch.utils.hooks.RemovableHandle, "next_id", None)


def global_hooks() -> list[ModuleFeature]:
    """The hooks registered for every module (``register_module_forward_hook`` and kin)."""
    hooks = nn.modules.module
    return list(dict.fromkeys(ModuleFeature("*", f) for a, f in _GLOBAL.items() if getattr(hooks, a)))


def _module_features(name: str, m: nn.Module, out: list) -> None:
    if m.__dict__.get("inplace") is True:
        out.append(ModuleFeature(name, "inplace=True"))
    if plain_module(m):
        return
    for attr, feature in _HOOKS:
        hooks = list(getattr(m, attr).values())
        if attr == "_forward_pre_hooks":
            pruned = [h._tensor_name for h in hooks if isinstance(h, prune.BasePruningMethod)]
            if pruned:
                out.append(ModuleFeature(name, "pruning", ", ".join(pruned)))
            hooks = [h for h in hooks if not isinstance(h, prune.BasePruningMethod)]
            if m.training and any(isinstance(h, SpectralNorm) for h in hooks):   # the old API's
                out.append(ModuleFeature(name, "a stateful parametrization", _POWER_ITERATION))
        if hooks:
            out.append(ModuleFeature(name, feature))
    if "forward" in m.__dict__:
        out.append(ModuleFeature(name, "a patched forward", "forward assigned on the instance"))
    if _own_forward(type(m)):
        out.append(ModuleFeature(name, "its own forward", f"a subclass of {_torch_base(type(m)).__name__}"))
    if "parametrizations" in m._modules:
        for tensor, plist in m._modules["parametrizations"].items():
            kinds = ", ".join(type(p).__name__ for p in plist)
            out.append(ModuleFeature(name, "a parametrization", f"{tensor}: {kinds}"))
            if any(type(p).__name__ == "_SpectralNorm" and p.training for p in plist):
                out.append(ModuleFeature(name, "a stateful parametrization", _POWER_ITERATION))
    for pname, p in m._parameters.items():
        if p is not None and (p._backward_hooks or p._post_accumulate_grad_hooks):
            out.append(ModuleFeature(name, "a gradient hook on a parameter", pname))


def module_features(model: nn.Module) -> list[ModuleFeature]:
    """Every feature of ``model`` and its submodules that makes what it computes differ from
    what its modules' classes say (the one place that knows them; builders decide what they
    can compute exactly and refuse the rest before any solve).

    Found: forward, pre- and backward hooks (on modules, global, on parameters), a ``forward``
    assigned on the instance (LoRA-style) or overridden by a subclass of a ``torch.nn`` layer,
    parametrizations (``parametrize``, ``weight_norm``, ``spectral_norm``: stateful in training
    mode), pruning, parameters under two names (tied weights) and ``inplace=True`` modules.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(inplace=True))
        >>> h = net[0].register_forward_hook(lambda m, i, o: 2 * o)
        >>> [(f.module, f.feature) for f in module_features(net)]
        [('0', 'a forward hook'), ('1', 'inplace=True')]
    """
    out = global_hooks()
    for name, m in model.named_modules():           # a module used twice is named once
        _module_features(name, m, out)
    owners: dict[int, str] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in owners and owners[id(p)] != pname:
            out.append(ModuleFeature(pname.rpartition(".")[0], "a shared parameter",
                                     f"{pname} is {owners[id(p)]}"))
        owners.setdefault(id(p), pname)
    return list(dict.fromkeys(out))


def refuse_features(model: nn.Module, features, why: str) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first of ``features`` (from
    :func:`module_features`, the others counted) and ``why`` (what the builder cannot do and
    what to do instead); nothing when ``features`` is empty."""
    features = list(features)
    if features:
        more = f" (and {len(features) - 1} more: " + "; ".join(
            f.describe(model) for f in features[1:]) + ")" if len(features) > 1 else ""
        raise UnsupportedLayerError(f"{features[0].describe(model)}{more}: {why}")
