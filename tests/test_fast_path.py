"""The fast path (issue 15): stacked storage, O(log k) tensor operations per direct solve, no
trace unless asked for, and a backward-system build and parameter gradients with no tensor
work per layer beyond the forward pass. Counts come from a dispatch-mode counter (every aten
operation that reaches the dispatcher, deterministic), never from timings."""

from __future__ import annotations

import pytest
import torch
from conftest import autograd_grads, random_system, rel
from torch.utils._python_dispatch import TorchDispatchMode

import trilib
from trilib import fnn
from trilib.api import backward_problem
from trilib.systems import BlockBidiagonalSystem
from trilib.trace import SharedPairs, StridedPairs, Trace

DIRECT = trilib.methods(BlockBidiagonalSystem, family="direct")


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops(fn) -> int:
    with OpCounter() as counter:
        fn()
    return counter.count


def mlp_system(k: int, widths=None, batch: int = 2):
    widths = widths or [2] * (k + 1)
    net = trilib.nets.mlp(widths, activation="tanh", seed=0)
    x = torch.randn(batch, widths[0], generator=torch.Generator().manual_seed(0))
    return trilib.backward_system(net, x, lambda out: out.square().sum())


def stacked_system(k: int, n: int = 2, batch: int = 2, upper: bool = True):
    gen = torch.Generator().manual_seed(k)
    return BlockBidiagonalSystem.from_stacks([torch.randn(k - 1, n, n, generator=gen) / n],
                                             [torch.rand(k - 1, batch, n, generator=gen) + 0.5],
                                             [torch.randn(k, batch, n, generator=gen)], upper=upper)


# -- O(log k) operations per direct solve ------------------------------------------------------
@pytest.mark.parametrize("method", DIRECT)
@pytest.mark.parametrize("build", ["mlp", "mlp_mixed_widths", "stacked_lower", "lists"])
def test_direct_solve_dispatches_O_log_k_operations(method, build):
    """From k = 64 to k = 4096 the operations of one solve grow at most 3x (log2: 6 -> 12)."""
    def system(k):
        if build == "mlp":
            return mlp_system(k)
        if build == "mlp_mixed_widths":
            return mlp_system(k, [3] + [2] * (k - 1) + [1])
        if build == "stacked_lower":
            return stacked_system(k, upper=False)
        return random_system([2] * k, upper=True, dtype=torch.float32)

    def count(k):
        U = system(k)
        trilib.solve(U, method)                 # a system built from lists stacks itself once
        return ops(lambda: trilib.solve(U, method))

    small, large = count(64), count(4096)
    assert large <= 3 * small, (small, large)


def test_sequential_is_one_product_per_block():
    """Substitution is k - 1 products and k - 1 fused ``r + d * (M u)``, nothing more per block."""
    def count(k):
        U = mlp_system(k)
        return ops(lambda: trilib.solve(U, "sequential"))

    assert count(1024) - count(64) <= 2 * (1024 - 64)


def test_build_and_parameter_gradients_add_no_per_layer_operations():
    """Beyond the forward pass (``t``, ``addmm`` and ``tanh`` per layer), building the backward
    system and the parameter gradients dispatch a number of operations independent of k."""
    def counts(k):
        net = trilib.nets.mlp([3] + [2] * k, activation="tanh", seed=0)
        x = torch.randn(2, 3)
        problem = backward_problem(net, x, lambda out: out.square().sum())
        v = trilib.solve(problem.system, "blelloch")
        return (ops(lambda: backward_problem(net, x, lambda out: out.square().sum())),
                ops(lambda: problem.parameter_gradients(v)))

    (build_small, grads_small), (build_large, grads_large) = counts(64), counts(1024)
    assert build_large - build_small <= 3 * (1024 - 64)
    assert grads_large <= grads_small + 4


