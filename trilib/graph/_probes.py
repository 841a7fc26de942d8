"""Structural checks of a captured module: does an operation couple samples (probed through its
vector-Jacobian product, docs/theory.md §3), and does the module run on x at all."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._numerics import ceil_log2

__all__ = ["mixes_samples", "runs"]


def mixes_samples(fn: Callable, value: torch.Tensor, batch: int) -> bool:
    """Whether a node's vector-Jacobian product ``fn`` couples samples, by ``2 ceil(log2 B)``
    probes: a random cotangent on the samples whose bit j is 1 (then 0), zero on the others. A
    per-sample operation sends nothing to the other samples of its parents; any two samples
    differ in some bit, so every coupling between two samples shows up in some probe (a random
    cotangent cancels exactly with probability 0). Autograd's zeros are exact: no tolerance (a
    NaN from a zero cotangent times an infinite derivative counts as zero, not as a coupling)."""
    if batch < 2:
        return False
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(value.shape, generator=gen, dtype=torch.float64).to(value.device, value.dtype)
    bit_of = torch.arange(batch, device=value.device)
    shape = (batch,) + (1,) * (value.dim() - 1)
    leaks = []
    with torch.no_grad():
        for j in range(ceil_log2(batch)):
            on = ((bit_of >> j) & 1).bool()
            for mask in (on, ~on):
                for cot in fn(c * mask.reshape(shape).to(c.dtype)):
                    if isinstance(cot, torch.Tensor) and cot.dim() and cot.shape[0] == batch:
                        leaks.append((torch.nan_to_num(cot[~mask], nan=0.0) != 0).any())  # 0 * inf
    return bool(torch.stack(leaks).any()) if leaks else False


def runs(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module(x)`` runs at all (asked only after the traced module failed)."""
    try:
        with torch.no_grad():
            module(x)
    except Exception:
        return False
    return True
