"""trilib.forward (issue 4): the forward pass as a solve, against model(x) itself."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import linear_stack, rel

import trilib
from trilib import ConvergenceError, ConvergenceWarning
from trilib._autograd import ELEMENTWISE

F64 = torch.float64
ACTS = [None, *ELEMENTWISE]


stack = partial(linear_stack, widths=(3, 6, 5, 6, 4, 6, 2))


NEWTON = [{"linear_method": "sequential"}, {}]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: "linear" if a is None else a.__name__)
@pytest.mark.parametrize("last", [False, True])
def test_every_method_returns_model_output(act, last):
    net = stack(act, last=last)
    x = torch.randn(5, 3, dtype=F64)
    with torch.no_grad():
        expected = net(x)
    k = 6
    out = trilib.forward(net, x)
    assert out.shape == expected.shape and rel(out, expected) <= 1e-12
    out, trace = trilib.forward(net, x, "jacobi", return_trace=True)
    assert rel(out, expected) <= 1e-12
    assert trace.steps <= k and len(trace.residuals) == trace.steps and trace.info["converged"]
    for options in NEWTON:
        out, trace = trilib.forward(net, x, "newton", return_trace=True, **options)
        assert rel(out, expected) <= 1e-12, options
        assert trace.steps <= k and trace.info["converged"]
        assert trace.info["linear_steps"] == sum(t.steps for t in trace.info["linear_traces"])


def test_newton_default_is_recursive_doubling():
    net = trilib.nets.mlp([3, 8, 8, 8, 8, 8, 8, 8, 8, 2], activation="tanh", seed=0, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    out, trace = trilib.forward(net, x, "newton", return_trace=True)
    assert {t.method for t in trace.info["linear_traces"]} == {"recursive_doubling"}
    assert all(t.steps == 4 for t in trace.info["linear_traces"])       # ⌈log2 9⌉
    assert rel(out, net(x).detach()) <= 1e-12


def test_nonlinear_jacobi_exact_after_k_sweeps_and_errors_recorded():
    net = trilib.nets.mlp([3] + [5] * 8, activation="tanh", seed=2, weight_scale=2.0, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    Z = trilib.forward_system(net, x)
    ref = trilib.solve(Z)
    z, trace = trilib.solve(Z, "jacobi", tol=0.0, reference=ref, return_trace=True)
    assert trace.steps == Z.k and trace.residuals[-1] == 0.0 and trace.errors[-1] == 0.0
    assert trace.errors[0] > 1e-3
    assert all(torch.equal(a, b) for a, b in zip(z, ref))


def test_newton_converges_in_few_iterations():
    net = trilib.nets.mlp([3] + [8] * 16, activation="tanh", seed=0, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    out, trace = trilib.forward(net, x, "newton", linear_method="sequential", return_trace=True)
    assert trace.steps < 16 / 2
    assert rel(out, net(x).detach()) <= 1e-12
    # quadratic convergence: the last decrease is much larger than the first
    r = trace.residuals
    assert r[-1] <= 1e-14 and r[-2] / max(r[-1], 1e-300) > r[0] / r[1]


def test_newton_float32_converges_without_warning():
    net = trilib.nets.mlp([3, 8, 8, 8, 2], activation="gelu", seed=0)
    x = torch.randn(4, 3)
    out, trace = trilib.forward(net, x, "newton", linear_method="sequential", return_trace=True)
    assert trace.info["converged"] and out.dtype == torch.float32
    assert rel(out, net(x).detach()) <= 1e-5


def test_non_convergence_warns_or_raises():
    net = trilib.nets.mlp([3, 6, 6, 6, 6, 2], activation="tanh", seed=0, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    match = r"jacobi did not converge: relative residual .* after 2 sweeps"
    with pytest.warns(ConvergenceWarning, match=match):
        trilib.forward(net, x, "jacobi", max_sweeps=2)
    with pytest.raises(ConvergenceError, match="relative residual"):
        trilib.forward(net, x, "jacobi", max_sweeps=2, on_failure="raise")
    with pytest.warns(ConvergenceWarning, match="after 1 iterations .max_iterations=1."):
        trilib.forward(net, x, "newton", linear_method="sequential", max_iterations=1)


def test_return_trace_false_returns_tensor_and_trace_has_method():
    net = trilib.nets.mlp([3, 4, 2], activation="relu", seed=0, dtype=F64)
    x = torch.randn(2, 3, dtype=F64)
    assert isinstance(trilib.forward(net, x, "jacobi"), torch.Tensor)
    _, trace = trilib.forward(net, x, "jacobi", return_trace=True)
    assert trace.method == "jacobi"


def test_errors():
    net = trilib.nets.mlp([3, 4, 2], activation="tanh", seed=0, dtype=F64)
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        trilib.forward(net, x, "magic")
    with pytest.raises(ValueError, match="method 'block_jacobi' does not apply to the forward system"):
        trilib.forward(net, x, "block_jacobi")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        trilib.forward(lambda t: t, x)
    with pytest.raises(ValueError, match="x has 5 features"):
        trilib.forward(net, torch.randn(2, 5, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        trilib.forward(net, torch.randn(2, 3))


def test_linear_stack_uses_direct_methods_too():
    net = stack(None)
    x = torch.randn(3, 3, dtype=F64)
    expected = net(x).detach()
    for method in trilib.methods(trilib.forward_system(net, x)):
        assert rel(trilib.forward(net, x, method), expected) <= 1e-12, method


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["sequential", "jacobi", "newton"])
def test_cuda(method):
    net = trilib.nets.mlp([3, 8, 8, 8, 2], activation="tanh", seed=0, dtype=F64, device="cuda")
    x = torch.randn(4, 3, dtype=F64, device="cuda")
    out = trilib.forward(net, x, method)
    assert out.is_cuda and rel(out, net(x).detach()) <= 1e-12
