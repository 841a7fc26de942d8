"""Gated recurrent cells and the parallel-in-time forward pass (issue 14, docs/theory.md §7):
gradients of nn.GRU/nn.LSTM against torch.autograd, Newton over time against module(x), the
cells' Jacobians against torch.func.jacrev, the grid system against solve_triangular, bad input."""

import warnings

import pytest
import torch
from conftest import autograd_grads, rel
from conftest import make_recurrent as make
from conftest import module_outputs as flat
from conftest import recurrent_loss as loss_fn
from hypothesis import given, settings
from hypothesis import strategies as st
from test_architecture import FOUNDATION, MODULES, imports
from torch import nn
from torch.func import jacrev, vmap

import trilib
from trilib import ConvergenceWarning, UnsupportedLayerError
from trilib.gated import GatedClassifier, RNNCell
from trilib.solvers.newton_in_time import diagonal_scan
from trilib.systems import GridSystem, RecurrentForwardSystem

DT = torch.float64
GATED = {"GRU": nn.GRU, "LSTM": nn.LSTM}


def max_rel(grads, ref):
    assert list(grads) == list(ref)
    return max(rel(grads[name], ref[name]) for name in ref)


def call(module, inputs):
    with torch.no_grad():
        return module(*(inputs if isinstance(inputs, tuple) else (inputs,)))


# -- the cells ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tanh", "relu", "GRU", "LSTM"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch_and_jacrev(kind, bias):
    torch.manual_seed(0)
    n_in, n, b = 3, 5, 4
    if kind in ("tanh", "relu"):
        ref, make_cell = nn.RNNCell(n_in, n, bias=bias, nonlinearity=kind, dtype=DT), RNNCell
    else:
        ref = getattr(nn, f"{kind}Cell")(n_in, n, bias=bias, dtype=DT)
        make_cell = getattr(trilib.gated, f"{kind}Cell")
    w = [p.detach() for p in (ref.weight_ih, ref.weight_hh)] + (
        [ref.bias_ih.detach(), ref.bias_hh.detach()] if bias else [None, None])
    cell = make_cell(*w, nonlinearity=kind) if make_cell is RNNCell else make_cell(*w)
    x, s = torch.randn(b, n_in, dtype=DT), torch.randn(b, cell.state_size, dtype=DT)
    with torch.no_grad():
        expected = torch.cat(ref(x, (s[:, :n], s[:, n:])), -1) if kind == "LSTM" else ref(x, s)
    xp = cell.project(x)
    assert rel(cell.step(xp, s), expected) <= 1e-14
    jx, js = vmap(jacrev(lambda xi, si: cell.step(cell.project(xi), si), argnums=(0, 1)))(x, s)
    assert rel(cell.state_jacobian(xp, s), js) <= 1e-14
    assert rel(cell.state_jacobian(xp, s, diagonal=True), js.diagonal(dim1=-2, dim2=-1)) <= 1e-14
    assert rel(cell.input_jacobian(xp, s), jx) <= 1e-14


# -- gradients against autograd -------------------------------------------------------------------

def check_gradients(kind, k, tau, n_in, n, batch, batch_first, bias, with_h0, seed):
    module, inputs = make(kind, k, tau, n_in, n, batch, batch_first, bias, with_h0, seed)
    ref = autograd_grads(module, inputs, loss_fn)
    system = trilib.backward_system(module, inputs, loss_fn)
    assert isinstance(system, GridSystem) and system.state_size == (2 * n if kind == "LSTM" else n)
    listed = trilib.methods(system)
    assert {"sequential", "wavefront", "nested", "jacobi"} <= set(listed)
    for method in listed:
        assert max_rel(trilib.gradients(module, inputs, loss_fn, method=method), ref) <= 1e-10, method
    # the states trilib records are module(x)'s, and Newton in time reproduces them
    expected = flat(call(module, inputs))
    rec = trilib.gated.record_forward(module, inputs)
    assert all(rel(a, b) <= 1e-12 for a, b in zip(rec.outputs(), expected))
    out, trace = trilib.forward(module, inputs, "newton", return_trace=True)
    assert all(rel(a, b) <= 1e-10 for a, b in zip(flat(out), expected))
    assert all(1 <= i <= tau for i in trace.info["iterations"]) and trace.info["converged"]


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["GRU", "LSTM"]), k=st.integers(1, 3),
       tau=st.one_of(st.integers(1, 12), st.integers(13, 64)), n_in=st.integers(1, 3), n=st.integers(1, 4),
       batch=st.integers(1, 3), batch_first=st.booleans(), bias=st.booleans(), with_h0=st.booleans(),
       seed=st.integers(0, 99))
