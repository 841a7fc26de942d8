"""Direct parallel solvers (issue 3) against independent oracles: torch.autograd,
torch.linalg.solve_triangular on the dense matrix, and torch's associative_scan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import dense_solution, random_system, rel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._higher_order_ops import associative_scan
from torch.overrides import TorchFunctionMode

import trilib
from trilib.solvers import blelloch, cyclic_reduction, parallel_cyclic_reduction, recursive_doubling

METHODS = trilib.methods(trilib.BlockBidiagonalSystem, family="direct")
MODULES = {"recursive_doubling": recursive_doubling, "blelloch": blelloch,
           "cyclic_reduction": cyclic_reduction, "parallel_cyclic_reduction": parallel_cyclic_reduction}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]


def ceil_log2(k):
    return math.ceil(math.log2(k)) if k > 1 else 0


# -- solutions against the dense triangular solve -----------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("sizes", [[4], [3, 5], [2, 6, 1, 4, 4, 3, 7], [3] * 13, [1, 8, 2] * 7])
@pytest.mark.parametrize("shared", [True, False])
def test_matches_dense_triangular_solve(method, upper, sizes, shared):
    system = random_system(sizes, upper, shared=shared, scaled=not shared)
    u = trilib.solve(system, method)
    assert [t.shape for t in u] == [r.shape for r in system.rhs]
    for s in range(system.batch_size):
        ref = dense_solution(system, s)
        assert rel(torch.cat([t[s] for t in u]), ref) < 1e-12


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
def test_dtypes_and_devices(method, device, dtype, tol):
    system = random_system([5, 3, 6, 2, 5, 4, 4, 3, 2], upper=True, dtype=dtype, device=device)
    u = trilib.solve(system, method)
    ref = dense_solution(random_system([5, 3, 6, 2, 5, 4, 4, 3, 2], upper=True))   # float64, CPU
    assert all(a.dtype == dtype and a.device.type == device for a in u)
    assert rel(torch.cat([a.double().cpu() for a in u], dim=1), ref) < tol


class HostSyncForbidden(TorchFunctionMode):
    """Fails on every operation that reads a tensor's value on the host (a device sync) or
    whose output shape depends on values: a CUDA graph could not capture it."""

    FORBIDDEN = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
                 torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
                 torch.equal, torch.allclose, torch.Tensor.unique, torch.unique, torch.masked_select}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FORBIDDEN:
            raise AssertionError(f"host synchronisation inside a solve: {func.__name__}")
        return func(*args, **(kwargs or {}))


def test_the_guard_sees_host_syncs():
    t = torch.ones(2)
    for sync in (lambda: t.sum().item(), lambda: t.tolist(), lambda: bool(t[0] > 0), lambda: int(t[0]),
                 lambda: t.nonzero(), lambda: torch.equal(t, t)):
        with pytest.raises(AssertionError, match="host synchronisation"), HostSyncForbidden():
            sync()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("sizes", [[3] * 11, [2, 6, 1, 4, 4, 3, 7]])
def test_no_host_sync_inside_a_solve(method, upper, sizes):
    """A direct solve never reads a value back to the host (no .item(), .tolist(), bool(tensor),
    no Python branch on a tensor): it runs under CUDA graph capture. Checked on CPU."""
    system = random_system(sizes, upper)
    with HostSyncForbidden():
        u, trace = trilib.solve(system, method, return_trace=True)
        v = trilib.solve(system, method, memory_limit=10**8)
    assert rel(torch.cat(list(u), dim=1), dense_solution(system)) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(u, v))


# -- the same affine recurrences through torch's associative_scan ----------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 2, 3, 7, 16, 37])
@pytest.mark.parametrize("upper", [True, False])
def test_matches_associative_scan(method, k, upper):
    n, batch = 3, 2
    system = random_system([n] * k, upper, batch=batch, shared=False, scaled=False, seed=k)
    # scan order: the row substitution solves first comes first
    rows = list(range(k - 1, -1, -1)) if upper else list(range(k))
    A = torch.zeros(k, batch, n, n, dtype=torch.float64)
    for l in range(k - 1):
        row, _ = system.row_col(l)
        A[rows.index(row)] = system.block(l)
    c = torch.stack([system.rhs[row] for row in rows])

    def compose(earlier, later):        # (A, c) ∘ (A', c') = (A A', c + A c')
        (A1, c1), (A2, c2) = earlier, later
        return A2 @ A1, c2 + (A2 @ c1.unsqueeze(-1)).squeeze(-1)

    _, scanned = associative_scan(compose, (A, c), dim=0, combine_mode="generic")
    u = trilib.solve(system, method)
    for p, row in enumerate(rows):
        assert rel(u[row], scanned[p]) < 1e-12


# -- gradients against torch.autograd ---------------------------------------------------------
def autograd_gradients(net, x, loss_fn):
    net.zero_grad()
    loss_fn(net(x)).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def assert_gradients_match(net, x, loss_fn, method):
    ref = autograd_gradients(net, x, loss_fn)
    got = trilib.gradients(net, x, loss_fn, method=method)
    assert got.keys() == ref.keys()
    num = math.sqrt(sum(float((got[n] - ref[n]).pow(2).sum()) for n in ref))
    den = math.sqrt(sum(float(ref[n].pow(2).sum()) for n in ref))
    assert num <= 1e-12 * den


@settings(max_examples=6, deadline=None)
@given(depth=st.integers(1, 300), width=st.integers(1, 4), seed=st.integers(0, 10**6),
       activation=st.sampled_from(["tanh", "relu", "sigmoid", "gelu"]))
def test_gradients_equal_autograd_random_nets(depth, width, seed, activation):
    gen = torch.Generator().manual_seed(seed)
    widths = [3] + torch.randint(1, width + 1, (depth,), generator=gen).tolist()
    net = trilib.nets.mlp(widths, activation=activation, seed=seed, dtype=torch.float64)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    for method in METHODS:
        assert_gradients_match(net, x, lambda out: out.square().sum(), method)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_equal_autograd_depth_300(method):
    torch.manual_seed(1)
    net = trilib.nets.mlp([2] + [3] * 299 + [2], activation="tanh", seed=3, weight_scale=1.5,
                          dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    assert_gradients_match(net, x, lambda out: torch.nn.functional.cross_entropy(out, labels), method)


def test_depth_one_and_two():
    for widths in ([3, 2], [3, 4, 2]):
        net = trilib.nets.mlp(widths, seed=0, dtype=torch.float64)
        x = torch.randn(2, 3, dtype=torch.float64)
        for method in METHODS:
            assert_gradients_match(net, x, lambda out: out.sum(), method)


def test_linear_forward_system_solves_forward_pass():
    net = trilib.nets.mlp([3, 5, 2, 6, 4], activation="identity", seed=0, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    system = trilib.forward_system(net, x)
    assert not system.upper
    for method in METHODS:
        z = trilib.solve(system, method)
        assert rel(z[-1], net(x).detach()) < 1e-12


# -- traces: exact steps and work for k = 1..300 ----------------------------------------------
def test_step_and_work_counts_k_1_to_300():
    for k in range(1, 301):
        system = random_system([1] * k, upper=bool(k % 2), batch=1, seed=k)
        L = ceil_log2(k)
        for method, mod in MODULES.items():
            _, trace = trilib.solve(system, method, return_trace=True)
            assert trace.work == mod.work(k) == sum(len(p) for p in trace.combines)
            assert len(trace.combines) == trace.steps and all(trace.combines)
            if method in ("recursive_doubling", "parallel_cyclic_reduction"):
                assert trace.steps == L
                assert trace.work == k * L - 2**L + 1
            else:
                assert trace.steps <= 2 * L
                assert trace.steps == mod.steps(k)
            if method == "blelloch":
                assert trace.work == 2 * k - bin(k).count("1") - int(math.log2(k)) - 1
                assert trace.steps == int(math.log2(k)) + (int(math.log2(k // 3)) + 1 if k >= 3 else 0)
            if method == "cyclic_reduction":
                assert trace.work == sum(math.ceil(k / 2**i) - 1 for i in range(L))
                assert trace.steps == max(0, 2 * L - 1)


@pytest.mark.parametrize("method", METHODS)
def test_trace_pairs_are_block_rows_and_every_row_is_reached(method):
    for upper in (True, False):
        k = 11
        _, trace = trilib.solve(random_system([2] * k, upper), method, return_trace=True)
        first = k - 1 if upper else 0
        touched = {t for pairs in trace.combines for t, _ in pairs}
        assert touched == set(range(k)) - {first}
        for pairs in trace.combines:
            for t, s in pairs:
                assert 0 <= s < k and ((s > t) if upper else (s < t))


# -- the cost guard ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_memory_guard_option(method):
    system = random_system([8] * 10, upper=True)
    with pytest.raises(trilib.MemoryLimitError, match=r"(?s)method='.*sequential.*iterative"):
        trilib.solve(system, method, memory_limit=1000)
    trilib.solve(system, method, memory_limit=10**9)


@pytest.mark.parametrize("method", METHODS)
def test_memory_guard_config(method, monkeypatch):
    system = random_system([8] * 10, upper=True)
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", 1000)
    with pytest.raises(trilib.MemoryLimitError, match=r"would need about .* KiB.*sequential"):
        trilib.solve(system, method)


def test_memory_guard_raises_before_allocating(monkeypatch):
    system = random_system([8] * 10, upper=True)
    for allocate in ("new_empty", "new_zeros"):
        monkeypatch.setattr(torch.Tensor, allocate, lambda *a, **kw: pytest.fail("allocated"))
    with pytest.raises(trilib.MemoryLimitError):
        trilib.solve(system, "blelloch", memory_limit=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sizes", [[5] * 65, [2, 6, 1, 4, 4, 3, 7]])
def test_a_solve_allocates_once_what_its_check_estimated(method, sizes, monkeypatch):
    """The memory check's estimate is what a solve allocates, counted independently by the
    profiler's allocator events: the solution and one block for the whole scan (stacks and
    buffers), nothing inside the step loop (fresh memory per step costs page faults)."""
    system = random_system(sizes, upper=True)
    estimates = []

    def check_memory(nbytes, *args, **kwargs):
        estimates.append(nbytes)
        return real_check(nbytes, *args, **kwargs)
    real_check = trilib.solvers._direct.check_memory
    monkeypatch.setattr(trilib.solvers._direct, "check_memory", check_memory)
    expected = trilib.solve(system, method)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        u = trilib.solve(system, method)
    allocated = [e.cpu_memory_usage for e in profile.events()     # every allocation ends in one
                 if e.name in ("aten::empty", "aten::empty_strided") and e.cpu_memory_usage > 0]
    assert len(allocated) == 2 and sum(allocated) == estimates[-1]
    assert all(torch.equal(a, b) for a, b in zip(u, expected, strict=True))


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError),
                                        ("1GB", TypeError), (True, TypeError)])
def test_memory_limit_follows_the_config_rule(bad, error, monkeypatch):
    """One rule for ``solve(..., memory_limit=)`` and ``trilib.config.memory_limit_bytes``: the
    same exception for the same bad value, and any integer type (numpy's too) accepted."""
    system = random_system([2, 2], upper=True)
    with pytest.raises(error, match="memory_limit must be a positive int"):
        trilib.solve(system, "recursive_doubling", memory_limit=bad)
    with pytest.raises(error, match="memory_limit_bytes must be a positive int"):
        trilib.config.memory_limit_bytes = bad
    trilib.solve(system, "recursive_doubling", memory_limit=np.int64(10**6))
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", np.int64(10**6))
    trilib.solve(system, "recursive_doubling")


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="tolerance"):
        trilib.solve(random_system([2, 2], upper=True), "blelloch", tolerance=1e-3)


