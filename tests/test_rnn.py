"""RNN backward systems (THEORY §2): gradients against torch.autograd, dense solves against
torch.linalg.solve_triangular, step counts, errors, and training."""

import functools
import math

import pytest
import torch
from conftest import autograd_grads, dense_solution, make_recurrent, recurrent_loss, rel
from hypothesis import given, settings
from hypothesis import strategies as st

import trilib
from trilib import RNNSystem
from trilib.rnn import RNNClassifier
from trilib.solvers.rnn_methods import nested_step_bound, time_scan

DT = torch.float64
METHODS = trilib.methods(trilib.RNNSystem, family="rnn")


make = functools.partial(make_recurrent, "RNN")
loss_fn = recurrent_loss


def assert_close(grads, ref, tol=1e-12):
    assert list(grads) == list(ref)
    for name in ref:
        err = (grads[name] - ref[name]).norm() / ref[name].norm().clamp_min(1e-300)
        assert err <= tol, (name, float(err))


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 5), tau=st.integers(1, 9), n_in=st.integers(1, 4), n=st.integers(1, 5),
       batch=st.integers(1, 3), nonlinearity=st.sampled_from(["tanh", "relu"]),
       batch_first=st.booleans(), bias=st.booleans(), with_h0=st.booleans(), seed=st.integers(0, 99))
def test_gradients_match_autograd(k, tau, n_in, n, batch, nonlinearity, batch_first, bias, with_h0, seed):
    rnn, inputs = make(k=k, tau=tau, n_in=n_in, n=n, batch=batch, nonlinearity=nonlinearity,
                      batch_first=batch_first, bias=bias, with_h0=with_h0, seed=seed)
    ref = autograd_grads(rnn, inputs, loss_fn)
    for method in METHODS:
        assert_close(trilib.gradients(rnn, inputs, loss_fn, method=method), ref)


@pytest.mark.parametrize("which", ["output", "h_n"])
def test_loss_on_one_output_only(which):
    rnn, x = make(k=3, tau=4, batch_first=True)
    fn = (lambda o: o[0].square().mean()) if which == "output" else (lambda o: o[1][1].sum())
    ref = autograd_grads(rnn, x, fn)
    for method in METHODS:
        assert_close(trilib.gradients(rnn, x, fn, method=method), ref)


def test_unbatched_input_with_h0():
    rnn, _ = make(k=2, tau=1)
    x, h0 = torch.randn(6, 3, dtype=DT), torch.randn(2, 4, dtype=DT)
    ref = autograd_grads(rnn, (x, h0), loss_fn)
    for method in METHODS:
        assert_close(trilib.gradients(rnn, (x, h0), loss_fn, method=method), ref)


def test_loss_fn_receives_module_output():
    rnn, (x, h0) = make(k=2, tau=3, batch_first=True, with_h0=True)
    seen = []
    trilib.gradients(rnn, (x, h0), lambda out: seen.append(out) or out[0].sum())
    output, h_n = rnn(x, h0)
    assert isinstance(seen[0], tuple) and len(seen[0]) == 2
    assert torch.equal(seen[0][0], output.detach()) or torch.allclose(seen[0][0], output, rtol=0, atol=1e-14)
    assert torch.allclose(seen[0][1], h_n, rtol=0, atol=1e-14)


@pytest.mark.parametrize("order", ["layer", "time"])
@pytest.mark.parametrize("method", METHODS)
def test_dense_solve_matches_solve_triangular(order, method):
    rnn, x = make(k=3, tau=4, n=3, batch=2, nonlinearity="relu", with_h0=True)
    system = trilib.backward_system(rnn, x, loss_fn).with_order(order)
    v = trilib.solve(system, method=method)
    for sample in range(2):
        a = system.to_dense(sample)
        assert torch.equal(a, torch.triu(a))                     # upper in both orderings
        ref = torch.linalg.solve_triangular(a, system.rhs_dense(sample).unsqueeze(-1), upper=True)
        got = torch.cat([b[sample] for b in v])
        assert torch.allclose(got, ref.squeeze(-1), rtol=1e-12, atol=1e-13)
    assert system.residual_norm(v) < 1e-13


