"""Real architectures nobody on this project wrote, from tiny configs with random weights
(``HF_HUB_OFFLINE=1``: nothing is downloaded): Hugging Face GPT-2 and BERT fed token ids, ViT
fed pixels, an MLP-Mixer written with einops layers. Oracle: torch.autograd on the real module,
float64, every method trilib lists."""

import os

import pytest
import torch
from conftest import autograd_grads, rel
from torch import nn

import trilib

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
einops_torch = pytest.importorskip("einops.layers.torch")
DT = torch.float64


def check(net, x, loss):
    """Every listed method against autograd: the whole gradient to 1e-10, and each parameter's
    error below 1e-10 of the whole gradient's norm (some, like BERT's key bias, are exactly zero
    in exact arithmetic and rounding noise in both)."""
    ref = autograd_grads(net, x, loss)
    problem = trilib.api.backward_problem(net, x, loss)
    scale = torch.cat([g.flatten() for g in ref.values()]).norm()
    for m in trilib.methods(problem.system):
        grads = problem.parameter_gradients(trilib.solve(problem.system, m))
        assert list(grads) == list(ref)
        assert rel(torch.cat([g.flatten() for g in grads.values()]),
                   torch.cat([g.flatten() for g in ref.values()])) <= 1e-10, m
        for n in ref:
            assert (grads[n] - ref[n]).norm() <= 1e-10 * scale, (m, n)
    return problem.system


def seeded(make):
    torch.manual_seed(0)
    return make().to(DT).eval()


def test_gpt2_token_ids():
    cfg = transformers.GPT2Config(n_embd=4, n_layer=1, n_head=2, vocab_size=5, n_positions=4,
                                  use_cache=False, bos_token_id=0, eos_token_id=0)
    net = seeded(lambda: transformers.GPT2LMHeadModel(cfg))       # tied input/output embedding
    ids = torch.randint(0, 5, (2, 3))
    U = check(net, ids, lambda out: nn.functional.cross_entropy(out.logits.reshape(-1, 5),
                                                                ids.reshape(-1)))
    assert U.batch_size == 2


def test_bert_token_ids():
    cfg = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=12, vocab_size=13, max_position_embeddings=8)
    net = seeded(lambda: transformers.BertModel(cfg, add_pooling_layer=False))
    check(net, torch.randint(0, 13, (2, 4)), lambda out: out.last_hidden_state.tanh().sum())


def test_vit_pixels():
    cfg = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=12, image_size=4, patch_size=2, num_channels=1)
    net = seeded(lambda: transformers.ViTModel(cfg, add_pooling_layer=False))
    check(net, torch.randn(2, 1, 4, 4, dtype=DT), lambda out: out.last_hidden_state[:, 0].square().sum())


def test_einops_mixer():
    from einops.layers.torch import Rearrange, Reduce

    class Mix(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.norm, self.fn = nn.LayerNorm(4), fn

        def forward(self, x):
            return x + self.fn(self.norm(x))

    def mixer():
        return nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2), nn.Linear(4, 4),
            Mix(nn.Sequential(Rearrange("b n c -> b c n"), nn.Linear(4, 4), nn.GELU(),
                              Rearrange("b c n -> b n c"))),
            Mix(nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 4))),
            Reduce("b n c -> b c", "mean"), nn.Linear(4, 3))

    check(seeded(mixer), torch.randn(2, 1, 4, 4, dtype=DT), lambda out: out.tanh().sum())