# -- no trace unless asked for -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sequential", *DIRECT])
def test_return_trace_false_builds_no_trace(method, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a trace was built although none was asked for")

    import trilib.solvers._direct as direct
    import trilib.solvers._registry as registry

    U = mlp_system(37)
    expected = trilib.solve(U, method)
    monkeypatch.setattr(registry, "Trace", refuse)
    monkeypatch.setattr(direct, "StridedPairs", refuse)
    monkeypatch.setattr(Trace, "add_step", refuse)
    got = trilib.solve(U, method)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_trace_lists_pairs_only_when_read():
    U = mlp_system(4096)
    _, trace = trilib.solve(U, "blelloch", return_trace=True)
    assert all(isinstance(step, StridedPairs) for step in trace._combines)
    assert trace.work == sum(len(step) for step in trace._combines)
    combines = trace.combines
    assert all(isinstance(step, list) for step in trace._combines) and combines is trace._combines
    assert sum(map(len, combines)) == trace.work


def test_trace_descriptions():
    trace = Trace("x")
    trace.add_step(StridedPairs(first=6, stride=-2, count=3, offset=1))
    shared = [(0, 1), (1, 2)]
    trace.add_step(SharedPairs(shared))
    trace.add_step(SharedPairs(lambda: shared, count=2), work=5)
    trace.add_step([(3.0, 4)])
    assert (trace.steps, trace.work) == (4, 3 + 2 + 5 + 1)
    assert trace.combines == [[(6, 7), (4, 5), (2, 3)], shared, shared, [(3, 4)]]
    with pytest.raises(ValueError, match="count="):
        SharedPairs(lambda: shared)


# -- stacked storage -----------------------------------------------------------------------------
@pytest.mark.parametrize("upper", [True, False])
def test_stacked_and_listed_systems_agree(upper):
    S = stacked_system(9, n=3, batch=2, upper=upper)
    L = BlockBidiagonalSystem(list(S.mats), list(S.scales), list(S.rhs), upper=upper)
    assert (S.k, S.block_sizes, S.batch_size) == (L.k, L.block_sizes, L.batch_size) == (9, (3,) * 9, 2)
    assert len(L.block_runs) == len(L.row_runs) == 1                   # equal shapes: one run each
    for l in range(S.k - 1):
        assert torch.equal(S.block(l), L.block(l))
    u = [torch.randn(2, 3) for _ in range(9)]
    loop = [sum((L.apply_block(l, u[L.row_col(l)[1]]) for l in range(8) if L.row_col(l)[0] == i),
                torch.zeros(2, 3)) for i in range(9)]
    for a, b, c in zip(S.apply_offdiagonal(u), L.apply_offdiagonal(u), loop):
        assert torch.allclose(a, c, atol=1e-6) and torch.allclose(b, c, atol=1e-6)
    for method in ("sequential", *DIRECT):
        for a, b in zip(trilib.solve(S, method), trilib.solve(L, method)):
            assert torch.allclose(a, b, atol=1e-5)
    converted = S.to(torch.float64)
    assert converted.dtype == torch.float64 and converted.block_runs[0].mats.dtype == torch.float64


def test_runs_of_mixed_shapes():
    U = mlp_system(6, [3, 4, 4, 4, 5, 5, 2])
    assert U.block_sizes == (4, 4, 4, 5, 5, 2)
    # runs follow the layers' weight shapes; each run is one shape, and they tile the system
    rows = [(r.start, r.stop, r.width) for r in U.row_runs]
    assert rows[0][0] == 0 and rows[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert [w for a, b, w in rows for _ in range(a, b)] == [4, 4, 4, 5, 5, 2]
    blocks = [(r.start, r.stop, tuple(r.mats.shape[-2:])) for r in U.block_runs]
    assert [shape for a, b, shape in blocks for _ in range(a, b)] == [(4, 4), (4, 4), (4, 5), (5, 5), (5, 2)]
    assert blocks[0][0] == 0 and blocks[-1][1] == 5 and len(blocks) <= 5


def test_repeated_block_is_not_copied():
    m = torch.randn(3, 3)
    U = BlockBidiagonalSystem([m] * 5, [None] * 5, [torch.randn(2, 3) for _ in range(6)], upper=True)
    (run,) = U.block_runs
    assert run.mats.stride(0) == 0 and run.mats.data_ptr() == m.data_ptr()


@pytest.mark.parametrize("bad, message", [
    (dict(rhs=[]), "non-empty list"),
    (dict(mats=[torch.zeros(3, 2, 2)], scales=[None]), "need 4 coupling blocks, the runs hold 3"),
    (dict(mats=[torch.zeros(4, 2, 3)]), "3 columns do not match"),
    (dict(scales=[torch.zeros(4, 2, 3)]), "scalings of blocks 0..3"),
    (dict(mats=[torch.zeros(4, 2, 2, dtype=torch.float64)]), "of torch.float32"),
    (dict(scales=[None, None]), "need as many scalings"),
])
def test_from_stacks_checks_shapes(bad, message):
    args = dict(mats=[torch.zeros(4, 2, 2)], scales=[torch.ones(4, 2, 2)], rhs=[torch.zeros(5, 2, 2)])
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        BlockBidiagonalSystem.from_stacks(args["mats"], args["scales"], args["rhs"], upper=True)


# -- the vectorised build against autograd ---------------------------------------------------
@pytest.mark.parametrize("widths, acts", [
    ([3, 4, 4, 4, 5, 5, 2], ["tanh"] * 6),
    ([2, 3, 3, 3, 3], ["tanh", "relu", "relu", None]),
    ([2, 3, 3, 3], ["gelu", "sigmoid", "tanh"]),
])
def test_vectorised_build_gradients_equal_autograd(widths, acts):
    layers = []
    for l, act in enumerate(acts):
        layers.append(torch.nn.Linear(widths[l], widths[l + 1], bias=l != 1, dtype=torch.float64))
        if act is not None:
            layers.append({"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU,
                           "sigmoid": torch.nn.Sigmoid}[act]())
    torch.manual_seed(0)
    net = torch.nn.Sequential(*layers)
    x = torch.randn(5, widths[0], dtype=torch.float64)
    loss_fn = lambda out: out.pow(3).sum()  # noqa: E731
    ref = autograd_grads(net, x, loss_fn)
    for method in ("sequential", *DIRECT):
        got = trilib.gradients(net, x, loss_fn, method=method)
        assert list(got) == list(ref)
        flat = [torch.cat([g[n].flatten() for n in ref]) for g in (got, ref)]
        assert rel(*flat) <= 1e-12


def test_hooks_on_activations_still_run():
    net = trilib.nets.mlp([2, 3, 2], activation="tanh", seed=0, dtype=torch.float64)
    seen = []
    net[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    x = torch.randn(4, 2, dtype=torch.float64)
    grads = trilib.gradients(net, x, lambda out: out.sum())
    assert seen and all(s == (4, 3) for s in seen)     # the graph builder runs the real calls
    assert rel(grads["0.weight"], autograd_grads(net, x, lambda out: out.sum())["0.weight"]) <= 1e-12


def test_parse_lists_named_parameters():
    inner = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    lin = torch.nn.Linear(3, 3, bias=False)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), inner, lin, torch.nn.ReLU(), lin, torch.nn.Linear(3, 1))
    layers = fnn.parse_sequential(net)
    assert [n for n, _ in layers.params] == [n for n, _ in net.named_parameters()]
    assert [layer.name for layer in layers] == ["0", "1.0", "2", "4", "5"]


def test_parse_is_reused_only_while_the_model_is_unchanged():
    """The parse of a model is kept between calls, keyed by every module and parameter object:
    in-place optimiser updates reuse it, any change of structure or parameter parses again."""
    net = trilib.nets.mlp([2, 3, 3, 2], activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    loss_fn = lambda out: out.pow(3).sum()  # noqa: E731

    def check():
        ours, ref = trilib.gradients(net, x, loss_fn), autograd_grads(net, x, loss_fn)
        assert list(ours) == list(ref)
        assert all(rel(ours[n], ref[n]) <= 1e-12 for n in ref)

    check()
    assert fnn.parse_sequential(net)[0].linear is net[0]
    with torch.no_grad():
        net[0].weight.mul_(2)                                   # an optimiser step
    check()
    net[1] = torch.nn.ReLU()                                    # a module replaced
    check()
    assert fnn.parse_sequential(net)[0].activations[0] is net[1]
    net[2].weight = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64))   # a parameter
    check()
    net[2].bias = None
    check()
    net.append(torch.nn.Linear(2, 2, dtype=torch.float64))     # a layer appended
    check()
    first = fnn.parse_sequential(net)
    first.clear()                                               # the caller's copy only
    assert len(fnn.parse_sequential(net)) == 4


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("upper", [True, False])
def test_first_step_from_the_blocks_factors(scaled, upper):
    """Blocks n x n shared by the batch: the first step forms its products from M and d; the
    solutions match the dense triangular solve for every k (odd, even, tiny)."""
    from conftest import dense_solution

    for k in (1, 2, 3, 5, 8, 13):
        system = random_system([3] * k, upper, batch=2, shared=True, scaled=scaled, seed=k)
        assert system.uniform_run is not None or k == 1
        for method in DIRECT:
            u = trilib.solve(system, method)
            for s in range(2):
                assert rel(torch.cat([t[s] for t in u]), dense_solution(system, s)) < 1e-12, (k, method)