def test_orderings_are_a_permutation_and_patterns():
    rnn, x = make(k=3, tau=4, n=2, batch=1)
    by_layer = trilib.backward_system(rnn, x, loss_fn)
    by_time = by_layer.with_order("time")
    assert isinstance(by_layer, RNNSystem) and by_layer.order == "layer"
    k, tau, n = 3, 4, 2
    perm = torch.tensor([(l * tau + t) * n + i for t in range(tau) for l in range(k) for i in range(n)])
    a, b = by_layer.to_dense(), by_time.to_dense()
    assert torch.equal(a[perm][:, perm], b)
    # layer ordering: bi-diagonal over layers (no block coupling further than τ rows away)
    blocks = {(i, j) for i, j, _ in by_layer.dense_blocks()}
    assert all(j - i in (1, tau) for i, j in blocks)
    assert {j - i for i, j, _ in by_time.dense_blocks()} == {1, k}
    assert len(blocks) == (k - 1) * tau + k * (tau - 1)


def test_apply_offdiagonal_matches_dense():
    rnn, x = make(k=2, tau=3, n=3, batch=2)
    for order in ("layer", "time"):
        s = trilib.backward_system(rnn, x, loss_fn).with_order(order)
        u = [torch.randn_like(r) for r in s.rhs]
        nu = s.apply_offdiagonal(u)
        for sample in range(2):
            dense = torch.eye(s.offsets[-1], dtype=DT) - s.to_dense(sample)
            assert torch.allclose(torch.cat([b[sample] for b in nu]),
                                  dense @ torch.cat([b[sample] for b in u]), atol=1e-14)


@pytest.mark.parametrize("k,tau", [(1, 1), (1, 16), (2, 7), (3, 5), (4, 8), (5, 3), (8, 2), (7, 13)])
def test_step_counts(k, tau):
    rnn, x = make(k=k, tau=tau, n=2, batch=1)
    system = trilib.backward_system(rnn, x, loss_fn)
    steps = {m: trilib.solve(system, m, return_trace=True)[1].steps for m in METHODS}
    assert steps["sequential"] == k * tau
    assert steps["wavefront"] == k + tau - 1
    lk, lt = math.ceil(math.log2(k)), math.ceil(math.log2(tau))
    assert steps["nested"] <= 1 + lk * (lt + 2) + lt
    assert steps["nested"] <= nested_step_bound(k, tau) == 3 * (lk + 1) * (lt + 1)


def test_trace_combines_are_couplings():
    rnn, x = make(k=2, tau=3, n=2, batch=1)
    for order in ("layer", "time"):
        system = trilib.backward_system(rnn, x, loss_fn).with_order(order)
        couplings = {(i, j) for i, j, _ in system.dense_blocks()}
        for method in ("sequential", "wavefront"):
            _, tr = trilib.solve(system, method, return_trace=True)
            assert {p for step in tr.combines for p in step} == couplings
            assert tr.work == len(couplings)


def test_k1_time_system_and_fnn_direct_methods():
    rnn, x = make(k=1, tau=9, n=3, batch=2, with_h0=True)
    system = trilib.backward_system(rnn, x, loss_fn)
    bidiag = system.time_system()
    assert isinstance(bidiag, trilib.BlockBidiagonalSystem)
    assert torch.allclose(bidiag.to_dense(1), system.to_dense(1), rtol=0, atol=0)
    ref = dense_solution(system)                 # torch.linalg.solve_triangular on the dense grid
    listed = ("sequential", "recursive_doubling", "blelloch", "cyclic_reduction",
              "parallel_cyclic_reduction", "block_jacobi", "gauss_seidel", "newton")
    missing = set(listed) - set(trilib.methods(bidiag))
    assert not missing, f"methods missing for a BlockBidiagonalSystem: {missing}"
    for method in listed:
        v = trilib.solve(bidiag, method)
        assert rel(torch.cat(list(v), dim=1), ref) <= 1e-12, method


