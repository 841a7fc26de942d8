"""Reliability (issue 12): every reproducer gives autograd's answer or a clear error, by default,
and a bounded property-based campaign runs every method that ``trilib.methods(system)`` lists
on random MLPs, ``nn.RNN`` s and residual graphs, in float64 and float32, against torch.autograd.

Tolerances come from one place, ``conftest.TOL``. Hypothesis is derandomized so CI is
deterministic; the campaign takes about 40 s on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, autograd_grads, deep_tanh_float32, grad_error, rel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import trilib
from trilib import graph as G
from trilib.api import backward_problem

F32, F64 = torch.float32, torch.float64
DTYPES = st.sampled_from([F64, F32])


def campaign(examples: int):
    """Hypothesis settings of the campaign: deterministic, no deadline (timings vary on CI)."""
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def every_method_error(model, x, loss_fn) -> dict[str, float]:
    """``{method: gradient error against autograd}`` for every method of the model's system
    (default options: nothing the user has to know)."""
    ref = autograd_grads(model, x, loss_fn)
    problem = backward_problem(model, x, loss_fn)
    return {m: grad_error(problem.parameter_gradients(trilib.solve(problem.system, m)), ref)
            for m in trilib.methods(problem.system)}


def assert_all_within(errors: dict[str, float], dtype) -> None:
    bad = {m: e for m, e in errors.items() if not e <= TOL[dtype]}
    assert not bad, f"above {TOL[dtype]:g} ({dtype}): {bad}"


def weighted(o: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(0.5, 1.5, o.shape[-1], dtype=o.dtype)
    return (o.sin() * w).sum() + 0.5 * o.square().mean()


# -- the property campaign -------------------------------------------------------------------------
@campaign(150)
@given(dtype=DTYPES, depth=st.integers(1, 10), width=st.integers(1, 8), batch=st.integers(1, 4),
       activation=st.sampled_from(sorted(trilib.nets.ACTIVATIONS)), scale=st.floats(0.3, 2.5),
       bias=st.booleans(), seed=st.integers(0, 10**6))
def test_campaign_mlp(dtype, depth, width, batch, activation, scale, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    widths = [int(w) for w in torch.randint(1, width + 1, (depth + 1,), generator=gen)]
    net = trilib.nets.mlp(widths, activation=activation, seed=seed, weight_scale=scale, bias=bias,
                          dtype=dtype)
    x = torch.randn(batch, widths[0], generator=gen, dtype=F64).to(dtype)
    assert_all_within(every_method_error(net, x, weighted), dtype)
    # the forward pass as a solve, by every method of the forward system
    expected = net(x).detach()
    system = trilib.forward_system(net, x)
    errors = {m: rel(trilib.forward(net, x, m), expected) for m in trilib.methods(system)}
    assert_all_within(errors, dtype)


@campaign(200)
@given(dtype=DTYPES, layers=st.integers(1, 3), hidden=st.integers(1, 5), tau=st.integers(1, 8),
       batch=st.integers(1, 3), nonlinearity=st.sampled_from(["tanh", "relu"]), bias=st.booleans(),
       batch_first=st.booleans(), with_h0=st.booleans(), seed=st.integers(0, 10**6))
def test_campaign_rnn(dtype, layers, hidden, tau, batch, nonlinearity, bias, batch_first, with_h0, seed):
    torch.manual_seed(seed)
    rnn = nn.RNN(2, hidden, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                 batch_first=batch_first, dtype=dtype)
    x = torch.randn(batch, tau, 2, dtype=dtype) if batch_first else torch.randn(tau, batch, 2, dtype=dtype)
    inputs = (x, torch.randn(layers, batch, hidden, dtype=dtype)) if with_h0 else x

    def loss_fn(out):
        return weighted(out[0]) + out[1].square().sum()

    errors = every_method_error(rnn, inputs, loss_fn)
    assert {"sequential", "wavefront", "nested", "jacobi"} <= set(errors)
    assert_all_within(errors, dtype)


@campaign(80)
@given(dtype=DTYPES, kind=st.sampled_from(["resnet", "densenet", "inception", "skipchain"]),
       width=st.integers(1, 5), blocks=st.integers(1, 3), batch=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_campaign_residual_graphs(dtype, kind, width, blocks, batch, seed):
    if kind == "resnet":
        net = G.resnet_mlp(width, blocks, seed=seed, dtype=dtype)
    elif kind == "densenet":
        net = G.densenet_mlp(width, 2, blocks, seed=seed, dtype=dtype)
    elif kind == "inception":
        net = G.inception_mlp(width, blocks, seed=seed, dtype=dtype)
    else:
        torch.manual_seed(seed)
        net = G.SkipChain(width, blocks + 2, 2).to(dtype)
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)
    errors = every_method_error(net, x, weighted)
    assert {"sequential", "jacobi"} <= set(errors)
    assert_all_within(errors, dtype)


# -- issue 12 #1: iterative methods give autograd's answer by default ---------------------------------
@pytest.mark.parametrize("method,options", [("jacobi", {}), ("block_jacobi", {}), ("gauss_seidel", {}),
                                            ("gauss_seidel", {"order": "reverse"}), ("newton", {})])
def test_ill_conditioned_float32_iterative_equals_autograd(method, options):
    net, x, loss_fn = deep_tanh_float32()
    assert trilib.compare_to_autograd(net, x, loss_fn, method=method, **options) <= TOL[F32]


@pytest.mark.parametrize("method", ["jacobi", "newton"])
def test_ill_conditioned_float32_forward_equals_model(method):
    net, x, _ = deep_tanh_float32()
    out, trace = trilib.forward(net, x, method, return_trace=True)
    assert trace.info["converged"] and rel(out, net(x).detach()) <= TOL[F32]


# -- #2: non-finite weights and buffers are named, on every path ------------------------------------
def poison(tensor: torch.Tensor) -> None:
    with torch.no_grad():
        tensor.view(-1)[0] = float("nan")


@pytest.mark.parametrize("build,attr,name", [
    (lambda: G.resnet_mlp(3, 2, seed=0, dtype=F64), "1.fc2.weight", "parameter '1.fc2.weight'"),
    (lambda: G.layernorm_block(3, seed=0, dtype=F64), "1.weight", "parameter '1.weight'"),
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh()).to(F64).eval(), "1.running_var",
     "buffer '1.running_var'"),
    (lambda: G.SkipChain(3, 3, 2).to(F64), "layers.2.bias", "parameter 'layers.2.bias'"),
    (lambda: trilib.nets.mlp([3, 4, 3], seed=0, dtype=F64), "2.weight", "parameter '2.weight'"),
])
def test_non_finite_parameter_or_buffer_is_named(build, attr, name):
    net = build()
    poison(dict([*net.named_parameters(), *net.named_buffers()])[attr])
    with pytest.raises(ValueError, match=f"{name}.*non-finite"):
        trilib.gradients(net, torch.randn(4, 3, dtype=F64), weighted)


def test_non_finite_rnn_and_classifier_weights_are_named():
    rnn = nn.RNN(2, 3, num_layers=2, dtype=F64)
    poison(rnn.weight_hh_l1)
    with pytest.raises(ValueError, match="parameter 'weight_hh_l1'"):
        trilib.gradients(rnn, torch.randn(4, 2, 2, dtype=F64), lambda o: o[0].sum())
    model = trilib.rnn.RNNClassifier(nn.RNN(2, 3, dtype=F64), nn.Linear(3, 2, dtype=F64))
    poison(model.readout.bias)
    with pytest.raises(ValueError, match="parameter 'readout.bias'"):
        trilib.gradients(model, torch.randn(4, 2, 2, dtype=F64), lambda o: o.sum())
    with pytest.raises(ValueError, match="parameter 'readout.bias'"):
        trilib.rnn.classifier_problem(model, torch.randn(4, 2, 2, dtype=F64), lambda o: o.sum())


def test_non_finite_tensor_attribute_in_a_captured_module_is_named():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, dtype=F64)
            self.scale = torch.tensor([1.0, float("inf"), 2.0], dtype=F64)   # not a buffer

        def forward(self, x):
            return self.fc(x) * self.scale

    with pytest.raises(ValueError, match="tensor attribute .*non-finite"):
        trilib.gradients(Scaled(), torch.randn(2, 3, dtype=F64), weighted)


# -- #3: sample mixing is found structurally, whatever the shapes ---------------------------------------
class Mix(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, h):
        if self.op == "center":
            return h - h.mean(0)
        if self.op == "flip":
            return h.flip(0) * h
        if self.op == "roll":
            return torch.roll(h, 1, 0) + h
        if self.op == "cumsum":
            return torch.cumsum(h, 0)
        return h.softmax(1) * h                     # per sample: must pass


@pytest.mark.parametrize("op,name", [("center", "mean"), ("flip", "flip"), ("roll", "roll"),
                                     ("cumsum", "cumsum")])
@pytest.mark.parametrize("method", ["sequential", "level_schedule", "doubling", "jacobi"])
def test_sample_mixing_with_batch_equal_to_width_raises(op, name, method):
    net = nn.Sequential(nn.Linear(3, 4), Mix(op)).to(F64)
    x = torch.randn(4, 3, dtype=F64)              # batch 4 = width 4: shapes cannot tell
    with pytest.raises(trilib.UnsupportedLayerError, match=f"operation {name} .* mixes samples"):
        trilib.gradients(net, x, lambda o: o.square().sum(), method=method)


def test_per_sample_operations_pass_the_probe():
    net = nn.Sequential(nn.Linear(3, 4), Mix("softmax"), nn.LayerNorm(4)).to(F64)
    x = torch.randn(4, 3, dtype=F64)
    ref = autograd_grads(net, x, weighted)
    for m in trilib.methods(trilib.backward_system(net, x, weighted)):
        assert grad_error(trilib.gradients(net, x, weighted, method=m), ref) <= TOL[F64], m


# -- #4: loss terms that do not pass through the output are kept ------------------------------------
def decay(params):
    """A loss with weight decay written inside it: terms that never pass through the output."""
    return lambda o: (weighted(o[0] if isinstance(o, tuple) else o)
                      + 0.1 * sum(p.square().sum() for p in params))


@pytest.mark.parametrize("kind", ["fnn", "graph", "rnn", "classifier"])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_weight_decay_inside_loss_fn_is_kept(kind, dtype):
    torch.manual_seed(0)
    if kind == "fnn":
        model, x = trilib.nets.mlp([3, 5, 2], seed=0, dtype=dtype), torch.randn(4, 3, dtype=dtype)
        params = [model[0].weight]
    elif kind == "graph":
        model, x = G.resnet_mlp(3, 2, seed=0, dtype=dtype), torch.randn(4, 3, dtype=dtype)
        params = [model[1].fc1.weight, model[0].fc2.bias]
    elif kind == "rnn":
        model, x = nn.RNN(3, 4, num_layers=2, dtype=dtype), torch.randn(5, 2, 3, dtype=dtype)
        params = [model.weight_hh_l1, model.bias_ih_l0]
    else:
        model = trilib.rnn.RNNClassifier(nn.RNN(3, 4, dtype=dtype), nn.Linear(4, 2, dtype=dtype))
        x, params = torch.randn(5, 2, 3, dtype=dtype), [model.readout.weight, model.rnn.weight_ih_l0]
    loss_fn = decay(params)
    ref = autograd_grads(model, x, loss_fn)
    for method in trilib.methods(trilib.backward_system(model, x, loss_fn)):
        assert grad_error(trilib.gradients(model, x, loss_fn, method=method), ref) <= TOL[dtype], method


# -- #5: RNN input and memory ----------------------------------------------------------------------
@pytest.mark.parametrize("inputs", [[], (), [torch.randn(3, 2, 2)] * 3])
def test_rnn_input_sequence_of_wrong_length(inputs):
    match = r"x must be a tensor .* or a pair \(x, h0\), got a (list|tuple) of length"
    with pytest.raises(ValueError, match=match):
        trilib.gradients(nn.RNN(2, 3), inputs, lambda o: o[0].sum())


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_nested_checks_memory_before_allocating_for_every_k(monkeypatch, layers):
    rnn = nn.RNN(3, 48, num_layers=layers)
    x = torch.randn(200, 16, 3)
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", 16 << 20)
    with pytest.raises(trilib.MemoryLimitError, match=rf"method 'nested' on a k={layers} x τ=200 grid"):
        trilib.gradients(rnn, x, lambda o: o[0].square().sum(), method="nested")
    trilib.gradients(rnn, x[:8, :2], lambda o: o[0].square().sum(), method="nested")    # small: fine


# -- #6: defaults that used to fail --------------------------------------------------------------------
def test_block_jacobi_on_one_layer_and_memory_limit_on_assignment():
    net = trilib.nets.mlp([3, 2], seed=0, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    assert trilib.compare_to_autograd(net, x, weighted, method="block_jacobi") <= TOL[F64]
    old = trilib.config.memory_limit_bytes
    with pytest.raises(TypeError, match="memory_limit_bytes must be a positive int"):
        trilib.config.memory_limit_bytes = "4GB"
    with pytest.raises(ValueError, match="memory_limit_bytes must be a positive int"):
        trilib.config.memory_limit_bytes = -1
    assert trilib.config.memory_limit_bytes == old
    try:
        trilib.config.memory_limit_bytes = None                  # no limit
        assert trilib.compare_to_autograd(net, x, weighted, method="blelloch") <= TOL[F64]
    finally:
        trilib.config.memory_limit_bytes = old
    with pytest.raises(AttributeError, match="no setting 'memory_limit'"):
        trilib.config.memory_limit = 5


def test_finite_check_of_many_parameters_names_the_offender_and_passes_finite_overflow():
    from trilib._checks import check_finite_named

    named = [("parameter", f"{i}.weight", torch.ones(8, 8)) for i in range(300)]
    named += [("buffer", "steps", torch.tensor(3)), ("parameter", "big", torch.full((4,), 3e38)),
              ("parameter", "f64", torch.ones(8, 8, dtype=torch.float64))]
    check_finite_named(named)                       # mixed dtypes and an overflowing sum: finite
    named[150][2][3, 4] = float("nan")
    with pytest.raises(ValueError, match="parameter '150.weight' of the model contains 1 non-finite"):
        check_finite_named(named)
