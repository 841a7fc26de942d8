"""torch.export capture of models nobody on this project wrote (THEORY §3-4): hooks, patched
forwards, parametrizations, pruning, tied weights, in-place ops, moved batch dimensions, token
ids. Oracle: torch.autograd on the real module, float64, every method trilib lists."""

import pytest
import torch
from conftest import autograd_grads, rel
from torch import nn
from torch.nn.utils import parametrizations, prune

import trilib
from trilib._checks import UnsupportedLayerError

DT = torch.float64


def tanh_loss(out):
    return out.tanh().square().sum() + 0.5 * out.sum()


def assert_all_methods_match(net, x, loss=tanh_loss):
    ref = autograd_grads(net, x, loss)
    U = trilib.backward_system(net, x, loss)
    for m in trilib.methods(U):
        grads = trilib.gradients(net, x, loss, method=m)
        assert list(grads) == list(ref)
        for n in ref:
            assert rel(grads[n], ref[n]) <= 1e-10, (m, n)
    return U


class Block(nn.Module):
    """A custom module (the graph path) with a Linear that users may hook or patch."""

    def __init__(self, width=3):
        super().__init__()
        self.fc, self.out = nn.Linear(width, width), nn.Linear(width, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)) + x)


def hooked():
    net = Block()
    net.fc.register_forward_hook(lambda m, i, o: o * 2 + 1)
    return net


def pre_hooked():
    net = Block()
    net.fc.register_forward_pre_hook(lambda m, i: (i[0].sin(),))
    return net


def patched():
    net = Block()
    base, extra = net.fc.forward, nn.Linear(3, 3, bias=False)    # a LoRA-style adapter
    net.extra = extra
    net.fc.forward = lambda h: base(h) + extra(h)
    return net


def weight_normed():
    net = Block()
    parametrizations.weight_norm(net.fc)
    return net


def pruned():
    net = Block()
    prune.random_unstructured(net.fc, "weight", amount=0.5)
    return net


