"""Bidirectional ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (issue 19): two grids, forward in time and
reversed, solved by every RNN method; gradients against ``torch.autograd`` in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import F64, autograd_grads, grad_error
from torch import nn

import trilib
from trilib._checks import UnsupportedLayerError

EXACT = 1e-10
KINDS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def module(kind, **kw):
    torch.manual_seed(0)
    return KINDS[kind](3, 4, bidirectional=True, dtype=F64, **kw)


def loss_of(kind):
    """A loss that reads every output: ``output``, ``h_n`` (and ``c_n``), non-linearly."""
    if kind == "lstm":
        return lambda out: out[0].square().sum() + out[1][0].pow(3).sum() + out[1][1].sin().sum()
    return lambda out: out[0].square().sum() + out[1].pow(3).sum()


def check_every_method(model, x, loss_fn):
    problem = trilib.api.backward_problem(model, x, loss_fn)
    ref = autograd_grads(model, x, loss_fn)
    methods = trilib.methods(problem.system)
    assert set(methods) >= {"sequential", "jacobi", "wavefront", "nested"}
    for method in methods:
        grads = problem.parameter_gradients(trilib.solve(problem.system, method))
        assert list(grads) == list(ref)
        assert grad_error(grads, ref) <= EXACT, method
    return problem


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_bare_bidirectional_module_every_method(kind, batch_first):
    net = module(kind, batch_first=batch_first)
    x = torch.randn(2, 6, 3, dtype=F64) if batch_first else torch.randn(6, 2, 3, dtype=F64)
    problem = check_every_method(net, x, loss_of(kind))
    assert problem.system.grid_shape == (1, 6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_initial_state_unbatched_input_and_no_bias(kind):
    net = module(kind, bias=False)
    x = torch.randn(5, 2, 3, dtype=F64)
    h0 = torch.randn(2, 2, 4, dtype=F64)
    state = (h0, torch.randn(2, 2, 4, dtype=F64)) if kind == "lstm" else h0
    check_every_method(net, (x, state), loss_of(kind))
    check_every_method(net, x[:, 0], loss_of(kind))                      # unbatched (τ, n_in)


def test_relu_rnn_and_output_alone():
    torch.manual_seed(1)
    net = nn.RNN(3, 5, nonlinearity="relu", bidirectional=True, dtype=F64)
    check_every_method(net, torch.randn(7, 3, 3, dtype=F64), lambda out: out[0][:, :, 2:].sum())


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_classifier_over_a_bidirectional_module(kind):
    rnn = module(kind, batch_first=True)
    readout = nn.Linear(4, 3, dtype=F64)
    model = (trilib.rnn.RNNClassifier(rnn, readout) if kind == "rnn"
             else trilib.gated.GatedClassifier(rnn, readout))
    x = torch.randn(2, 5, 3, dtype=F64)
    check_every_method(model, x, lambda logits: logits.logsumexp(1).sum() - logits[:, 0].sum())


def test_backward_and_training_follow_autograd():
    ours, theirs = module("gru"), module("gru")
    x = torch.randn(6, 3, 3, dtype=F64)
    loss_fn = loss_of("gru")
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ours, theirs)]
    for _ in range(3):
        trilib.training.train_step(ours, x, loss_fn, opts[0], method="nested")
        opts[1].zero_grad()
        loss_fn(theirs(x)).backward()
        opts[1].step()
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), n


@pytest.mark.parametrize("kind", list(KINDS))
def test_several_bidirectional_layers_are_refused_saying_why(kind):
    net = module(kind, num_layers=2)
    with pytest.raises(UnsupportedLayerError, match="num_layers=2.*reads both directions.*num_layers=1"):
        trilib.backward_system(net, torch.randn(4, 2, 3, dtype=F64), loss_of(kind))


def test_classifier_refusals_name_the_submodule():
    model = trilib.gated.GatedClassifier(module("gru"), nn.Linear(4, 2, dtype=F64), forward_method="newton")
    with pytest.raises(UnsupportedLayerError, match=r"submodule 'rnn' \(GRU\).*forward_method='sequential'"):
        trilib.backward_system(model, torch.randn(4, 2, 3, dtype=F64), lambda out: out.sum())
    model = trilib.rnn.RNNClassifier(module("rnn", num_layers=2), nn.Linear(4, 2, dtype=F64))
    with pytest.raises(UnsupportedLayerError, match=r"submodule 'rnn' \(RNN\).*num_layers=2"):
        trilib.backward_system(model, torch.randn(4, 2, 3, dtype=F64), lambda out: out.sum())


def test_hooks_on_a_bidirectional_module_are_refused():
    net = module("lstm")
    net.register_forward_hook(lambda m, i, o: (2 * o[0], o[1]))
    with pytest.raises(UnsupportedLayerError, match=r"\(LSTM\) has a forward hook"):
        trilib.backward_system(net, torch.randn(4, 2, 3, dtype=F64), loss_of("lstm"))