def test_gradients_and_forward_match_autograd(kind, k, tau, n_in, n, batch, batch_first, bias, with_h0, seed):
    check_gradients(kind, k, tau, n_in, n, batch, batch_first, bias, with_h0, seed)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("k,tau", [(1, 1), (3, 1), (1, 64), (3, 64)])
def test_gradients_at_the_edges(kind, k, tau):
    check_gradients(kind, k, tau, 2, 3, 2, True, True, True, 0)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_loss_on_one_output_and_unbatched_input(kind):
    module, _ = make(kind, k=2)
    x = torch.randn(6, 3, dtype=DT)                       # unbatched (τ, n_in)
    h0 = torch.randn(2, 4, dtype=DT)
    inputs = (x, (h0, h0.cos())) if kind == "LSTM" else (x, h0)
    for fn in (lambda o: o[0].square().mean(), lambda o: (o[1][1] if kind == "LSTM" else o[1]).sum()):
        ref = autograd_grads(module, inputs, fn)
        for method in ("sequential", "nested"):
            assert max_rel(trilib.gradients(module, inputs, fn, method=method), ref) <= 1e-10
    out = trilib.forward(module, inputs, "newton")
    assert all(rel(a, b) <= 1e-12 for a, b in zip(flat(out), flat(call(module, inputs))))


def test_loss_fn_receives_module_output():
    module, (x, (h0, c0)) = make("LSTM", batch_first=True, with_h0=True)
    seen = []
    trilib.gradients(module, (x, (h0, c0)), lambda out: seen.append(out) or out[0].sum())
    output, (h_n, c_n) = call(module, (x, (h0, c0)))
    got_out, got_h, got_c = (t.detach() for t in flat(seen[0]))
    assert rel(got_out, output) <= 1e-14 and rel(got_h, h_n) <= 1e-14 and rel(got_c, c_n) <= 1e-14


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("order", ["layer", "time"])
def test_grid_system_against_solve_triangular(kind, order):
    module, inputs = make(kind, k=3, tau=4, n=3, with_h0=True)
    system = trilib.backward_system(module, inputs, loss_fn).with_order(order)
    for method in trilib.methods(system):
        v = trilib.solve(system, method=method)
        for sample in range(2):
            a = system.to_dense(sample)
            assert torch.equal(a, torch.triu(a))
            ref = torch.linalg.solve_triangular(a, system.rhs_dense(sample).unsqueeze(-1), upper=True)
            assert rel(torch.cat([b[sample] for b in v]), ref.squeeze(-1)) <= 1e-12, method
        u = [torch.randn_like(r) for r in system.rhs]
        dense = torch.eye(system.offsets[-1], dtype=DT) - system.to_dense(1)
        nu = torch.cat([b[1] for b in system.apply_offdiagonal(u)])
        assert rel(nu, dense @ torch.cat([b[1] for b in u])) <= 1e-13


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_backward_system_is_the_transposed_forward_jacobian(kind):
    module, inputs = make(kind, k=2, tau=4, n=3, with_h0=True)
    forward = trilib.forward_system(module, inputs)
    backward = trilib.backward_system(module, inputs, loss_fn)
    assert isinstance(forward, RecurrentForwardSystem) and not forward.upper
    for sample in range(2):
        lower = forward.to_dense(sample)
        assert torch.equal(lower, torch.tril(lower))
        assert rel(backward.to_dense(sample), lower.t()) <= 1e-14


