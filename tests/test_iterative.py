"""Iterative solvers (issue 4): Jacobi, block Jacobi, Gauss–Seidel and Newton on linear systems,
against torch.linalg.solve_triangular on the dense matrix and torch.autograd."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import cat_blocks, deep_tanh_float32, dense_solution, linear_stack, random_system, rel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import trilib
from trilib._autograd import ELEMENTWISE
from trilib.solvers._sweeps import ConvergenceError, ConvergenceWarning, exact_count, fused_norms, slabs

F64 = torch.float64
LINEAR_METHODS = trilib.methods(trilib.BlockBidiagonalSystem, family="iterative")


stack = partial(linear_stack, widths=(3, 5, 4, 6, 4, 2))


def weighted_loss(out):
    return (out.sin() * torch.arange(1, out.shape[1] + 1, dtype=out.dtype)).sum()


OPTIONS = [("jacobi", {}), ("block_jacobi", {"p": 1}), ("block_jacobi", {"p": 2}), ("block_jacobi", {"p": 3}),
           ("block_jacobi", {"p": 5}), ("gauss_seidel", {}), ("gauss_seidel", {"order": "reverse"}),
           ("newton", {"linear_method": "sequential"})]


def sweep_bound(method, options, k):
    if method == "block_jacobi":
        return options["p"]
    if method == "gauss_seidel":
        return 1 if options.get("order", "dependency") == "dependency" else k
    return k


# -- exact within the sweep bound, on every activation -------------------------------------------
@pytest.mark.parametrize("act", [None, *ELEMENTWISE], ids=lambda a: "linear" if a is None else a.__name__)
def test_backward_exact_within_bound_every_activation(act):
    net = stack(act)
    x = torch.randn(4, 3, dtype=F64)
    U = trilib.backward_system(net, x, weighted_loss)
    oracle = dense_solution(U)
    for method, options in OPTIONS:
        v, trace = trilib.solve(U, method, return_trace=True, **options)
        assert trace.steps <= sweep_bound(method, options, U.k), (method, options)
        assert len(trace.residuals) == trace.steps
        assert trace.info["converged"]
        assert trace.residuals[-1] <= 1e-14
        assert rel(cat_blocks(v), oracle) <= 1e-12, (method, options)


@pytest.mark.parametrize("act", [None, *ELEMENTWISE], ids=lambda a: "linear" if a is None else a.__name__)
def test_gradients_equal_autograd_every_activation(act):
    net = stack(act, seed=1)
    x = torch.randn(4, 3, dtype=F64)
    net.zero_grad()
    weighted_loss(net(x)).backward()
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}
    for method, options in OPTIONS:
        grads = trilib.gradients(net, x, weighted_loss, method=method, **options)
        for n, g in grads.items():
            assert torch.allclose(g, expected[n], rtol=1e-12, atol=1e-13), (method, options, n)


def test_newton_default_linear_method_on_linear_systems():
    U = random_system([3, 4, 2, 5, 3], upper=True)
    v, trace = trilib.solve(U, "newton", return_trace=True)
    assert trace.info["linear_traces"][0].method == "recursive_doubling"
    assert rel(cat_blocks(v), dense_solution(U)) <= 1e-12
    assert trace.info["stopped"] in ("fixed point", "rounding level") and trace.steps < U.k


@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("method,options", OPTIONS)
def test_random_upper_and_lower_systems(upper, method, options):
    U = random_system([2, 5, 1, 4, 3, 3, 6], upper=upper)
    v, trace = trilib.solve(U, method, return_trace=True, **options)
    assert trace.steps <= sweep_bound(method, options, U.k)
    assert rel(cat_blocks(v), dense_solution(U)) <= 1e-12


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=9), upper=st.booleans(),
       p=st.integers(1, 9), seed=st.integers(0, 100))
def test_block_jacobi_exact_after_p_sweeps_hypothesis(sizes, upper, p, seed):
    U = random_system(sizes, upper, seed=seed)
    p = min(p, U.k)
    v, trace = trilib.solve(U, "block_jacobi", p=p, return_trace=True)
    assert trace.steps <= p and trace.residuals[-1] <= 1e-14
    assert rel(cat_blocks(v), dense_solution(U)) <= 1e-12
    v, trace = trilib.solve(U, "jacobi", tol=0.0, return_trace=True)
    assert trace.steps <= U.k and trace.residuals[-1] == 0.0


def test_jacobi_needs_exactly_k_sweeps_and_error_reaches_zero():
    # r only in the last row of an upper system: row l becomes exact at sweep k - l + 1
    U = random_system([3] * 6, upper=True)
    rhs = [torch.zeros_like(r) for r in U.rhs[:-1]] + [U.rhs[-1]]
    U = U.with_rhs(rhs)
    ref = list(dense_solution(U).split(3, dim=1))
    v, trace = trilib.solve(U, "jacobi", tol=0.0, reference=ref, return_trace=True)
    assert trace.steps == 6
    assert len(trace.errors) == 6 and trace.errors[-1] <= 1e-15 and trace.errors[0] > 0.01
    assert all(r > 0 for r in trace.residuals[:-1])


def test_block_jacobi_records_blocks_and_steps_per_sweep():
    U = random_system([2] * 7, upper=False)
    _, trace = trilib.solve(U, "block_jacobi", p=3, return_trace=True)
    assert trace.info["blocks"] == [[0, 1, 2], [3, 4], [5, 6]]
    assert trace.info["steps_per_sweep"] == 3
    assert trace.steps <= 3
    assert all(len(c) == 6 for c in trace.combines)
    assert [list(s) for s in slabs(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_gauss_seidel_reverse_equals_jacobi_iterates():
    U = random_system([3, 2, 4, 3, 2], upper=True)
    for sweeps in range(1, 5):
        with pytest.warns(ConvergenceWarning):
            a = trilib.solve(U, "gauss_seidel", order="reverse", max_sweeps=sweeps, tol=0.0)
        with pytest.warns(ConvergenceWarning):
            b = trilib.solve(U, "jacobi", max_sweeps=sweeps, tol=0.0)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_loose_tolerance_stops_early():
    net = trilib.nets.mlp([4] + [6] * 12, activation="tanh", seed=0, weight_scale=0.2, dtype=F64)
    U = trilib.backward_system(net, torch.randn(3, 4, dtype=F64), weighted_loss)
    _, trace = trilib.solve(U, "jacobi", tol=1e-3, return_trace=True)
    assert trace.steps < U.k and trace.residuals[-1] <= 1e-3 and trace.info["converged"]


# -- non-convergence is reported -----------------------------------------------------------------
@pytest.mark.parametrize("method,options", [("jacobi", {"max_sweeps": 2}),
                                            ("block_jacobi", {"p": 4, "max_sweeps": 2}),
                                            ("gauss_seidel", {"order": "reverse", "max_sweeps": 2})])
def test_non_convergence_warns_or_raises_with_residual(method, options):
    U = random_system([3] * 6, upper=True)
    with pytest.warns(ConvergenceWarning, match=r"relative residual \d\.\d+e[-+]\d+ after 2 sweeps"):
        _, trace = trilib.solve(U, method, return_trace=True, **options)
    assert not trace.info["converged"] and trace.steps == 2
    with pytest.raises(ConvergenceError, match="relative residual"):
        trilib.solve(U, method, on_failure="raise", **options)


def test_default_runs_to_the_exact_answer_in_float32():
    net = trilib.nets.mlp([3, 6, 6, 6, 6, 2], seed=0)       # float32: converges, no warning
    U = trilib.backward_system(net, torch.randn(4, 3), lambda o: o.square().sum())
    ref = trilib.solve(U)
    for method, options in OPTIONS:
        v, trace = trilib.solve(U, method, return_trace=True, **options)
        assert trace.info["converged"] and trace.info["stopped"] in ("fixed point", "exact count")
        assert trace.steps <= sweep_bound(method, options, U.k) and v[0].dtype == torch.float32
        assert rel(cat_blocks(v), cat_blocks(ref)) <= 1e-5, (method, options)


def test_tol_bounds_the_residual_not_the_error():
    net, x, lf = deep_tanh_float32()
    U = trilib.backward_system(net, x, lf)
    _, trace = trilib.solve(U, "jacobi", tol=1e-5, return_trace=True)
    assert trace.info["stopped"] == "tol" and trace.steps < U.k and trace.residuals[-1] <= 1e-5
    # early stop: a small residual, a large gradient error (the early layers' errors are still 0)
    assert trilib.compare_to_autograd(net, x, lf, method="jacobi", tol=1e-5) > 1e-2
    _, trace = trilib.solve(U, "jacobi", return_trace=True)
    assert trace.steps == U.k and trace.info["stopped"] in ("fixed point", "exact count")


def test_fixed_point_stops_early_and_equals_the_exact_count_result():
    # r = 0 outside the first two rows of a lower system: the iterate is final after 2 sweeps
    U = random_system([3] * 8, upper=False, seed=3)
    U = U.with_rhs([U.rhs[0], torch.zeros_like(U.rhs[1])] + [torch.zeros_like(r) for r in U.rhs[2:]])
    U = trilib.BlockBidiagonalSystem([torch.zeros_like(m) for m in U.mats[:2]] + list(U.mats[2:]),
                                     U.scales, U.rhs, upper=False)
    v, trace = trilib.solve(U, "jacobi", return_trace=True)
    assert trace.info["stopped"] == "fixed point" and trace.steps < U.k
    w = trilib.solve(U, "jacobi", tol=None, max_sweeps=U.k, initial=v)
    assert all(torch.equal(a, b) for a, b in zip(v, w))
    v2, trace2 = trilib.solve(U, "gauss_seidel", order="reverse", return_trace=True)
    assert trace2.info["stopped"] == "fixed point" and trace2.steps < U.k


def test_tol_zero_reaching_the_exact_count_is_converged_without_warning():
    # issue 10: block Jacobi with tol=0.0 may end with a rounding-level residual after p sweeps
    net = trilib.nets.mlp([4] + [8] * 12, activation="tanh", seed=0, dtype=F64)
    U = trilib.backward_system(net, torch.randn(16, 4, dtype=F64), lambda o: o.square().sum())
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        for method, options in [("block_jacobi", {"p": 4}), ("jacobi", {}),
                                ("gauss_seidel", {"order": "reverse"})]:
            _, trace = trilib.solve(U, method, tol=0.0, return_trace=True, **options)
            assert trace.info["converged"], method
            assert trace.info["stopped"] in ("fixed point", "exact count", "tol"), method


def test_max_sweeps_above_the_exact_count_is_capped():
    U = random_system([3] * 5, upper=True)
    _, trace = trilib.solve(U, "block_jacobi", p=2, max_sweeps=50, return_trace=True)
    assert trace.steps <= 2 and trace.info["exact_count"] == 2


def test_exact_count_of_each_system():
    U = random_system([3] * 5, upper=True)
    assert exact_count(U) == 5
    rnn = nn.RNN(2, 3, num_layers=3, dtype=F64)
    R = trilib.backward_system(rnn, torch.randn(4, 2, 2, dtype=F64), lambda o: o[0].sum())
    assert exact_count(R) == 3 + 4 - 1
    _, trace = trilib.solve(R, "jacobi", return_trace=True)
    assert trace.steps <= 6 and trace.info["converged"]
    G = trilib.backward_system(trilib.graph.inception_mlp(3, 2, seed=0, dtype=F64),
                               torch.randn(2, 3, dtype=F64), lambda o: o.sum())
    assert exact_count(G) == G.depth < G.k


def test_block_jacobi_default_p_is_min_2_k():
    one = random_system([4], upper=True)
    v, trace = trilib.solve(one, "block_jacobi", return_trace=True)
    assert trace.info["p"] == 1 and torch.equal(v[0], one.rhs[0])
    _, trace = trilib.solve(random_system([3] * 5, upper=True), "block_jacobi", return_trace=True)
    assert trace.info["p"] == 2


def test_trace_pairs_are_shared_and_absent_when_not_asked():
    U = random_system([3] * 6, upper=True)
    _, trace = trilib.solve(U, "jacobi", tol=0.0, return_trace=True)
    assert trace.steps == 6 and all(c is trace.combines[0] for c in trace.combines)
    assert trace.combines[0] == [(l, l + 1) for l in range(5)] and trace.work == 6 * 5


def test_fused_norms_one_group_each():
    a = [torch.tensor([[3.0]]), torch.tensor([[0.0, -4.0]])]
    assert fused_norms(a, None, [torch.zeros(1, 2)]) == [5.0, 4.0, 0.0, 0.0, 0.0, 0.0]
    tiny = [torch.full((2, 2), 1e-30)]                 # the float32 2-norm would underflow
    assert fused_norms(tiny)[0] == pytest.approx(2e-30, rel=1e-6)


# -- matrix-free Jacobi on other systems ----------------------------------------------------------
def test_jacobi_on_graph_system():
    graph = trilib.graph
    net = graph.resnet_mlp(width=4, blocks=2, seed=0, dtype=F64)
    x = torch.randn(3, 4, dtype=F64)
    U = trilib.backward_system(net, x, weighted_loss)
    v, trace = trilib.solve(U, "jacobi", return_trace=True)
    assert trace.steps <= U.k and trace.combines[0]
    assert rel(cat_blocks(v), dense_solution(U)) <= 1e-12


def test_jacobi_on_rnn_system():
    rnn = nn.RNN(3, 4, num_layers=2, batch_first=True, dtype=F64)
    x = torch.randn(2, 5, 3, dtype=F64)
    try:
        U = trilib.backward_system(rnn, x, lambda out: out[0].square().sum())
    except TypeError:
        pytest.skip("no RNN system builder")
    v, trace = trilib.solve(U, "jacobi", return_trace=True)
    assert trace.steps <= U.k
    assert rel(cat_blocks(v), dense_solution(U)) <= 1e-12


# -- argument errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("method,options,match", [
    ("block_jacobi", {"p": 0}, "p must be an int in"),
    ("block_jacobi", {"p": 7}, r"p must be an int in \[1, 6\], got 7"),
    ("block_jacobi", {"p": 2.0}, "p must be an int"),
    ("jacobi", {"tol": -1.0}, "tol must be None .* or a number >= 0"),
    ("jacobi", {"tol": "small"}, "tol must be None"),
    ("jacobi", {"tol": float("nan")}, "tol must be None"),
    ("jacobi", {"max_sweeps": 0}, "max_sweeps must be an int >= 1"),
    ("gauss_seidel", {"max_sweeps": True}, "max_sweeps must be an int"),
    ("jacobi", {"on_failure": "ignore"}, "on_failure must be 'warn' or 'raise'"),
    ("gauss_seidel", {"order": "forward"}, "order must be 'dependency' or 'reverse'"),
    ("jacobi", {"reference": [torch.zeros(3, 3)]}, "reference must be a list of k = 6"),
    ("jacobi", {"reference": [torch.zeros(3, 2)] * 6}, "reference block 0 has shape"),
    ("jacobi", {"initial": [torch.zeros(3, 3)] * 5}, "initial must be a list of k = 6"),
    ("newton", {"linear_method": "magic"}, "unknown method 'magic'"),
    ("newton", {"max_iterations": -2}, "max_iterations must be an int >= 1"),
])
def test_option_errors(method, options, match):
    U = random_system([3] * 6, upper=True)
    with pytest.raises(ValueError, match=match):
        trilib.solve(U, method, **options)


def test_unknown_option_is_a_type_error():
    U = random_system([3] * 4, upper=True)
    with pytest.raises(TypeError, match="sweeps"):
        trilib.solve(U, "jacobi", sweeps=3)


def test_methods_registered_for_the_right_systems():
    U = random_system([3] * 4, upper=True)
    assert {"jacobi", "block_jacobi", "gauss_seidel", "newton"} <= set(trilib.methods(U))
    Z = trilib.forward_system(trilib.nets.mlp([3, 4, 4], seed=0), torch.randn(2, 3))
    assert {"jacobi", "newton"} <= set(trilib.methods(Z))
    assert "block_jacobi" not in trilib.methods(Z)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method,options", OPTIONS)
def test_cuda_matches_cpu(method, options):
    U = random_system([3, 4, 2, 5, 3, 3], upper=True)
    cpu = trilib.solve(U, method, **options)
    Ug = trilib.BlockBidiagonalSystem([m.cuda() for m in U.mats], [d.cuda() for d in U.scales],
                                      [r.cuda() for r in U.rhs], upper=True)
    gpu = trilib.solve(Ug, method, **options)
    assert gpu[0].is_cuda
    assert rel(cat_blocks(gpu).cpu(), cat_blocks(cpu)) <= 1e-12