def test_time_system_of_lower_layer():
    rnn, x = make(k=2, tau=4, n=3)
    system = trilib.backward_system(rnn, x, loss_fn)
    v = system.to_grid(trilib.solve(system, "sequential"))
    v0 = trilib.solve(system.time_system(0, incoming=v[1]), "sequential")
    assert torch.allclose(v0.stacked(), v[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="incoming"):
        system.time_system(0)
    with pytest.raises(IndexError, match="layer"):
        system.time_system(2)


def test_time_scan_against_loop():
    torch.manual_seed(0)
    p, x = torch.randn(2, 6, 3, 4, 4, dtype=DT), torch.randn(2, 6, 3, 4, 2, dtype=DT)
    ref, nxt = torch.empty_like(x), torch.zeros_like(x[:, 0])
    for t in range(5, -1, -1):
        nxt = x[:, t] + (p[:, t] @ nxt if t < 5 else 0)
        ref[:, t] = nxt
    assert torch.allclose(time_scan(p, x), ref, rtol=1e-12, atol=1e-12)


def test_float32_close():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(2, 5, num_layers=3)
    x = torch.randn(6, 3, 2)
    ref = autograd_grads(rnn, x, loss_fn)
    for method in METHODS:
        g = trilib.gradients(rnn, x, loss_fn, method=method)
        assert all(torch.allclose(g[n], ref[n], rtol=1e-4, atol=1e-5) for n in ref)


def test_generic_jacobi_solves_the_grid():
    """Jacobi is generic (any triangular system): it must apply to the RNN grid (fail, never
    skip, when it does not) and give the dense triangular solve's answer."""
    rnn, x = make(k=2, tau=3)
    system = trilib.backward_system(rnn, x, loss_fn)
    assert "jacobi" in trilib.methods(system)
    v = trilib.solve(system, "jacobi")
    assert rel(torch.cat(list(v), dim=1), dense_solution(system)) <= 1e-12


# -- the classifier (RNN + readout) and training ---------------------------------------------

def make_classifier(k=2, n=6, seed=0):
    torch.manual_seed(seed)
    return RNNClassifier(torch.nn.RNN(1, n, num_layers=k, batch_first=True, dtype=DT),
                         torch.nn.Linear(n, 10, dtype=DT))


@pytest.mark.parametrize("k", [1, 3])
def test_classifier_gradients(k):
    model = make_classifier(k)
    x, y = torch.randn(5, 7, 1, dtype=DT), torch.randint(0, 10, (5,))
    fn = lambda z: torch.nn.functional.cross_entropy(z, y)  # noqa: E731
    ref = autograd_grads(model, x, fn)
    for method in METHODS:
        assert_close(trilib.gradients(model, x, fn, method=method), ref)


def test_training_matches_autograd_step_for_step():
    x, y = trilib.data.digits("train", as_sequence=True, dtype=DT)
    x, y = x[:32, ::4], y[:32]                              # τ = 16, to stay fast
    fn = torch.nn.functional.cross_entropy
    curves = {}
    for method in ("autograd", "nested", "wavefront"):
        model = make_classifier(k=2, n=8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            if method == "autograd":
                loss = fn(model(x), y)
                loss.backward()
                loss = loss.detach()
            else:
                loss = trilib.backward(model, x, lambda z: fn(z, y), method=method)
            opt.step()
            losses.append(loss.item())

        curves[method] = losses
    for method in ("nested", "wavefront"):
        assert all(abs(a - b) <= 1e-12 * abs(a) for a, b in zip(curves[method], curves["autograd"]))
    assert curves["autograd"][-1] < curves["autograd"][0]


# -- errors -----------------------------------------------------------------------------------

def test_errors():
    rnn, x = make(k=2, tau=3)
    with pytest.raises(Exception, match="bidirectional"):
        trilib.backward_system(torch.nn.RNN(3, 4, num_layers=2, bidirectional=True, dtype=DT), x, loss_fn)
    drop = torch.nn.RNN(3, 4, num_layers=2, dropout=0.5, dtype=DT)
    with pytest.raises(Exception, match="dropout"):
        trilib.backward_system(drop, x, loss_fn)
    drop.eval()
    assert isinstance(trilib.backward_system(drop, x, loss_fn), RNNSystem)
    with pytest.raises(ValueError, match="features"):
        trilib.backward_system(rnn, torch.randn(3, 2, 5, dtype=DT), loss_fn)
    with pytest.raises(ValueError, match="shape"):
        trilib.backward_system(rnn, torch.randn(3, dtype=DT), loss_fn)
    with pytest.raises(TypeError, match="dtype"):
        trilib.backward_system(rnn, x.float(), loss_fn)
    with pytest.raises(ValueError, match="h0 has shape"):
        trilib.backward_system(rnn, (x, torch.zeros(1, 2, 4, dtype=DT)), loss_fn)
    with pytest.raises(TypeError, match="h0"):
        trilib.backward_system(rnn, (x, torch.zeros(2, 2, 4)), loss_fn)
    with pytest.raises(ValueError, match="pair"):
        trilib.backward_system(rnn, (x, None, None), loss_fn)
    with pytest.raises(ValueError, match="empty"):
        trilib.backward_system(rnn, x[:0], loss_fn)
    with pytest.raises(ValueError, match="non-finite"):
        trilib.backward_system(rnn, x * float("nan"), loss_fn)
    with pytest.raises(ValueError, match="scalar"):
        trilib.backward_system(rnn, x, lambda o: o[0])
    with pytest.raises(ValueError, match="does not depend"):
        trilib.backward_system(rnn, x, lambda o: torch.tensor(1.0, dtype=DT))
    with pytest.raises(TypeError, match="RNN"):
        trilib.rnn.record_forward(torch.nn.Linear(2, 2), x)
    with pytest.raises(TypeError, match="PackedSequence"):
        packed = torch.nn.utils.rnn.pack_sequence([torch.randn(3, 3, dtype=DT)])
        trilib.backward_system(rnn, packed, loss_fn)
    with pytest.raises(TypeError, match="nn.Linear"):
        RNNClassifier(rnn, torch.nn.Tanh())
    with pytest.raises(ValueError, match="hidden_size"):
        RNNClassifier(rnn, torch.nn.Linear(3, 2))


def test_system_errors():
    d = torch.ones(2, 3, 1, 2)
    with pytest.raises(ValueError, match="order"):
        RNNSystem(torch.zeros(1, 2, 2), torch.zeros(2, 2, 2), d, d, order="diagonal")
    with pytest.raises(ValueError, match="w_hh"):
        RNNSystem(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), d, d)
    with pytest.raises(ValueError, match="w_ih"):
        RNNSystem(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), d, d)
    with pytest.raises(ValueError, match="g has shape"):
        RNNSystem(torch.zeros(1, 2, 2), torch.zeros(2, 2, 2), d, d[:1])
    with pytest.raises(ValueError, match=r"\(k, τ, batch, n\)"):
        RNNSystem(torch.zeros(1, 2, 2), torch.zeros(2, 2, 2), d[0], d[0])
    s = RNNSystem(torch.zeros(1, 2, 2), torch.zeros(2, 2, 2), d, d)
    with pytest.raises(ValueError, match="blocks"):
        s.to_grid(s.rhs[:-1])
    with pytest.raises(trilib.MemoryLimitError):
        old = trilib.config.memory_limit_bytes
        trilib.config.memory_limit_bytes = 1000
        try:
            rnn, x = make(k=3, tau=8, n=4)
            trilib.solve(trilib.backward_system(rnn, x, loss_fn), "nested")
        finally:
            trilib.config.memory_limit_bytes = old
    assert "RNNSystem" in repr(s)


