"""General computation graphs (THEORY §3-4): torch.export capture, Jacobian blocks, graph solvers.

Oracles: torch.autograd (parameter gradients and dE/dx_i of every node), and
torch.linalg.solve_triangular on the dense matrix, all in float64.
"""

import math
import random

import matplotlib
import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from conftest import autograd_grads, rel
from torch import nn

import trilib
from trilib import graph as G
from trilib._checks import MemoryLimitError, UnsupportedLayerError

matplotlib.use("Agg")
DT = torch.float64
GRAPH_METHODS = [m for m in trilib.methods(trilib.GraphSystem) if m != "jacobi"]


def all_methods():
    return GRAPH_METHODS + (["jacobi"] if "jacobi" in trilib.methods() else [])


def loss_fn(out):
    return out.tanh().square().sum() + out.sum()


def family(name: str, seed: int):
    """A random instance of each model family, with its input."""
    rng = random.Random(seed)
    b = rng.randint(1, 3)
    if name == "resnet":
        w = rng.randint(2, 5)
        return G.resnet_mlp(w, rng.randint(1, 3), seed=seed, dtype=DT), torch.randn(b, w, dtype=DT)
    if name == "densenet":
        w = rng.randint(2, 4)
        net = G.densenet_mlp(w, rng.randint(1, 3), rng.randint(1, 3), seed=seed, dtype=DT)
        return net, torch.randn(b, w, dtype=DT)
    if name == "inception":
        w = rng.randint(2, 4)
        return G.inception_mlp(w, rng.randint(1, 2), seed=seed, dtype=DT), torch.randn(b, w, dtype=DT)
    if name == "cnn2d":
        s = rng.randint(2, 4)
        return G.small_cnn(rng.randint(1, 2), s, seed=seed, dtype=DT), torch.randn(b, 1, s, s, dtype=DT)
    if name == "cnn1d":
        s = rng.randint(3, 6)
        net = G.small_cnn(rng.randint(1, 3), s, conv1d=True, seed=seed, dtype=DT)
        return net, torch.randn(b, 1, s, dtype=DT)
    if name == "layernorm":
        w = rng.randint(2, 6)
        return G.layernorm_block(w, seed=seed, dtype=DT), torch.randn(b, w, dtype=DT)
    if name == "skipchain":
        w = rng.randint(2, 4)
        net = G.SkipChain(w, rng.randint(1, 6), rng.randint(0, 3)).to(DT)
        return net, torch.randn(b, w, dtype=DT)
    raise AssertionError(name)


FAMILIES = ["resnet", "densenet", "inception", "cnn2d", "cnn1d", "layernorm", "skipchain"]


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_match_autograd(name):
    for seed in range(2):
        torch.manual_seed(seed)
        net, x = family(name, seed)
        ref = autograd_grads(net, x, loss_fn)
        for method in all_methods():
            grads = trilib.gradients(net, x, loss_fn, method=method)
            assert list(grads) == list(ref)
            for n in ref:
                assert rel(grads[n], ref[n]) <= 1e-12, (name, seed, method, n)


class _Recorder(torch.fx.Interpreter):
    """Runs the exported graph keeping every node's output with retain_grad (the oracle)."""

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            self.kept[n.name] = out
        return out


