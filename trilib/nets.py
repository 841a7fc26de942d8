"""Small networks for notebooks, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "mlp"]

#: Activation names accepted by :func:`mlp`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "softplus": nn.Softplus, "elu": nn.ELU,
    "silu": nn.SiLU,
}


def mlp(widths, activation: str = "tanh", *, bias: bool = True, seed: int | None = None,
        weight_scale: float | None = None, dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None, last_activation: bool = False) -> nn.Sequential:
    """An ``nn.Sequential`` MLP with layer widths ``widths = [n_0, n_1, ..., n_k]``.

    Args:
        widths: input width followed by the k layer widths.
        activation: a name from :data:`ACTIVATIONS`, placed after every Linear but the last
            (after the last too when ``last_activation``).
        seed: seeds the initialisation, so the same call gives the same weights.
        weight_scale: if given, weights are drawn ``N(0, weight_scale^2 / n_{l-1})``; scales
            above 1 make products of Jacobians grow, below 1 shrink.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list n_0 and at least one layer width, all >= 1; got {widths}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    modules: list[nn.Module] = []
    k = len(widths) - 1
    for l in range(k):
        lin = nn.Linear(widths[l], widths[l + 1], bias=bias, dtype=dtype)
        if gen is not None or weight_scale is not None:
            with torch.no_grad():
                std = (weight_scale if weight_scale is not None else 1.0) / widths[l] ** 0.5
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=dtype) * std)
                if bias:
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=dtype) * 0.1)
        modules.append(lin)
        if l < k - 1 or last_activation:
            modules.append(ACTIVATIONS[activation]())
    return nn.Sequential(*modules).to(device=device)
