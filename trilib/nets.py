"""Small networks for notebooks, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "GPT", "gpt", "mlp"]

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


class _Block(nn.Module):
    """Pre-norm transformer block: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h):
        b, t, c = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(att.transpose(1, 2).reshape(b, t, c))   # attention mixes tokens only
        return h + self.mlp(self.ln2(h))


class GPT(nn.Module):
    """A small decoder-only transformer: token and position embeddings, ``layers`` causal
    blocks, a final LayerNorm and a head tied to the token embedding. ``forward(idx)`` maps
    token ids ``(batch, tokens)`` to logits ``(batch, tokens, vocab)``."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, tokens: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(tokens, width)
        self.blocks = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight                         # tied embeddings

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(h)))


def gpt(vocab: int = 32, width: int = 16, layers: int = 2, heads: int = 2, tokens: int = 8, *,
        seed: int | None = None, dtype: torch.dtype = torch.float32) -> GPT:
    """A small GPT (:class:`GPT`), seeded so the same call gives the same weights.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.gpt(vocab=5, width=4, layers=1, heads=2, tokens=3, seed=0)
        >>> net(torch.zeros(2, 3, dtype=torch.long)).shape
        torch.Size([2, 3, 5])
    """
    if min(vocab, width, layers, heads, tokens) < 1 or width % heads:
        raise ValueError(f"need positive sizes and width divisible by heads; got vocab={vocab}, "
                         f"width={width}, layers={layers}, heads={heads}, tokens={tokens}")
    with torch.random.fork_rng(devices=[]):             # the caller's random stream is untouched
        if seed is not None:
            torch.manual_seed(seed)
        return GPT(vocab, width, layers, heads, tokens).to(dtype)