def test_time_system_and_direct_methods_for_one_layer():
    module, inputs = make("LSTM", k=1, tau=9, n=2, with_h0=True)
    system = trilib.backward_system(module, inputs, loss_fn)
    bidiagonal = system.time_system()
    assert torch.equal(bidiagonal.to_dense(1), system.to_dense(1))
    ref = trilib.solve(system)
    for method in trilib.methods(bidiagonal, family="direct"):
        assert rel(trilib.solve(bidiagonal, method).stacked(), ref.stacked()) <= 1e-12, method
    two, x2 = make("GRU", k=2, tau=4, n=3)
    grid = trilib.backward_system(two, x2, loss_fn)
    v = grid.to_grid(trilib.solve(grid))
    assert rel(trilib.solve(grid.time_system(0, incoming=v[1])).stacked(), v[0]) <= 1e-12


def test_nested_steps_with_formed_blocks():
    module, x = make("GRU", k=4, tau=8, n=2, batch=1)
    rnn, _ = make("RNN", k=4, tau=8, n=2, batch=1)
    steps = [trilib.solve(trilib.backward_system(m, x, loss_fn), "nested", return_trace=True)[1].steps
             for m in (module, rnn)]
    gated_steps, rnn_steps = steps
    assert gated_steps == rnn_steps - 1                 # no step 0: a gated grid's blocks come formed


# -- the forward pass, parallel in time ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tanh", "relu", "GRU", "LSTM"])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("k,tau,batch_first,with_h0", [(1, 1, False, False), (1, 33, True, True),
                                                      (3, 20, False, True)])
def test_newton_forward_equals_module(kind, jacobian, k, tau, batch_first, with_h0):
    rnn_kind = "RNN" if kind in ("tanh", "relu") else kind
    module, inputs = make(rnn_kind, k=k, tau=tau, batch_first=batch_first, with_h0=with_h0, nonlinearity=kind)
    expected = flat(call(module, inputs))
    out, trace = trilib.forward(module, inputs, "newton", return_trace=True, jacobian=jacobian)
    assert type(out) is tuple and all(rel(a, b) <= 1e-10 for a, b in zip(flat(out), expected))
    assert len(trace.info["iterations"]) == k and all(i <= tau for i in trace.info["iterations"])
    assert trace.steps == sum(trace.info["iterations"]) == len(trace.residuals)
    for method in ("sequential", "jacobi"):
        out = trilib.forward(module, inputs, method)
        assert all(rel(a, b) <= 1e-12 for a, b in zip(flat(out), expected)), method


def test_newton_trace_and_few_iterations_when_contracting():
    module, x = make("GRU", k=2, tau=64, n=8, batch=4)
    _, trace = trilib.forward(module, x, "newton", return_trace=True)
    assert max(trace.info["iterations"]) <= 8                      # quadratic convergence, not τ
    inner = trace.info["linear_traces"]
    assert {t.method for t in inner} == {"recursive_doubling"} and all(t.steps <= 6 for t in inner)
    assert trace.info["linear_steps"] == sum(t.steps for t in inner)
    _, seq = trilib.forward(module, x, "sequential", return_trace=True)
    assert seq.steps == 2 * 64
    _, blelloch = trilib.forward(module, x, "newton", return_trace=True, linear_method="blelloch")
    assert blelloch.info["iterations"] == trace.info["iterations"]