class Tied(nn.Module):
    """One weight used by two layers (tied embeddings): its gradient is the sum over uses."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(3, 3), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        h += 1.0
        return self.act(h) * 2


@pytest.mark.parametrize("make", [hooked, pre_hooked, patched, weight_normed, pruned, Tied, InPlace])
def test_features_a_builder_cannot_see_give_autograds_gradients(make):
    torch.manual_seed(0)
    net = make().to(DT)
    x = torch.randn(4, 3, dtype=DT)
    assert_all_methods_match(net, x)


class Tokens(nn.Module):
    """(B, T, C) -> (B·T, C) -> (B, T, C), and (B, T, C) -> (T, B, C) and back."""

    def __init__(self, vocab=7, c=4):
        super().__init__()
        self.emb, self.fc, self.head = nn.Embedding(vocab, c), nn.Linear(c, c), nn.Linear(c, vocab)

    def forward(self, idx):
        b, t = idx.shape
        h = self.emb(idx)
        h = self.fc(h.view(-1, h.shape[-1])).view(b, t, -1).tanh()
        h = h.transpose(0, 1).cumsum(0).transpose(0, 1)           # mixes tokens, not samples
        return self.head(h)


def test_token_ids_are_data_and_the_batch_is_followed():
    torch.manual_seed(0)
    net = Tokens().to(DT)
    idx = torch.randint(0, 7, (3, 5))
    U = assert_all_methods_match(net, idx, lambda out: nn.functional.cross_entropy(
        out.reshape(-1, 7), idx.reshape(-1)))
    assert U.nodes[0].op.startswith("embedding") and not U.nodes[0].parents
    assert any(n.layout == (0, 1, 5) for n in U.nodes)            # the (B·T, C) rows


def test_sequential_starting_with_embedding():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(6, 4), nn.Flatten(), nn.Linear(12, 3), nn.Tanh()).to(DT)
    assert_all_methods_match(net, torch.randint(0, 6, (4, 3)))


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.gru(x)                  # h_n (batch in dim 1) is discarded
        return self.head(out[:, -1])


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2),
                                  nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3, padding=1))
        self.head = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


@pytest.mark.parametrize("make, shape", [
    (GRUClassifier, (3, 4, 3)),
    (lambda: nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True),
     (2, 3, 4)),                               # inside: (B, T, E) -> (T, B, E) -> (B·H, T, D)
    (CNN, (2, 1, 4, 4)),
])
def test_real_layers(make, shape):
    torch.manual_seed(0)
    net = make().to(DT).eval()
    x = torch.randn(*shape, dtype=DT)
    assert_all_methods_match(net, x)


def test_mixing_the_batch_is_refused_with_source_line():
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            return h / h.norm()            # couples every sample

    with pytest.raises(UnsupportedLayerError, match=r"test_capture_export.py:\d+ .*h.norm"):
        trilib.backward_system(Norm().to(DT), torch.randn(4, 3, dtype=DT), tanh_loss)


def test_small_gpt_builder():
    net = trilib.nets.gpt(vocab=5, width=4, layers=1, heads=2, tokens=3, seed=0, dtype=DT).eval()
    idx = torch.randint(0, 5, (2, 3))
    U = assert_all_methods_match(net, idx, lambda out: nn.functional.cross_entropy(
        out.reshape(-1, 5), idx.reshape(-1)))
    assert U.batch_size == 2 and net.head.weight is net.tok.weight
    slow = {n.op.split()[0] for n in U.nodes if n.product == "autograd"}
    assert slow == {"layer_norm", "scaled_dot_product_attention"}     # the rest is structured
    with pytest.raises(ValueError, match="width divisible by heads"):
        trilib.nets.gpt(width=5, heads=2)


def encoder_layer(batch_first=False):
    return nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0,
                                      batch_first=batch_first).to(DT).eval()


def test_bare_encoder_layer_sequence_first():
    """batch_first=False (the default): x is (T, B, E), the batch is read from the module."""
    torch.manual_seed(0)
    U = assert_all_methods_match(encoder_layer(), torch.randn(3, 2, 4, dtype=DT))
    assert U.batch_size == 2


class SequenceFirst(nn.Module):
    """A wrapper whose input is (T, B, E): only the user knows where its batch is."""

    def __init__(self):
        super().__init__()
        self.enc, self.head = encoder_layer(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.enc(x))


def test_explicit_batch_dim():
    torch.manual_seed(0)
    net = SequenceFirst().to(DT).eval()
    x = torch.randn(3, 2, 4, dtype=DT)
    with pytest.raises(UnsupportedLayerError, match=r"dimension 0 of x, of size 3.*batch_dim="):
        trilib.graph.backward_problem(net, x, tanh_loss)
    ref = autograd_grads(net, x, tanh_loss)
    problem = trilib.graph.backward_problem(net, x, tanh_loss, batch_dim=1)
    assert problem.system.batch_size == 2
    for m in trilib.methods(problem.system):
        grads = problem.parameter_gradients(trilib.solve(problem.system, m))
        assert all(rel(grads[n], ref[n]) <= 1e-10 for n in ref), m
    batch_last = trilib.graph.backward_problem(encoder_layer(True), x.transpose(0, 1), tanh_loss,
                                               batch_dim=-3)
    assert batch_last.system.batch_size == 2


@pytest.mark.parametrize("net, x, kwargs, error, match", [
    (SequenceFirst(), torch.randn(3, 2, 4), dict(batch_dim=3), ValueError,
     r"batch_dim=3 is not a dimension of x of shape \(3, 2, 4\)"),
    (SequenceFirst(), torch.randn(3, 2, 4), dict(batch_dim="1"), TypeError, "batch_dim must be an int"),
    (encoder_layer(), torch.randn(3, 4), {}, ValueError,
     r"unbatched sequence for TransformerEncoderLayer.*batch_first=False.*batch_dim="),
    (encoder_layer(), torch.randn(3, 0, 4), {}, ValueError, r"non-empty batch dimension \(dimension 1\)"),
])
def test_batch_dim_errors(net, x, kwargs, error, match):
    with pytest.raises(error, match=match):
        trilib.graph.backward_problem(net.to(DT).eval(), x.to(DT), tanh_loss, **kwargs)


class Moves(nn.Module):
    """Shape operations with structured (permutation, scatter-add) transpose Jacobians, and one
    that mixes data into its result (it keeps autograd's product)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(21, 2)

    def forward(self, x):
        h = self.fc(x).tanh()
        parts = [h.flip(1), h.unsqueeze(1).expand(-1, 2, -1).reshape(len(x), -1), h[:, 1:3],
                 torch.cat([h, x], 1)]
        return self.out(torch.cat(parts, 1) * 2 + h.sum(1, keepdim=True))


def test_structured_products_match_autograd():
    torch.manual_seed(0)
    net = Moves().to(DT)
    assert_all_methods_match(net, torch.randn(4, 3, dtype=DT))
    structured = trilib.graph.capture(net, torch.randn(4, 3, dtype=DT), loss_fn=tanh_loss)[0]
    assert {n.product for n in structured.nodes} == {"", "permutation", "diagonal", "linear", "autograd"}
    assert [n.product for n in structured.nodes if n.op.startswith("cat")] == ["autograd"] * 2