def node_gradients(net, x, loss):
    """``{node name: dE/d value}`` by autograd through the graph torch.export records."""
    from trilib.graph.export import export_program

    program = export_program(net, x)
    own = dict(net.named_parameters())
    state = {**program.state_dict, **program.constants}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            inputs.append(x)
        elif spec.kind.name == "PARAMETER":
            inputs.append(own[spec.target].detach().requires_grad_(True))
        else:
            inputs.append(state[spec.target])
    rec = _Recorder(program.graph_module)
    rec.kept = {}
    (out,) = rec.run(*inputs)
    loss(out).backward()
    return {n: t.grad for n, t in rec.kept.items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_solution_is_dE_dx_of_every_node(name):
    torch.manual_seed(3)
    net, x = family(name, 3)
    U = trilib.backward_system(net, x, loss_fn)
    assert isinstance(U, trilib.GraphSystem) and U.upper and U.symbol == "v"
    kept = node_gradients(net, x, loss_fn)
    for method in all_methods():
        v = trilib.solve(U, method)
        for node, vi in zip(U.nodes, v):
            ref = kept[node.name].reshape(x.shape[0], -1)
            assert rel(vi, ref) <= 1e-12, (name, method, node.name)


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_matrix_solves_like_the_methods(name):
    net, x = family(name, 4)
    U = trilib.backward_system(net, x, loss_fn)
    v = trilib.solve(U, "sequential")
    for s in range(U.batch_size):
        a = U.to_dense(s)
        assert torch.equal(a, torch.triu(a)) and torch.equal(a.diagonal(), torch.ones_like(a.diagonal()))
        ref = torch.linalg.solve_triangular(a, U.rhs_dense(s)[:, None], upper=True)[:, 0]
        assert rel(torch.cat([t[s] for t in v]), ref) <= 1e-12
    # matrix-free N u (VJPs) equals the materialised blocks times u
    u = [torch.randn_like(r) for r in U.rhs]
    nu = U.apply_offdiagonal(u)
    dense = U.dense_offdiagonal()
    ref = torch.bmm(dense, torch.cat(u, -1).unsqueeze(-1)).squeeze(-1)
    assert rel(torch.cat(nu, -1), ref) <= 1e-12
    assert U.residual_norm(v) <= 1e-13


def test_pattern_is_the_graph_and_steps_follow_depth():
    net, x = family("inception", 0)
    U = trilib.backward_system(net, x, loss_fn)
    pattern = {(i, j) for i, j, _ in U.dense_blocks(0)}
    assert pattern == set(U.graph.edges) and all(i < j for i, j in pattern)
    depth = nx.dag_longest_path_length(U.graph) + 1
    assert U.depth == depth < U.k                  # branches: fewer levels than nodes
    assert sorted(i for level in U.levels for i in level) == list(range(U.k))
    for level in U.levels:                          # no edge inside a level set
        assert not any(U.graph.has_edge(a, b) for a in level for b in level)
    steps = {m: trilib.solve(U, m, return_trace=True)[1] for m in GRAPH_METHODS}
    assert steps["sequential"].steps == U.k
    assert steps["level_schedule"].steps == U.depth
    assert steps["doubling"].steps == math.ceil(math.log2(U.depth))
    assert steps["sequential"].work == steps["level_schedule"].work == U.graph.number_of_edges()
    assert sum(len(p) for p in steps["level_schedule"].combines) == U.graph.number_of_edges()


def test_structured_blocks():
    net = G.layernorm_block(4, seed=0, dtype=DT)
    U = trilib.backward_system(net, torch.randn(2, 4, dtype=DT), loss_fn)
    assert [n.structure for n in U.nodes][1:] == ["dense", "diagonal", "linear"]
    blocks = U.blocks()
    assert torch.equal(blocks[(2, 3)][0], net[3].weight.t())          # N = W^T for a Linear
    b = blocks[(1, 2)]
    assert torch.equal(b, torch.diag_embed(torch.diagonal(b, dim1=-2, dim2=-1)))
    res = trilib.backward_system(G.resnet_mlp(3, 1, seed=0, dtype=DT), torch.randn(2, 3, dtype=DT), loss_fn)
    add = res.nodes[-1]
    assert add.op == "add in 0" and add.structure == "diagonal"
    assert torch.equal(res.blocks()[(add.parents[0], res.k - 1)][0], torch.eye(3, dtype=DT))


def test_single_node_graph_and_with_rhs():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)).to(DT)
    x = torch.randn(2, 3, dtype=DT)
    U = trilib.backward_system(net, x, loss_fn)
    for m in GRAPH_METHODS:
        v, ref = trilib.solve(U, m), trilib.solve(U, "sequential")
        assert rel(torch.cat(list(v), -1), torch.cat(list(ref), -1)) < 1e-13
    r = [torch.randn_like(t) for t in U.rhs]
    V = U.with_rhs(r)
    assert isinstance(V, trilib.GraphSystem) and V.rhs[0] is r[0]
    ref = torch.linalg.solve_triangular(V.to_dense(1), V.rhs_dense(1)[:, None], upper=True)[:, 0]
    assert rel(torch.cat([t[1] for t in trilib.solve(V, "doubling")]), ref) < 1e-12