def test_newton_exact_after_tau_iterations_on_a_hard_case():
    tau = 48
    module, x = make("GRU", k=1, tau=tau, n=6, batch=3, scale=5.0)       # strongly nonlinear
    expected = flat(call(module, x))
    out, trace = trilib.forward(module, x, "newton", return_trace=True, tol=0, max_iterations=tau)
    assert trace.info["converged"] and trace.info["iterations"][0] <= tau
    assert trace.residuals[-1] == 0.0
    assert all(rel(a, b) <= 1e-10 for a, b in zip(flat(out), expected))
    easy, _ = make("GRU", k=1, tau=tau, n=6, batch=3)
    _, easy_trace = trilib.forward(easy, x, "newton", return_trace=True)
    assert easy_trace.info["iterations"][0] < trace.info["iterations"][0]


def test_row_t_is_solved_after_t_plus_one_iterations():
    tau = 12
    module, x = make("GRU", k=1, tau=tau, n=4, batch=2, scale=5.0)
    system = trilib.forward_system(module, x)
    with pytest.warns(ConvergenceWarning, match="max_iterations=1"):
        trilib.solve(system, "newton", tol=0, max_iterations=1)
    for i in range(1, tau + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            s, trace = trilib.solve(system, "newton", tol=0, max_iterations=i, return_trace=True)
        residual = s.stacked() - torch.stack(system.apply_offdiagonal(s))   # F(s), batched as Newton
        assert torch.all(residual[:i] == 0), i                                  # rows 0..i-1 exact
        solved = trace.info["solved_rows"]
        assert len(solved) <= i and all(r >= j for j, r in enumerate(solved, 1))
        unsolved = (residual != 0).flatten(1).any(1)
        assert solved[-1] == (int(unsolved.long().argmax()) if unsolved.any() else tau)
    assert trace.info["converged"] and solved[-1] == tau


def test_overflowing_iterates_fall_back():
    # tanh RNN, huge recurrent weights, no input: at the zero start every Jacobian is W_hh, so
    # the scan's products overflow in float32, while the solution (saturated states) is finite.
    module, (x, h0) = make("RNN", k=1, tau=64, n=8, batch=3, bias=False, with_h0=True, dtype=torch.float32)
    with torch.no_grad():
        module.weight_hh_l0.mul_(100)
    x, h0 = torch.zeros_like(x), 0.01 * h0
    expected = flat(call(module, (x, h0)))
    for fallback in ("jacobi", "sequential"):
        out, trace = trilib.forward(module, (x, h0), "newton", return_trace=True, fallback=fallback)
        assert trace.info["fallbacks"] >= 1 and trace.info["iterations"][0] <= 64
        assert all(rel(a, b) <= 1e-6 for a, b in zip(flat(out), expected)), fallback
    assert trace.info["sequential_steps"] > 0


def test_diagonal_scan_against_loop():
    torch.manual_seed(0)
    a, b = torch.randn(9, 3, 4, dtype=DT), torch.randn(9, 3, 4, dtype=DT)
    ref, prev = torch.empty_like(b), torch.zeros_like(b[0])
    for t in range(9):
        prev = ref[t] = b[t] + (a[t] * prev if t else 0)
    assert rel(diagonal_scan(a, b), ref) <= 1e-14


def test_classifier_with_newton_forward_trains_like_autograd():
    x, y = trilib.data.digits("train", as_sequence=True, dtype=DT)
    x, y = x[:24, ::8], y[:24]                                    # τ = 8
    fn = nn.functional.cross_entropy
    losses = {}
    for method, forward in (("autograd", "sequential"), ("nested", "newton")):
        torch.manual_seed(0)
        model = GatedClassifier(nn.GRU(1, 6, num_layers=2, batch_first=True, dtype=DT),
                                nn.Linear(6, 10, dtype=DT), forward_method=forward)
        ref = autograd_grads(model, x, lambda z: fn(z, y))
        assert max_rel(trilib.gradients(model, x, lambda z: fn(z, y), method="nested"), ref) <= 1e-10
        losses[method] = trilib.training.fit(model, fn, (x, y), method=method, steps=3, lr=0.1,
                                             progress=False)
    assert all(abs(a - b) <= 1e-10 * a for a, b in zip(losses["autograd"], losses["nested"]))
    assert len(model.forward_iterations) == 1 + 3 and all(2 <= i <= 16 for i in model.forward_iterations)


# -- bad input ------------------------------------------------------------------------------------

def test_unsupported_modules_and_inputs_raise_clearly():
    gru, x = make("GRU")
    with pytest.raises(UnsupportedLayerError, match="bidirectional=True"):
        trilib.backward_system(nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=DT), x, loss_fn)
    with pytest.raises(UnsupportedLayerError, match="bidirectional=True"):
        trilib.forward(nn.RNN(3, 4, bidirectional=True, dtype=DT), x, "newton")
    with pytest.raises(UnsupportedLayerError, match="proj_size=2"):
        trilib.backward_system(nn.LSTM(3, 4, proj_size=2, dtype=DT), x, loss_fn)
    drop = nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=DT)
    with pytest.raises(UnsupportedLayerError, match="dropout"):
        trilib.backward_system(drop, x, loss_fn)
    assert isinstance(trilib.backward_system(drop.eval(), x, loss_fn), GridSystem)
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 2, 4\), expected \(2, 2, 4\)"):
        trilib.backward_system(gru, (x, torch.zeros(1, 2, 4, dtype=DT)), loss_fn)
    lstm, _ = make("LSTM")
    with pytest.raises(TypeError, match=r"pair \(h0, c0\)"):
        trilib.backward_system(lstm, (x, torch.zeros(2, 2, 4, dtype=DT)), loss_fn)
    with pytest.raises(ValueError, match="c0 has shape"):
        trilib.forward(lstm, (x, (torch.zeros(2, 2, 4, dtype=DT), torch.zeros(2, 4, dtype=DT))), "newton")
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        trilib.backward_system(gru, x.float(), loss_fn)
    with pytest.raises(TypeError, match="h0 has dtype torch.float32"):
        trilib.forward(gru, (x, torch.zeros(2, 2, 4)), "newton")
    with pytest.raises(ValueError, match="x has 5 features but the GRU has input_size=3"):
        trilib.forward(gru, torch.randn(3, 2, 5, dtype=DT), "newton")
    with pytest.raises(ValueError, match="empty"):
        trilib.backward_system(gru, x[:0], loss_fn)
    with pytest.raises(ValueError, match="non-finite"):
        trilib.forward(gru, x * float("nan"), "newton")
    with pytest.raises(TypeError, match="PackedSequence"):
        trilib.backward_system(gru, nn.utils.rnn.pack_sequence([torch.randn(3, 3, dtype=DT)]), loss_fn)
    with pytest.raises(TypeError, match="GRU or LSTM"):
        trilib.gated.backward_problem(nn.RNN(3, 4), x, loss_fn)