# -- the training step: no second walk over the model ------------------------------------------
def test_fnn_checks_its_own_parameters_and_backward_reuses_the_parse(monkeypatch):
    """The FNN path checks the weights on their stacks (the error still names the parameter),
    and trilib.backward assigns p.grad from the parse's parameter list, never walking the
    model with named_parameters()."""
    net = trilib.nets.mlp([3, 4, 4, 2], activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    loss_fn = lambda out: out.square().sum()  # noqa: E731
    ref = autograd_grads(net, x, loss_fn)
    walks = []
    monkeypatch.setattr(torch.nn.Module, "named_parameters",
                        lambda self, *a, **kw: walks.append(self) or iter(()))
    trilib.backward(net, x, loss_fn, method="blelloch")
    assert not walks
    monkeypatch.undo()
    for name, p in net.named_parameters():
        assert rel(p.grad, ref[name]) <= 1e-12
    with torch.no_grad():
        net[2].bias[1] = float("inf")
    with pytest.raises(ValueError, match="parameter '2.bias' of the model contains 1 non-finite"):
        trilib.backward(net, x, loss_fn, method="blelloch")


def test_fnn_names_a_non_finite_parameter_outside_its_layers():
    net = trilib.nets.mlp([3, 4, 2], activation="tanh", seed=0, dtype=torch.float64)
    net.register_parameter("scale", torch.nn.Parameter(torch.tensor([float("nan")], dtype=torch.float64)))
    with pytest.raises(ValueError, match="parameter 'scale'"):
        trilib.gradients(net, torch.randn(2, 3, dtype=torch.float64), lambda out: out.sum())


def test_sequential_subclass_with_its_own_forward_is_traced_not_parsed():
    class Residual(torch.nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    net = Residual(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)).to(torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(trilib.UnsupportedLayerError, match="Residual subclasses nn.Sequential"):
        fnn.parse_sequential(net)
    ours, ref = trilib.gradients(net, x, lambda out: out.sum()), autograd_grads(net, x, lambda out: out.sum())
    assert all(rel(ours[n], ref[n]) <= 1e-12 for n in ref)