class SharedAndFunctional(nn.Module):
    """One Linear used twice, and a parameter read through get_attr (F.linear)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.w = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        h = self.fc(torch.tanh(self.fc(x)))
        h = h.view(h.shape[0], 1, 3).reshape(h.shape[0], 3) * 2.0
        return F.linear(h + h, self.w.t().t())


def test_shared_parameters_get_attr_reshapes():
    torch.manual_seed(0)
    net = SharedAndFunctional().to(DT)
    x = torch.randn(3, 3, dtype=DT)
    ref = autograd_grads(net, x, loss_fn)
    for m in all_methods():
        grads = trilib.gradients(net, x, loss_fn, method=m)
        for n in ref:
            assert rel(grads[n], ref[n]) <= 1e-12, (m, n)


class Split(nn.Module):
    """chunk (a tuple-valued node) feeding two branches that merge again."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        a, b = torch.chunk(self.fc(x), 2, dim=1)
        return torch.cat([a * torch.sigmoid(b), b.flatten(1)], dim=1)


def test_tuple_nodes_are_inlined():
    net = Split().to(DT)
    x = torch.randn(2, 4, dtype=DT)
    U = trilib.backward_system(net, x, loss_fn)
    assert all(len(n.shape) >= 1 for n in U.nodes)
    ref = autograd_grads(net, x, loss_fn)
    grads = trilib.gradients(net, x, loss_fn, method="doubling")
    assert all(rel(grads[n], ref[n]) <= 1e-12 for n in ref)


def test_routing_fnn_stays_fnn_and_layernorm_goes_to_graph():
    fnn_net = trilib.nets.mlp([3, 4, 2], activation="tanh", seed=0, dtype=DT)
    x = torch.randn(2, 3, dtype=DT)
    assert isinstance(trilib.backward_system(fnn_net, x, loss_fn), trilib.BlockBidiagonalSystem)
    ln = G.layernorm_block(3, seed=0, dtype=DT)
    assert isinstance(trilib.backward_system(ln, x, loss_fn), trilib.GraphSystem)
    with pytest.raises(ValueError, match="expects 5 input"):       # FNN's own message is kept
        trilib.backward_system(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)).to(DT), x, loss_fn)


class ValueControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = self.fc(x)
        return h * 2 if h.sum() > 0 else h


class MixesSamples(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) - self.fc(x).mean(0)


class Constant(nn.Module):
    def forward(self, x):
        return torch.ones(2, 3, dtype=torch.float64)


class _OldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, g):
        return g                    # straight through: export would record round's zero derivative


class CustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return _OldStyle.apply(self.fc(x) * 1.5)


def backward_hooked():
    net = G.resnet_mlp(3, 1)
    net[0].fc1.register_full_backward_hook(lambda m, gi, go: (gi[0] * 2,))
    return net


