"""Input checks shared by every entry point.

Each check raises before any heavy work and names the argument, what was expected and what was
received. Memory-hungry steps call :func:`check_memory` with an
estimate first.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "MemoryLimitError",
    "UnsupportedLayerError",
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
