"""Input checks shared by every entry point.

Each check raises before any heavy work and names the argument, what was expected and what was
received. Memory-hungry steps call :func:`check_memory` with an
estimate first.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm

__all__ = [
    "MemoryLimitError",
    "UnsupportedLayerError",
    # what makes a module compute other than its class says
    "ModuleFeature", "module_features", "refuse_features", "plain_module", "global_hooks", "hooks_registered",
    "CHANGES_FORWARD", "CHANGES_BACKWARD",
    "config",
    "check_finite",
    "check_finite_named",
    "module_tensors",
    "check_memory",
    "check_matches",
    "check_scalar_loss",
    "recurrent_input",
]


class UnsupportedLayerError(TypeError):
    """A model contains a layer that the chosen system builder cannot express."""


def check_int(name: str, value: object, low: int, high: int | None = None, *,
              error: type[Exception] = ValueError, span: str | None = None) -> int:
    """The one int-not-bool argument check of trilib: ``value`` must be an integer
    (``numbers.Integral``, numpy's too, never ``bool``) with ``low <= value <= high``.

    Raises ``error`` (default ``ValueError``) naming the argument: ``"{name} must be an int
    {span}, got {value!r}"`` (``span`` defaults to ``">= low"`` or ``"in [low, high]"``).
    Returns ``int(value)``.

    Example:
        >>> check_int("steps", 3, 1)
        3
        >>> check_int("steps", True, 1)
        Traceback (most recent call last):
        ValueError: steps must be an int >= 1, got True
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        span = span or (f">= {low}" if high is None else f"in [{low}, {high}]")
        raise error(f"{name} must be an int {span}, got {value!r}")
    return int(value)


def check_number(name: str, value: object, *, positive: bool = False, finite: bool = False,
                 what: str = "") -> float:
    """A real number (never ``bool``) ``>= 0`` (``> 0`` with ``positive``; not infinite with
    ``finite``): ``ValueError`` naming the argument (or saying ``what``) otherwise. Returns
    ``float(value)``."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and (value > 0 if positive else value >= 0) and (not finite or math.isfinite(value)))
    if not ok:
        raise ValueError(what or f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


class MemoryLimitError(MemoryError):
    """An operation would allocate more than ``trilib.config.memory_limit_bytes``."""


def check_limit(value: object, name: str = "trilib.config.memory_limit_bytes") -> int | None:
    """The one memory-limit rule, for ``trilib.config.memory_limit_bytes`` and every
    ``memory_limit=`` argument: ``None`` (no limit) or a positive integer number of bytes (any
    ``numbers.Integral`` but ``bool``); ``TypeError`` for anything else, ``ValueError`` for
    zero or a negative number."""
    if value is None:
        return None
    what = (f"{name} must be a positive int (bytes), or None for no limit; "
            f"got {value!r}. Write e.g. 8 << 30 for 8 GiB, or int(8e9)")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(what)
    if value <= 0:
        raise ValueError(what)
    return int(value)


@dataclass
class Config:
    """Global settings.

    Attributes:
        memory_limit_bytes: caps any single materialisation (dense systems, n x n block
            products): a positive ``int`` number of bytes (default ``4 << 30``, 4 GiB), or
            ``None`` for no limit. Raise it deliberately, e.g.
            ``trilib.config.memory_limit_bytes = 8 << 30``. Assigning anything else raises at
            once: ``TypeError`` for a non-integer (a string such as ``"4GB"``, a float),
            ``ValueError`` for zero or a negative number.

    Example:
        >>> import trilib
        >>> try:
        ...     trilib.config.memory_limit_bytes = "4GB"
        ... except TypeError as e:
        ...     print(str(e)[:60])
        trilib.config.memory_limit_bytes must be a positive int (byt
    """

    memory_limit_bytes: int | None = 4 << 30

    def __setattr__(self, name: str, value: object) -> None:
        if name == "memory_limit_bytes":
            value = check_limit(value)
        elif not hasattr(self, name):
            raise AttributeError(f"trilib.config has no setting {name!r}; settings: memory_limit_bytes")
        super().__setattr__(name, value)


config = Config()


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(nbytes: int, what: str, suggestion: str, limit: object = None) -> None:
    """Raise :class:`MemoryLimitError` if ``nbytes`` exceeds the limit: ``limit`` (a
    ``memory_limit=`` argument, checked by :func:`check_limit`) when given, else
    ``trilib.config.memory_limit_bytes`` (none if None)."""
    name = "trilib.config.memory_limit_bytes"
    if limit is None:
        limit = config.memory_limit_bytes
    else:
        limit, name = check_limit(limit, "memory_limit"), "memory_limit"
    if limit is not None and nbytes > limit:
        raise MemoryLimitError(
            f"{what} would need about {_human(nbytes)}, above {name} = {_human(limit)}. {suggestion}"
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); "
                         "trilib solves only finite systems")


def check_finite_named(named, owner: str = "the model") -> None:
    """Every floating tensor in ``named`` must be finite; the error names the first offender.

    Args:
        named: ``(label, name, tensor)`` triples, e.g. ``("parameter", "0.weight", w)`` (the
            message is formatted only on failure).
        owner: what the tensors belong to, for the message.

    Cheap when all is well: the tensors are stacked by shape (in chunks of at most 16 MiB) and
    summed, and one host synchronisation tests the sums. A NaN or inf makes its sum non-finite,
    and a finite sum proves every entry finite. Deep models have thousands of small parameters,
    where one reduction (or even one attribute read) per tensor in Python would cost more than a
    training step's solve. Anything else (a sum that overflows, mixed dtypes or devices, the
    meta device, a non-finite entry) takes the exact path, which names the offender.

    Raises:
        ValueError: a tensor holds a NaN or inf (named, e.g. ``parameter '0.weight'``), or lives
            on the ``meta`` device (it has no values).
    """
    named = list(named)
    try:
        if _sums_are_finite([t for *_, t in named]):
            return
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        pass                        # mixed dtypes or devices, meta tensors, ...: the exact path
    _check_finite_exactly(named, owner)


#: The most bytes :func:`check_finite_named` copies into one stack.
_CHUNK_BYTES = 16 << 20


def _sums_are_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether the sums of ``tensors`` (stacked by shape, chunk by chunk) are all finite."""
    by_shape: dict[torch.Size, list[torch.Tensor]] = {}
    for t in tensors:
        by_shape.setdefault(t.shape, []).append(t)
    with torch.no_grad():
        sums = []
        for group in by_shape.values():
            per = max(1, _CHUNK_BYTES // max(1, group[0].numel() * group[0].element_size()))
            sums += [group[i].sum() if len(group[i:i + per]) == 1 else torch.stack(group[i:i + per]).sum()
                     for i in range(0, len(group), per)]
        return not sums or bool(torch.stack(sums).isfinite().all())


def _check_finite_exactly(named, owner: str) -> None:
    """Tensor by tensor: the meta device, then every floating tensor's entries."""
    for label, name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            if t.device.type == "meta":
                raise ValueError(f"{label} {name!r} of {owner} is on the meta device and has no "
                                 "values; materialise the model first (e.g. "
                                 "model.to_empty(device='cpu') and load its weights)")
            with torch.no_grad():
                check_finite(f"{label} {name!r} of {owner}", t)


def module_tensors(module) -> list[tuple[str, str, torch.Tensor]]:
    """``(label, name, tensor)`` for every parameter and buffer of ``module``, for
    :func:`check_finite_named` (one walk over the modules)."""
    out = []
    for prefix, m in module.named_modules():
        for label, tensors in (("parameter", m._parameters), ("buffer", m._buffers)):
            for n, t in tensors.items():
                if t is not None:
                    out.append((label, f"{prefix}.{n}" if prefix else n, t))
    return out


def check_matches(name: str, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device,
                  owner: str = "the model's parameters") -> None:
    """``tensor`` must share ``dtype`` and ``device`` with ``owner``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} has dtype {tensor.dtype}, but this builder's system starts at "
                        f"{name}, so it needs a floating dtype ({dtype} to match {owner}); convert it with "
                        f"{name}.to({dtype}) if it holds numbers, not ids")
    if tensor.dtype != dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but {owner} are {dtype}; "
                        f"convert one of them, e.g. x.to({dtype})")
    if tensor.device != device:
        raise ValueError(f"{name} is on device {tensor.device} but {owner} are on {device}; "
                         f"move one of them, e.g. x.to('{device}')")


def check_scalar_loss(loss: object) -> torch.Tensor:
    """The value of ``loss_fn(...)`` must be a finite scalar tensor."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a scalar torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}; "
                         "reduce it, e.g. with .sum() or .mean()")
    if not torch.isfinite(loss).all():
        raise ValueError(f"loss_fn returned a non-finite loss ({loss.item()})")
    return loss.reshape(())


def recurrent_input(module, inputs) -> tuple[torch.Tensor, object, bool]:
    """The input of a torch recurrent module (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``), checked.

    ``inputs`` is ``x`` or ``(x, state)`` as the module takes them. Returns the time-major batched
    ``x`` ``(τ, batch, n_in)``, the initial state as given (``None`` when absent; the builder
    checks its shape), and whether ``x`` was unbatched.
    """
    from torch.nn.utils.rnn import PackedSequence

    if isinstance(inputs, PackedSequence) or (isinstance(inputs, (tuple, list)) and inputs
                                              and isinstance(inputs[0], PackedSequence)):
        raise TypeError("x is a PackedSequence; trilib needs a padded tensor of equal-length sequences")
    if isinstance(inputs, (tuple, list)) and len(inputs) != 2:
        raise ValueError(f"x must be a tensor (τ, batch, n_in) or a pair (x, h0), got a "
                         f"{type(inputs).__name__} of length {len(inputs)}")
    x, state = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
    ref, name = module.weight_ih_l0, type(module).__name__
    check_matches("x", x, ref.dtype, ref.device)
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (τ, batch, n_in), (batch, τ, n_in) with batch_first, or "
                         f"unbatched (τ, n_in); got shape {tuple(x.shape)}")
    unbatched = x.dim() == 2
    x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if module.batch_first else x)
    tau, batch, n_in = x.shape
    if n_in != module.input_size:
        raise ValueError(f"x has {n_in} features but the {name} has input_size={module.input_size}")
    if tau == 0 or batch == 0:
        raise ValueError(f"x has an empty time or batch dimension (τ={tau}, batch={batch})")
    check_finite("x", x)
    return x, state, unbatched


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
