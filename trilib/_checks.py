"""Input checks shared by every entry point.

Each check raises before any heavy work and names the argument, what was expected and what was
received. Memory-hungry steps call :func:`check_memory` with an
estimate first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "MemoryLimitError",
    "UnsupportedLayerError",
    "config",
    "check_finite",
    "check_memory",
    "check_matches",
    "check_scalar_loss",
]


class UnsupportedLayerError(TypeError):
    """A model contains a layer that the chosen system builder cannot express."""


class MemoryLimitError(MemoryError):
    """An operation would allocate more than ``trilib.config.memory_limit_bytes``."""


@dataclass
class Config:
    """Global settings. ``memory_limit_bytes`` caps any single materialisation (dense systems,
    n x n block products); raise it deliberately, e.g. ``trilib.config.memory_limit_bytes = 8 << 30``.
    """

    memory_limit_bytes: int = 4 << 30


config = Config()


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(nbytes: int, what: str, suggestion: str) -> None:
    """Raise :class:`MemoryLimitError` if ``nbytes`` exceeds the configured limit."""
    limit = config.memory_limit_bytes
    if nbytes > limit:
        raise MemoryLimitError(
            f"{what} would need about {_human(nbytes)}, above trilib.config.memory_limit_bytes "
            f"= {_human(limit)}. {suggestion}"
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); "
                         "trilib solves only finite systems")


def check_matches(name: str, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device,
                  owner: str = "the model's parameters") -> None:
    """``tensor`` must share ``dtype`` and ``device`` with ``owner``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} has dtype {tensor.dtype}; trilib needs a floating dtype "
                        f"({dtype} to match {owner})")
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