def test_bad_options_and_systems_raise_clearly():
    gru, x = make("GRU")
    for options, message in [({"jacobian": "exact"}, "jacobian must be one of"),
                             ({"jacobian": "diagonal", "linear_method": "blelloch"}, "element-wise"),
                             ({"linear_method": "wavefront"}, "does not solve a BlockBidiagonalSystem"),
                             ({"linear_method": "magic"}, "unknown method 'magic'"),
                             ({"tol": -1.0}, "tol must be"), ({"max_iterations": 0}, "max_iterations must"),
                             ({"fallback": "pray"}, "fallback must be"),
                             ({"on_failure": "ignore"}, "on_failure")]:
        with pytest.raises(ValueError, match=message):
            trilib.forward(gru, x, "newton", **options)
    with pytest.raises(ValueError, match="does not apply"):
        trilib.forward(gru, x, "blelloch")
    with pytest.raises(trilib.ConvergenceError, match="Newton in time is exact after τ = 5"):
        trilib.forward(make("GRU", scale=5.0)[0], x, "newton", tol=0, max_iterations=1, on_failure="raise")
    with pytest.raises(ValueError, match=r"time has shape"):
        GridSystem(torch.zeros(2, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2))
    with pytest.raises(ValueError, match=r"depth has shape"):
        GridSystem(torch.zeros(2, 2, 1, 2, 2), torch.zeros(2, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2))
    with pytest.raises(ValueError, match="order"):
        GridSystem(torch.zeros(2, 2, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2), order="x")
    with pytest.raises(TypeError, match="nn.GRU or nn.LSTM"):
        GatedClassifier(nn.RNN(1, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="hidden_size=4"):
        GatedClassifier(nn.GRU(1, 4), nn.Linear(3, 2))
    system = trilib.backward_system(gru, x, loss_fn)
    assert "GridSystem(upper, k=2, tau=5, m=4" in repr(system)
    assert system.to(torch.float32).dtype == torch.float32
    assert "RecurrentForwardSystem(lower, k=2, tau=5" in repr(trilib.forward_system(gru, x))


def test_gated_builder_imports_only_systems_and_the_foundation():
    for name in (m for m in MODULES if m.startswith("trilib.gated")):
        bad = [m for m in imports(name) if not m.startswith(("trilib.gated", "trilib.systems", *FOUNDATION))]
        assert not bad, f"{name} imports {bad}: builders may depend on trilib.systems only"


# -- benchmark and pictures -----------------------------------------------------------------------

def test_gated_benchmark_rows():
    from trilib.bench.gated import gated_table, run_gated

    rows = run_gated(taus=[4], ns=[2], kinds=["GRU", "LSTM"], repeats=1, warmup=0)
    assert {(r["suite"], r["metric"]) for r in rows} == {(s, m) for s in ("gru", "lstm")
                                                         for m in ("forward", "forward+backward")}
    assert {r["method"] for r in rows} == {"torch", "sequential", "newton", "newton_diagonal", "autograd",
                                           "nested", "newton+nested"}
    assert all(r["rel_error"] < 1e-4 and r["median_s"] > 0 for r in rows)       # float32
    assert "forward+backward: time / reference time" in gated_table(rows)
    skipped = run_gated(taus=[4], ns=[2], kinds=["GRU"], repeats=1, warmup=0, max_gflop=0)
    assert {r["method"] for r in skipped if r["note"].startswith("skipped")} == {"newton", "nested",
                                                                               "newton+nested"}
    with pytest.raises(ValueError, match="kinds"):
        run_gated(kinds=["RNN"])


def test_recurrent_pictures():
    import matplotlib

    matplotlib.use("Agg")
    from trilib.viz import recurrent as rviz

    fig = rviz.newton_explorer(tau=8, hidden=2, scale=2.0)
    assert "GRU, τ=8" in fig.axes[0].get_title()
    rows = rviz.parallel_steps([4, 8], hidden=2, seeds=(0,))
    assert [r["sequential"] for r in rows] == [4, 8] and all(r["steps"] > r["iterations"] for r in rows)
    rviz.plot_parallel_steps(rows)
    matplotlib.pyplot.close("all")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_cuda_matches_autograd_and_module(kind):
    module, inputs = make(kind, k=2, tau=16, batch=3, batch_first=True, with_h0=True)
    module = module.cuda()
    x, h = inputs
    inputs = (x.cuda(), tuple(t.cuda() for t in h) if kind == "LSTM" else h.cuda())
    ref = autograd_grads(module, inputs, loss_fn)
    for method in ("sequential", "wavefront", "nested"):
        grads = trilib.gradients(module, inputs, loss_fn, method=method)
        assert all(g.is_cuda for g in grads.values()) and max_rel(grads, ref) <= 1e-10, method
    for jacobian in ("full", "diagonal"):
        out = trilib.forward(module, inputs, "newton", jacobian=jacobian)
        assert all(rel(a, b) <= 1e-10 for a, b in zip(flat(out), flat(call(module, inputs))))
