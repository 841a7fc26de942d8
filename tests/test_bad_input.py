"""Bad input (issue 12): one row per input class and model family. Each row asserts the exception
type and that the message names the offending thing, raised before any solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import trilib
from trilib import graph as G

F64 = torch.float64


def mlp():
    return trilib.nets.mlp([3, 4, 2], activation="tanh", seed=0, dtype=F64)


def rnn():
    torch.manual_seed(0)
    return nn.RNN(3, 4, num_layers=2, dtype=F64)


def resnet():
    return G.resnet_mlp(3, 2, seed=0, dtype=F64)


def batchnorm():
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh()).to(F64).eval()


X = {mlp: lambda: torch.randn(4, 3, dtype=F64), resnet: lambda: torch.randn(4, 3, dtype=F64),
     batchnorm: lambda: torch.randn(4, 3, dtype=F64), rnn: lambda: torch.randn(5, 4, 3, dtype=F64)}


def plain_loss(o):
    return (o[0] if isinstance(o, tuple) else o).square().sum()


def poisoned(build, name):
    model = build()
    with torch.no_grad():
        dict([*model.named_parameters(), *model.named_buffers()])[name].view(-1)[0] = float("inf")
    return model


class Mix(nn.Module):
    def forward(self, h):
        return h - h.mean(0)


# Each row: (id, model builder, x builder, loss_fn, options, exception type, regex on the message)
ROWS = [
    # wrong shape
    ("shape-fnn", mlp, lambda: torch.randn(4, 5, dtype=F64), plain_loss, {}, ValueError,
     "x has 5 features but the first Linear expects 3"),
    ("shape-fnn-1d", mlp, lambda: torch.randn(3, dtype=F64), plain_loss, {}, ValueError,
     r"x must be 2-D .*unsqueeze"),
    ("shape-rnn", rnn, lambda: torch.randn(5, 4, 2, dtype=F64), plain_loss, {}, ValueError,
     "x has 2 features but the RNN has input_size=3"),
    ("shape-graph", resnet, lambda: torch.randn(4, 5, dtype=F64), plain_loss, {}, ValueError,
     r"model fails on x of shape \(4, 5\)"),
    ("shape-h0", rnn, lambda: (torch.randn(5, 4, 3, dtype=F64), torch.zeros(1, 4, 4, dtype=F64)),
     plain_loss, {}, ValueError, r"h0 has shape \(1, 4, 4\), expected \(2, 4, 4\)"),
    # dtype
    ("dtype-fnn", mlp, lambda: torch.randn(4, 3), plain_loss, {}, TypeError,
     "x has dtype torch.float32 but .* are torch.float64"),
    ("dtype-rnn", rnn, lambda: torch.randn(5, 4, 3), plain_loss, {}, TypeError, "x has dtype torch.float32"),
    ("dtype-graph", resnet, lambda: torch.randn(4, 3), plain_loss, {}, TypeError,
     "x has dtype torch.float32"),
    ("dtype-int", mlp, lambda: torch.ones(4, 3, dtype=torch.long), plain_loss, {}, TypeError,
     "x has dtype torch.int64, but this builder's system starts at x, so it needs a floating dtype"),
    # device (the meta device stands in for another device)
    ("device-fnn", mlp, lambda: torch.randn(4, 3, dtype=F64, device="meta"), plain_loss, {}, ValueError,
     "x is on device meta but the model's parameters are on cpu"),
    ("device-rnn", rnn, lambda: torch.randn(5, 4, 3, dtype=F64, device="meta"), plain_loss, {}, ValueError,
     "x is on device meta"),
    ("device-graph", resnet, lambda: torch.randn(4, 3, dtype=F64, device="meta"), plain_loss, {}, ValueError,
     "x is on device meta"),
    ("device-model", lambda: mlp().to("meta"), lambda: torch.randn(4, 3, dtype=F64, device="meta"),
     plain_loss, {}, ValueError, "parameter '0.weight' of the model is on the meta device"),
    # non-finite input, weight, buffer
    ("nan-x-fnn", mlp, lambda: torch.full((4, 3), float("nan"), dtype=F64), plain_loss, {}, ValueError,
     r"x contains 12 non-finite value\(s\)"),
    ("nan-x-rnn", rnn, lambda: torch.full((5, 4, 3), float("inf"), dtype=F64), plain_loss, {}, ValueError,
     "x contains 60 non-finite"),
    ("nan-x-graph", resnet, lambda: torch.full((4, 3), float("nan"), dtype=F64), plain_loss, {}, ValueError,
     "x contains 12 non-finite"),
    ("inf-weight-fnn", lambda: poisoned(mlp, "2.bias"), X[mlp], plain_loss, {}, ValueError,
     "parameter '2.bias' of the model contains 1 non-finite"),
    ("inf-weight-rnn", lambda: poisoned(rnn, "weight_hh_l1"), X[rnn], plain_loss, {}, ValueError,
     "parameter 'weight_hh_l1' of the model contains 1 non-finite"),
    ("inf-weight-graph", lambda: poisoned(resnet, "0.fc1.weight"), X[resnet], plain_loss, {}, ValueError,
     "parameter '0.fc1.weight' of the model contains 1 non-finite"),
    ("inf-buffer-graph", lambda: poisoned(batchnorm, "1.running_mean"), X[batchnorm], plain_loss, {},
     ValueError, "buffer '1.running_mean' of the model contains 1 non-finite"),
    # empty batch
    ("empty-fnn", mlp, lambda: torch.randn(0, 3, dtype=F64), plain_loss, {}, ValueError, r"empty batch"),
    ("empty-rnn", rnn, lambda: torch.randn(5, 0, 3, dtype=F64), plain_loss, {}, ValueError,
     r"empty time or batch dimension \(τ=5, batch=0\)"),
    ("empty-graph", resnet, lambda: torch.randn(0, 3, dtype=F64), plain_loss, {}, ValueError,
     "non-empty leading batch dimension"),
    # loss: not a scalar, independent of the output, not callable
    ("loss-vector", mlp, X[mlp], lambda o: o.sum(0), {}, ValueError,
     r"loss_fn must return a scalar, got a tensor of shape \(2,\)"),
    ("loss-vector-rnn", rnn, X[rnn], lambda o: o[0], {}, ValueError, "loss_fn must return a scalar"),
    ("loss-vector-graph", resnet, X[resnet], lambda o: o, {}, ValueError, "loss_fn must return a scalar"),
    ("loss-float", mlp, X[mlp], lambda o: 1.0, {}, TypeError,
     "loss_fn must return a scalar torch.Tensor, got float"),
    ("loss-independent", mlp, X[mlp], lambda o: torch.tensor(1.0, dtype=F64, requires_grad=True), {},
     ValueError, "does not depend on the model output"),
    ("loss-independent-rnn", rnn, X[rnn], lambda o: (o[0] * 0).sum().detach(), {}, ValueError,
     "does not depend on the model output"),
    ("loss-not-callable", mlp, X[mlp], "mse", {}, TypeError, "loss_fn must be callable"),
    ("loss-nan", mlp, X[mlp], lambda o: o.sum() * float("nan"), {}, ValueError, "non-finite loss"),
    # method and options
    ("unknown-method", mlp, X[mlp], plain_loss, {"method": "magic"}, ValueError,
     "unknown method 'magic'; valid methods are: sequential"),
    ("method-for-other-system", mlp, X[mlp], plain_loss, {"method": "wavefront"}, ValueError,
     "method 'wavefront' does not apply to a BlockBidiagonalSystem"),
    ("bad-option", mlp, X[mlp], plain_loss, {"method": "jacobi", "tol": -1}, ValueError, "tol must be None"),
    ("bad-p", mlp, X[mlp], plain_loss, {"method": "block_jacobi", "p": 3}, ValueError,
     r"p must be an int in \[1, 2\], got 3"),
    # unsupported layers
    ("mixes-samples", lambda: nn.Sequential(nn.Linear(3, 4), Mix()).to(F64), X[mlp], plain_loss, {},
     trilib.UnsupportedLayerError, r"operation mean .*test_bad_input.py:\d+ .* mixes samples"),
    ("batchnorm-training", lambda: batchnorm().train(), X[batchnorm], plain_loss, {},
     trilib.UnsupportedLayerError, r"layer 1 \(BatchNorm1d\) is in training mode"),
    ("bidirectional-rnn", lambda: nn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=F64), X[rnn],
     plain_loss, {}, trilib.UnsupportedLayerError, "bidirectional=True and num_layers=2 is not supported"),
    # not a model, not a tensor
    ("not-a-module", lambda: (lambda t: t), X[mlp], plain_loss, {}, TypeError,
     "model must be a torch.nn.Module, got function"),
    ("numpy-fnn", mlp, lambda: np.ones((4, 3)), plain_loss, {}, TypeError,
     "x must be a torch.Tensor, got ndarray"),
    ("list-fnn", mlp, lambda: [[1.0, 2.0, 3.0]], plain_loss, {}, TypeError,
     "x must be a torch.Tensor, got list"),
    ("numpy-rnn", rnn, lambda: np.ones((5, 4, 3)), plain_loss, {}, TypeError,
     "x must be a torch.Tensor, got ndarray"),
    ("numpy-graph", resnet, lambda: np.ones((4, 3)), plain_loss, {}, TypeError,
     "x must be a torch.Tensor, got ndarray"),
    ("empty-list-rnn", rnn, lambda: [], plain_loss, {}, ValueError, "got a list of length 0"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_raises_a_clear_error(row):
    _, build, make_x, loss_fn, options, error, match = row
    with pytest.raises(error, match=match):
        trilib.gradients(build(), make_x(), loss_fn, **options)


def test_memory_limit_rows(monkeypatch):
    net = trilib.nets.mlp([3] + [16] * 8, seed=0, dtype=F64)
    x = torch.randn(64, 3, dtype=F64)
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", 1 << 16)
    with pytest.raises(trilib.MemoryLimitError, match=r"method='recursive_doubling'.*above "
                       r"trilib.config.memory_limit_bytes = 64.0 KiB"):
        trilib.gradients(net, x, plain_loss, method="recursive_doubling")
    with pytest.raises(trilib.MemoryLimitError, match=r"method 'nested' on a k=2 x τ=5 grid"):
        trilib.gradients(nn.RNN(3, 32, num_layers=2, dtype=F64), torch.randn(5, 64, 3, dtype=F64),
                         plain_loss, method="nested")
    trilib.gradients(net, x, plain_loss, method="sequential")           # no materialisation: fine


@pytest.mark.parametrize("value,error", [("4GB", TypeError), (4.0e9, TypeError), (True, TypeError),
                                         (0, ValueError), (-5, ValueError)])
def test_memory_limit_is_validated_on_assignment(value, error):
    old = trilib.config.memory_limit_bytes
    match = rf"trilib.config.memory_limit_bytes must be a positive int .*got {value!r}"
    with pytest.raises(error, match=match):
        trilib.config.memory_limit_bytes = value
    assert trilib.config.memory_limit_bytes == old


def test_forward_rejects_the_same_inputs():
    with pytest.raises(ValueError, match="parameter '0.weight' of the model contains 1 non-finite"):
        trilib.forward(poisoned(mlp, "0.weight"), X[mlp]())
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        trilib.forward(mlp(), np.ones((4, 3)))
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        trilib.forward(mlp(), X[mlp](), "magic")
