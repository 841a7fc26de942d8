"""trilib.backward / fit: training with every method gives autograd's weights (float64)."""

import copy

import pytest
import torch
from torch.nn.functional import cross_entropy

import trilib
from trilib.training import AUTOGRAD, accuracy, fit, train_step

STEPS = 30


def _mlp_problem():
    torch.manual_seed(0)
    net = trilib.nets.mlp([6, 8, 8, 8, 8, 4], activation="tanh", seed=1, dtype=torch.float64)
    x = torch.randn(24, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (24,))
    return net, x, y


def _mlp_methods():
    net, x, y = _mlp_problem()
    return trilib.methods(trilib.backward_system(net, x[:2], lambda o: cross_entropy(o, y[:2])))


def _train(net, x, y, method):
    return fit(net, cross_entropy, (x, y), method=method, steps=STEPS, lr=0.2, batch_size=8,
               progress=False)


@pytest.fixture(scope="module")
def autograd_run():
    net, x, y = _mlp_problem()
    losses = _train(net, x, y, AUTOGRAD)
    return net, losses


@pytest.mark.parametrize("method", _mlp_methods())
def test_training_matches_autograd(method, autograd_run):
    ref_net, ref_losses = autograd_run
    net, x, y = _mlp_problem()
    losses = _train(net, x, y, method)
    assert len(losses) == STEPS
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= 1e-9
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters()):
        assert (p - q).abs().max().item() <= 1e-9, name
    assert ref_losses[-1] < ref_losses[0]          # it did learn


def test_training_rnn_matches_autograd():
    torch.manual_seed(0)
    base = torch.nn.RNN(3, 5, batch_first=True, dtype=torch.float64)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    target = torch.randn(4, 6, 5, dtype=torch.float64)
    loss_fn = lambda out: ((out[0] if isinstance(out, tuple) else out) - target).square().mean()  # noqa: E731
    methods = trilib.methods(trilib.backward_system(base, x, loss_fn))
    ref = copy.deepcopy(base)
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    for _ in range(STEPS):
        train_step(ref, x, loss_fn, opt, AUTOGRAD)
    for method in methods:
        net = copy.deepcopy(base)
        opt = torch.optim.SGD(net.parameters(), lr=0.3)
        for _ in range(STEPS):
            train_step(net, x, loss_fn, opt, method)
        for p, q in zip(net.parameters(), ref.parameters()):
            assert (p - q).abs().max().item() <= 1e-9, method


def test_backward_accumulates_like_autograd():
    net, x, y = _mlp_problem()
    loss_fn = lambda o: cross_entropy(o, y)  # noqa: E731
    ref = copy.deepcopy(net)
    loss_fn(ref(x)).backward()
    loss_fn(ref(x)).backward()
    first = trilib.backward(net, x, loss_fn)
    trilib.backward(net, x, loss_fn)
    assert abs(float(first) - float(loss_fn(ref(x)).detach())) < 1e-12
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=1e-12)


def test_fit_adam_callback_and_full_batch():
    net, x, y = _mlp_problem()
    ref = copy.deepcopy(net)
    seen = []
    losses = fit(net, cross_entropy, (x, y), method="sequential", steps=5, lr=0.01,
                 optimizer="adam", callback=lambda s, l: seen.append((s, l)), progress=False)
    ref_losses = fit(ref, cross_entropy, (x, y), method=AUTOGRAD, steps=5, lr=0.01,
                     optimizer=lambda ps: torch.optim.Adam(ps, lr=0.01), progress=False)
    assert [s for s, _ in seen] == list(range(5)) and [l for _, l in seen] == losses
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-12


def test_fit_progress_bar_counts_the_steps(capsys):
    net, x, y = _mlp_problem()
    fit(net, cross_entropy, (x, y), steps=3, progress=True)
    err = capsys.readouterr().err
    assert "sequential" in err and "3/3" in err and "4/3" not in err


def test_fit_errors():
    net, x, y = _mlp_problem()
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        fit(net, cross_entropy, (x, y), method="nope")
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        fit(net, cross_entropy, (x, y), steps=0)
    with pytest.raises(TypeError, match="data must be a pair"):
        fit(net, cross_entropy, x)
    with pytest.raises(ValueError, match="x has 24 samples but y has 3"):
        fit(net, cross_entropy, (x, y[:3]))
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 24\]"):
        fit(net, cross_entropy, (x, y), batch_size=25)
    with pytest.raises(ValueError, match="optimizer must be 'sgd', 'adam' or a callable"):
        fit(net, cross_entropy, (x, y), optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown method"):
        trilib.backward(net, x, lambda o: o.sum(), method="autograd")


def test_accuracy_against_scikit_learn():
    from sklearn.metrics import accuracy_score

    net, x, y = _mlp_problem()
    with torch.no_grad():
        pred = net(x).argmax(-1)
    assert accuracy(net, x, y) == pytest.approx(accuracy_score(y.numpy(), pred.numpy()))


def test_digits_training_learns():
    x, y = trilib.data.digits("train")
    xt, yt = trilib.data.digits("test")
    assert x.shape == (1348, 64) and xt.shape == (449, 64)
    net = trilib.nets.mlp([64, 32, 10], activation="tanh", seed=0)
    fit(net, cross_entropy, (x, y), steps=60, lr=0.5, batch_size=64, progress=False)
    assert accuracy(net, xt, yt) > 0.8