@pytest.mark.parametrize("module, match", [
    (ValueControlFlow(), r"torch.export cannot capture ValueControlFlow.*test_graph.py:\d+ "
                         r"\(return h \* 2 if h.sum\(\) > 0 else h\).*control flow"),
    (MixesSamples(), r"operation mean .*test_graph.py:\d+ .*cannot find the batch"),
    (Constant(), "returns nothing computed from its parameters and x"),
    (CustomFunction(), r"custom torch.autograd.Function _OldStyle"),
    (backward_hooked(), r"module '0.fc1' \(Linear\) has a backward hook"),
    (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), r"BatchNorm1d\) is in training mode.*eval"),
    (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), r"Dropout\) is in training mode"),
])
def test_clear_errors(module, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        trilib.backward_system(module.to(DT), torch.randn(4, 3, dtype=DT), loss_fn)


class IntegerOp(nn.Module):
    """An integer operation on an unknown is data: autograd does not differentiate it either."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = self.fc(x)
        return h * h.argmax(dim=1, keepdim=True), h.tanh()      # a tuple: loss_fn gets it


def test_integer_ops_are_data_and_tuples_reach_loss_fn():
    net = IntegerOp().to(DT)
    x = torch.randn(4, 3, dtype=DT)
    tuple_loss = lambda out: loss_fn(out[0]) + out[1].sum()  # noqa: E731
    ref = autograd_grads(net, x, tuple_loss)
    for m in all_methods():
        grads = trilib.gradients(net, x, tuple_loss, method=m)
        assert all(rel(grads[n], ref[n]) <= 1e-12 for n in ref), m


def test_a_model_that_needs_two_inputs_is_named():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ValueError, match="model fails on x of shape .*missing 1 required positional"):
        trilib.backward_system(TwoInputs(), torch.randn(4, 3, dtype=DT), loss_fn)


def test_a_model_that_cannot_run_on_x_blames_x():
    with pytest.raises(ValueError, match=r"fails on x of shape \(4, 3\) in module 1 \(Linear\).*mat1"):
        trilib.backward_system(nn.Sequential(nn.LayerNorm(3), nn.Linear(5, 2)).to(DT),
                               torch.randn(4, 3, dtype=DT), loss_fn)


def test_eval_mode_batchnorm_works():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh()).to(DT).eval()
    x = torch.randn(4, 3, dtype=DT)
    ref = autograd_grads(net, x, loss_fn)
    grads = trilib.gradients(net, x, loss_fn, method="level_schedule")
    assert all(rel(grads[n], ref[n]) <= 1e-12 for n in ref)


def test_input_errors():
    net = G.resnet_mlp(3, 1, seed=0, dtype=DT)
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        trilib.backward_system(net, torch.randn(2, 3), loss_fn)
    with pytest.raises(ValueError, match=r"leading batch dimension.*unsqueeze"):
        trilib.backward_system(net, torch.randn(3, dtype=DT), loss_fn)
    with pytest.raises(ValueError, match="non-finite"):
        trilib.backward_system(net, torch.full((2, 3), float("nan"), dtype=DT), loss_fn)
    with pytest.raises(ValueError, match="scalar"):
        trilib.backward_system(net, torch.randn(2, 3, dtype=DT), lambda out: out)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        G.capture(lambda x: x, torch.randn(2, 3))
    with pytest.raises(TypeError, match="give either g"):
        G.capture(net, torch.randn(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="g has shape"):
        G.capture(net, torch.randn(2, 3, dtype=DT), g=torch.randn(2, 4, dtype=DT))
    with pytest.raises(ValueError, match="need width >= 1"):
        G.SkipChain(0, 1, 1)


def test_capture_with_given_g():
    net = G.inception_mlp(3, 1, seed=0, dtype=DT)
    x = torch.randn(2, 3, dtype=DT)
    g = torch.randn(2, 3, dtype=DT)
    U, loss, _ = G.capture(net, x, g=g)
    assert loss is None and torch.equal(U.rhs[-1], g)


def test_memory_limit_guards_materialised_methods(monkeypatch):
    net, x = family("cnn2d", 0)
    U = trilib.backward_system(net, x, loss_fn)
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", 64)
    with pytest.raises(MemoryLimitError, match=r"doubling .*N, its square .*'level_schedule'"):
        trilib.solve(U, "doubling")
    for m in ("sequential", "level_schedule"):      # matrix-free: no materialisation
        trilib.solve(U, m)


def test_jacobi_converges_in_depth_sweeps():
    net, x = family("inception", 1)
    U = trilib.backward_system(net, x, loss_fn)
    v, trace = trilib.solve(U, "jacobi", return_trace=True)
    ref = trilib.solve(U, "sequential")
    assert rel(torch.cat(list(v), -1), torch.cat(list(ref), -1)) <= 1e-12
    assert trace.steps <= U.depth + 1


def test_viz():
    import matplotlib.pyplot as plt

    net, x = family("inception", 0)
    U = trilib.backward_system(net, x, loss_fn)
    fig = trilib.viz.dag_and_spy(U)
    assert len(fig.axes) == 2
    colours = trilib.viz.level_colors(U)
    assert len(set(colours)) == U.depth and colours[U.levels[0][0]] != colours[U.levels[-1][0]]
    ax = trilib.viz.plot_graph_steps([1, 2], {"sequential": [1, 2]})
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="has 1 values but depths has 2"):
        trilib.viz.plot_graph_steps([1, 2], {"doubling": [1]})
    fnn_sys = trilib.backward_system(trilib.nets.mlp([2, 3], seed=0), torch.randn(1, 2), loss_fn)
    with pytest.raises(TypeError, match="must be a trilib.GraphSystem"):
        trilib.viz.draw_dag(fnn_sys)
    plt.close("all")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_path():
    net, x = family("cnn2d", 0)
    net, x = net.cuda(), x.cuda()
    ref = autograd_grads(net, x, loss_fn)
    for m in all_methods():
        grads = trilib.gradients(net, x, loss_fn, method=m)
        assert all(rel(grads[n], ref[n]) <= 1e-12 for n in ref)