def test_viz_smoke():
    import matplotlib

    matplotlib.use("Agg")
    from trilib import viz

    rnn, x = make(k=2, tau=3, n=2, batch=1)
    fig = viz.rnn_spy_pair(trilib.backward_system(rnn, x, loss_fn))
    assert len(fig.axes) == 2
    assert viz.rnn_steps(2, 4) == {"sequential": 8, "wavefront": 5, "nested": 6}
    viz.plot_steps([1, 2], [2, 4], fixed_k=2, fixed_tau=4)
    viz.plot_loss_curves({"a": [2.0, 1.0], "b": [2.0, 1.0]})
    with pytest.raises(TypeError, match="RNNSystem"):
        viz.rnn_spy_pair(trilib.backward_system(trilib.nets.mlp([2, 3, 2], seed=0),
                                                torch.randn(1, 2), lambda o: o.sum()))
    matplotlib.pyplot.close("all")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_autograd():
    rnn, (x, h0) = make(k=3, tau=6, batch=3, batch_first=True, with_h0=True)
    rnn, x, h0 = rnn.cuda(), x.cuda(), h0.cuda()
    ref = autograd_grads(rnn, (x, h0), loss_fn)
    for method in METHODS:
        grads = trilib.gradients(rnn, (x, h0), loss_fn, method=method)
        assert all(g.is_cuda for g in grads.values())
        assert_close(grads, ref, tol=1e-11)