# -- plots ---------------------------------------------------------------------------------
def test_tree_plots_draw_from_the_trace():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.collections import LineCollection

    from trilib.viz import plot_counts, plot_tree, tree_trace

    for method in METHODS:
        trace = tree_trace(method, 9)
        ax = plot_tree(trace, k=9, step=1)
        segments = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
        assert segments == 9 + sum(len(pairs) for pairs in trace.combines)  # rails + combines
        assert method in ax.get_title()
    with pytest.raises(ValueError, match="step"):
        plot_tree(tree_trace("blelloch", 9), k=9, step=99)
    fig = plot_counts([*METHODS, "sequential"], ks=range(2, 20))
    steps_ax = fig.axes[0]
    assert len(fig.axes) == 2 and len(steps_ax.lines) >= len(METHODS) + 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_tree_trace_rejects_bad_k(bad):
    from trilib.viz import tree_trace

    with pytest.raises(ValueError, match="k must be an int >= 1"):
        tree_trace("blelloch", bad)
    with pytest.raises(ValueError, match="unknown method"):
        tree_trace("bogus", 4)


def test_no_host_sync_in_the_nested_grid_solve():
    """The RNN grid's direct method (cyclic reduction over layers, time scans inside) too."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(2, 3, num_layers=3, dtype=torch.float64)
    system = trilib.backward_system(rnn, torch.randn(5, 2, 2, dtype=torch.float64), lambda o: o[0].sum())
    assert "nested" in trilib.methods(system, family="direct")
    with HostSyncForbidden():
        v = trilib.solve(system, "nested")
    assert rel(torch.cat(list(v), dim=1), dense_solution(system)) < 1e-12


def test_torchs_generic_associative_scan_is_behind_a_version_check(monkeypatch):
    """trilib needs torch >= 2.4; the benchmark peer ``associative_scan(..., combine_mode=
    "generic")`` needs a newer torch and says so instead of failing inside torch."""
    from torch.torch_version import TorchVersion

    from trilib.bench.peers import SCAN_TORCH, associative_scan_solve

    system = random_system([3] * 5, upper=True)
    assert rel(torch.cat(list(associative_scan_solve(system)), dim=1), dense_solution(system)) < 1e-12
    monkeypatch.setattr(torch, "__version__", TorchVersion("2.5.1"))
    with pytest.raises(RuntimeError, match=f"needs torch >= {SCAN_TORCH} \\(this is 2.5.1\\)"):
        associative_scan_solve(system)
