"""Example networks whose computation graphs are not chains: skips, residual and dense blocks,
branches, convolutions and normalisation (for tests and notebooks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SkipChain", "resnet_mlp", "densenet_mlp", "inception_mlp", "small_cnn", "layernorm_block"]


def _init(module: nn.Module, seed: int | None, dtype: torch.dtype) -> nn.Module:
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                fan_in = p.shape[1:].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in ** 0.5
                        * (1.0 if p.dim() > 1 else 0.1))
    return module.to(dtype)


class SkipChain(nn.Module):
    """``blocks`` layers ``h_l = tanh(W_l h_{l-1} + b_l)``, and layer ``l`` also adds
    ``h_{l-skip}`` (a skip connection of distance ``skip``; ``skip=0`` for a plain chain).
    """

    def __init__(self, width: int = 8, blocks: int = 4, skip: int = 2):
        super().__init__()
        if blocks < 1 or width < 1 or skip < 0:
            raise ValueError(f"need width >= 1, blocks >= 1, skip >= 0; got width={width}, "
                             f"blocks={blocks}, skip={skip}")
        self.skip = skip
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))

    def forward(self, x):
        hs = [x]
        for l, layer in enumerate(self.layers, start=1):
            h = torch.tanh(layer(hs[-1]))
            if self.skip and l - self.skip >= 1:
                h = h + hs[l - self.skip]
            hs.append(h)
        return hs[-1]


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


def resnet_mlp(width: int = 8, blocks: int = 2, *, seed: int | None = None,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """ResNet-style MLP: ``blocks`` residual blocks ``x + W2 tanh(W1 x + b1) + b2``."""
    return _init(nn.Sequential(*[_Residual(width) for _ in range(blocks)]), seed, dtype)


class _Dense(nn.Module):
    def __init__(self, width: int, growth: int, blocks: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width + l * growth, growth) for l in range(blocks))
        self.head = nn.Linear(width + blocks * growth, 3)

    def forward(self, x):
        h = x
        for layer in self.layers:
            h = torch.cat([h, F.gelu(layer(h))], dim=1)
        return self.head(h)


def densenet_mlp(width: int = 4, growth: int = 3, blocks: int = 3, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """DenseNet-style MLP: each layer's output is concatenated to all earlier features."""
    return _init(_Dense(width, growth, blocks), seed, dtype)


class _Inception(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b1, self.b2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.c = nn.Sequential(nn.Linear(width, width), nn.Sigmoid())
        self.out = nn.Linear(3 * width, width)

    def forward(self, x):
        branches = [torch.relu(self.a(x)), self.b2(torch.tanh(self.b1(x))), self.c(x) * x]
        return self.out(torch.cat(branches, dim=-1))


def inception_mlp(width: int = 4, blocks: int = 2, *, seed: int | None = None,
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """Inception-style: parallel branches of different depth, concatenated, ``blocks`` times."""
    return _init(nn.Sequential(*[_Inception(width) for _ in range(blocks)]), seed, dtype)


class _SmallCNN(nn.Module):
    def __init__(self, channels: int, size: int, conv1d: bool):
        super().__init__()
        conv = nn.Conv1d if conv1d else nn.Conv2d
        self.conv1 = conv(1, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels * size ** (1 if conv1d else 2), 2)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = h + F.silu(self.conv2(h))             # a skip around conv2
        return self.fc(h.flatten(1))


def small_cnn(channels: int = 2, size: int = 4, *, conv1d: bool = False, seed: int | None = None,
              dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two convolutions with a skip, then a Linear head; input ``(batch, 1, size[, size])``."""
    return _init(_SmallCNN(channels, size, conv1d), seed, dtype)


def layernorm_block(width: int = 6, *, seed: int | None = None,
                    dtype: torch.dtype = torch.float32) -> nn.Module:
    """``Linear -> LayerNorm -> GELU -> Linear``: an nn.Sequential that is not an FNN."""
    net = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
                        nn.Linear(width, 3))
    return _init(net, seed, dtype)
