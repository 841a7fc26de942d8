"""No silent wrong gradient (issue 19): every feature that makes a module compute other than
its class says (hooks, patched or overridden forwards, parametrizations, pruning, tied weights,
in-place activations) is either computed exactly by every method ``trilib.methods(system)``
lists, or refused before any solve with an error naming the module and the feature.

Oracle: ``torch.autograd`` on the same model, float64, relative error <= 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from conftest import F64, autograd_grads, grad_error, linear_stack
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import trilib
from trilib._checks import UnsupportedLayerError
from trilib._features import module_features

EXACT = 1e-10


def skewed_loss(out):
    return out.square().sum() + out[:, 0].sum()


def tanh_mlp(act=nn.Tanh):
    return linear_stack(act, [4, 6, 5, 3], seed=0)


class Doubled(nn.Linear):
    """A Linear subclass with its own forward."""

    def forward(self, x):
        return 2 * super().forward(x)


class Scale(nn.Module):
    def forward(self, w):
        return 1.5 * w


class LowRank(nn.Module):
    """A LoRA-style parametrization with parameters of its own: W + B A, the base W frozen."""

    def __init__(self, rows, cols, rank=2):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, cols, dtype=F64))
        self.b = nn.Parameter(torch.randn(rows, rank, dtype=F64))

    def forward(self, w):
        return w + self.b @ self.a


def _low_rank(frozen=False):
    net = tanh_mlp()
    net[2].weight.requires_grad_(not frozen)
    parametrize.register_parametrization(net[2], "weight", LowRank(5, 6))
    return net


def _patched():
    net = tanh_mlp()
    inner = net[2].forward
    net[2].forward = lambda x: inner(x) + 0.5 * x[:, :5]      # LoRA-style: a patch on the instance
    return net


def _hooked(index, kind, hook):
    net = tanh_mlp()
    getattr(net[index], f"register_forward_{kind}")(hook)
    return net


def _pruned():
    net = tanh_mlp()
    prune.l1_unstructured(net[2], "weight", amount=0.5)
    prune.random_unstructured(net[4], "bias", amount=0.4)
    return net


def _tied():
    net = linear_stack(nn.Tanh, [5, 5, 5, 5], seed=1)
    net[4].weight = net[0].weight                   # two Linears, one weight
    net[2].bias = net[0].bias
    return net


def _reused():
    torch.manual_seed(2)
    lin = nn.Linear(5, 5, dtype=F64)
    return nn.Sequential(lin, nn.Tanh(), lin, nn.Sigmoid(), nn.Linear(5, 3, dtype=F64))


def _parametrized():
    net = tanh_mlp()
    parametrize.register_parametrization(net[2], "weight", Scale())
    parametrize.register_parametrization(net[4], "bias", Scale())
    return net


def _weight_norm():
    net = tanh_mlp()
    net[0] = parametrizations.weight_norm(net[0])
    return net


def _spectral_eval():
    net = tanh_mlp()
    net[2] = parametrizations.spectral_norm(net[2])
    net(torch.randn(2, 4, dtype=F64))               # one power iteration, then frozen
    return net.eval()


def _nested_hook():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5, dtype=F64), nn.Sequential(nn.Tanh(), nn.Linear(5, 3, dtype=F64)))
    net[1][1].register_forward_hook(lambda m, i, o: o * o)
    return net


def _subclass():
    net = tanh_mlp()
    torch.manual_seed(4)
    net[2] = Doubled(6, 5, dtype=F64)
    return net


def _old_weight_norm():
    net = tanh_mlp()
    with pytest.warns(FutureWarning):
        net[2] = nn.utils.weight_norm(net[2])           # the hook-based API: a forward pre-hook
    return net


def _tied_graph():
    net = linear_stack(nn.Tanh, [4, 4, 4], seed=5)
    net.append(nn.LayerNorm(4, dtype=F64))          # not an FNN: the graph builder's
    net[2].weight = net[0].weight
    return net


# name -> (model factory, the builder it must reach: the graph builder for computations the FNN
# parse cannot read by class, the FNN system for those it computes exactly)
GRAPH, FNN = "graph", "fnn"
EXACT_CASES = {
    "forward hook on a Linear": (lambda: _hooked(2, "hook", lambda m, i, o: 2 * o + 1), GRAPH),
    "forward pre-hook": (lambda: _hooked(2, "pre_hook", lambda m, i: (3 * i[0],)), GRAPH),
    "hook on a Tanh": (lambda: _hooked(1, "hook", lambda m, i, o: o + o.sum(1, keepdim=True)),
                       GRAPH),
    "hook returning None": (lambda: _hooked(3, "hook", lambda m, i, o: None), GRAPH),
    "patched forward": (_patched, GRAPH),
    "subclass forward": (_subclass, GRAPH),
    "hook in a nested Sequential": (_nested_hook, GRAPH),
    "pruning": (_pruned, FNN),
    "tied weights": (_tied, FNN),
    "a Linear used twice": (_reused, FNN),
    "tied weights in a graph": (_tied_graph, GRAPH),
    "weight_norm (hook-based)": (_old_weight_norm, GRAPH),
    "spectral_norm (hook-based) in eval mode": (lambda: _old_spectral_training().eval(), GRAPH),
    "parametrization": (_parametrized, FNN),
    "low-rank parametrization": (_low_rank, FNN),
    "weight_norm": (_weight_norm, FNN),
    "spectral_norm in eval mode": (_spectral_eval, FNN),
    "ReLU(inplace=True)": (lambda: tanh_mlp(lambda: nn.ReLU(inplace=True)), FNN),
}


def _x(net, batch=3):
    return torch.randn(batch, 4 if net[0].in_features == 4 else 5, dtype=F64,
                       generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_every_method_gives_autograds_gradients(case):
    make, system_type = EXACT_CASES[case]
    net = make()
    x = _x(net)
    problem = trilib.api.backward_problem(net, x, skewed_loss)
    assert isinstance(problem.system, trilib.BlockBidiagonalSystem) == (system_type == FNN)
    ref = autograd_grads(net, x, skewed_loss)
    methods = trilib.methods(problem.system)
    assert len(methods) >= 4
    for method in methods:
        grads = problem.parameter_gradients(trilib.solve(problem.system, method))
        assert grad_error(grads, ref) <= EXACT, (case, method)
    assert grad_error(trilib.gradients(net, x, skewed_loss, method=methods[-1]), ref) <= EXACT


@pytest.mark.parametrize("case", ["forward hook on a Linear", "pruning", "tied weights", "weight_norm",
                                  "patched forward"])
def test_backward_fills_grad_and_training_follows_autograd(case):
    make, _ = EXACT_CASES[case]
    ours, theirs = make(), make()                  # seeded: two equal models
    x = _x(ours)
    trilib.backward(ours, x, skewed_loss, method="sequential")
    skewed_loss(theirs(x)).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=EXACT, atol=EXACT), n
    method = "blelloch" if case in ("pruning", "tied weights", "weight_norm") else "level_schedule"
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ours, theirs)]
    for _ in range(3):
        trilib.training.train_step(ours, x, skewed_loss, opts[0], method=method)
        opts[1].zero_grad()
        skewed_loss(theirs(x)).backward()
        opts[1].step()
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), n


def test_a_global_forward_hook_is_honoured():
    net, x = tanh_mlp(), torch.randn(3, 4, dtype=F64)
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: 1.5 * o if isinstance(m, nn.Tanh) else None)
    try:
        problem = trilib.api.backward_problem(net, x, skewed_loss)
        ref = autograd_grads(net, x, skewed_loss)
        for method in trilib.methods(problem.system):
            grads = problem.parameter_gradients(trilib.solve(problem.system, method))
            assert grad_error(grads, ref) <= EXACT, method
    finally:
        handle.remove()
    assert isinstance(trilib.backward_system(net, x, skewed_loss), trilib.BlockBidiagonalSystem)


def _backward_hooked():
    net = tanh_mlp()
    net[2].register_full_backward_hook(lambda m, gi, go: (2 * gi[0],))
    return net


def _grad_hooked():
    net = tanh_mlp()
    net[0].weight.register_hook(lambda g: 3 * g)
    return net


def _old_spectral_training():
    net = tanh_mlp()
    net[2] = nn.utils.spectral_norm(net[2])             # the hook-based API
    return net


def _spectral_training():
    net = tanh_mlp()
    net[2] = parametrizations.spectral_norm(net[2])
    return net


def _hooked_rnn():
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, dtype=F64)
    rnn.register_forward_hook(lambda m, i, o: (2 * o[0], o[1]))
    return rnn


def _hooked_gru():
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, dtype=F64)
    parametrize.register_parametrization(gru, "weight_hh_l0", Scale())
    return gru


class MyRNN(nn.RNN):
    def forward(self, x, h=None):
        out, h = super().forward(x, h)
        return out * 2, h


def _rnn_subclass():
    torch.manual_seed(0)
    return MyRNN(3, 4, dtype=F64)


# name -> (factory, the module name and feature the error must say)
REFUSED = {
    "full backward hook": (_backward_hooked, "'2' (Linear) has a backward hook"),
    "gradient hook on a weight": (_grad_hooked, "'0' (Linear) has a gradient hook on a parameter"),
    "spectral_norm in training mode": (_spectral_training, "has a stateful parametrization"),
    "old spectral_norm in training mode": (_old_spectral_training, "(Linear) has a stateful parametrization"),
    "forward hook on an nn.RNN": (_hooked_rnn, "(RNN) has a forward hook"),
    "parametrized nn.GRU": (_hooked_gru, "has a parametrization (weight_hh_l0: Scale)"),
    "nn.RNN subclass with its own forward": (_rnn_subclass, "(MyRNN) has its own forward"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_exact_is_refused_naming_module_and_feature(case):
    make, says = REFUSED[case]
    net = make()
    x = torch.randn(5, 2, 3, dtype=F64) if isinstance(net, nn.RNNBase) else torch.randn(3, 4, dtype=F64)
    with pytest.raises(UnsupportedLayerError, match="torch.autograd") as info:
        trilib.backward_system(net, x, skewed_loss if not isinstance(net, nn.RNNBase)
                               else (lambda out: out[0].square().sum()))
    assert says in str(info.value)


def test_forward_system_refuses_hooks_and_computes_pruned_and_parametrized_weights():
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(UnsupportedLayerError, match=r"module '2' \(Linear\) has a forward pre-hook"):
        trilib.forward_system(_hooked(2, "pre_hook", lambda m, i: (3 * i[0],)), x)
    for net in (_pruned(), _parametrized()):
        for method in ("sequential", "jacobi", "newton"):
            assert torch.allclose(trilib.forward(net, x, method), net(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(UnsupportedLayerError, match="forward hook"):
        trilib.forward(_hooked_rnn(), torch.randn(5, 2, 3, dtype=F64))


def test_a_hook_added_after_a_parse_is_seen():
    net, x = tanh_mlp(), torch.randn(3, 4, dtype=F64)
    assert isinstance(trilib.backward_system(net, x, skewed_loss), trilib.BlockBidiagonalSystem)
    handle = net[1].register_forward_hook(lambda m, i, o: 2 * o)
    assert not isinstance(trilib.backward_system(net, x, skewed_loss), trilib.BlockBidiagonalSystem)
    with pytest.raises(UnsupportedLayerError, match=r"module '1' \(Tanh\) has a forward hook"):
        trilib.fnn.parse_sequential(net)
    handle.remove()
    assert isinstance(trilib.backward_system(net, x, skewed_loss), trilib.BlockBidiagonalSystem)


def test_a_patch_or_a_hooked_module_added_after_a_parse_is_seen():
    net, x = tanh_mlp(), torch.randn(3, 4, dtype=F64)
    hooked = nn.Linear(6, 5, dtype=F64)
    hooked.register_forward_hook(lambda m, i, o: 2 * o)       # before the parse: no later hook
    trilib.backward_system(net, x, skewed_loss)
    net[2] = hooked
    with pytest.raises(UnsupportedLayerError, match=r"module '2' \(Linear\) has a forward hook"):
        trilib.fnn.parse_sequential(net)
    net = tanh_mlp()
    trilib.backward_system(net, x, skewed_loss)
    net[4].forward = lambda z: torch.zeros(len(z), 3, dtype=F64)
    with pytest.raises(UnsupportedLayerError, match=r"module '4' \(Linear\) has a patched forward"):
        trilib.fnn.parse_sequential(net)
    del net[4].forward
    trilib.fnn.parse_sequential(net)
    net[2].__class__ = Doubled                                 # a class swapped on the instance
    with pytest.raises(UnsupportedLayerError, match=r"module '2' \(Doubled\) has its own forward"):
        trilib.fnn.parse_sequential(net)


def test_module_features_names_each_feature_once():
    net = _pruned()
    net[0] = parametrizations.weight_norm(net[0])
    net[1] = nn.ReLU(inplace=True)
    net[4].register_forward_pre_hook(lambda m, i: None)
    found = {(f.module, f.feature) for f in module_features(net)}
    assert found == {("0", "a parametrization"), ("1", "inplace=True"), ("2", "pruning"),
                     ("4", "pruning"), ("4", "a forward pre-hook")}
    assert module_features(tanh_mlp()) == []
    tied = {(f.module, f.feature, f.detail) for f in module_features(_tied())}
    assert tied == {("4", "a shared parameter", "4.weight is 0.weight"),
                    ("2", "a shared parameter", "2.bias is 0.bias")}


def test_inplace_refusal_by_the_graph_builder_says_inplace_false_works():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4, dtype=F64), nn.ReLU(inplace=True),
                        nn.Linear(4, 4, dtype=F64), nn.ReLU(inplace=True), nn.LayerNorm(4, dtype=F64))
    x = torch.randn(3, 4, dtype=F64)
    try:
        problem = trilib.api.backward_problem(net, x, skewed_loss)
    except UnsupportedLayerError as e:
        assert "inplace=False" in str(e) and "'1'" in str(e)
    else:                        # a graph builder that accepts in-place modules must be exact
        ref = autograd_grads(net, x, skewed_loss)
        for method in trilib.methods(problem.system):
            grads = problem.parameter_gradients(trilib.solve(problem.system, method))
            assert grad_error(grads, ref) <= EXACT, method


def test_token_ids_are_never_told_to_become_floats():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 4, dtype=F64), nn.Flatten(), nn.Linear(12, 3, dtype=F64))
    ids = torch.randint(0, 10, (2, 3))
    try:
        problem = trilib.api.backward_problem(net, ids, skewed_loss)
    except UnsupportedLayerError as e:              # a builder that cannot start at an embedding
        assert "int64 ids for the embedding '0' (Embedding)" in str(e)
        assert "converting them to floats would break the embedding" in str(e)
    else:                                           # one that takes ids as data must be exact
        ref = autograd_grads(net, ids, skewed_loss)
        for method in trilib.methods(problem.system):
            grads = problem.parameter_gradients(trilib.solve(problem.system, method))
            assert grad_error(grads, ref) <= EXACT, method
    with pytest.raises(TypeError, match=r"convert it with x.to\(torch.float64\) if it holds numbers"):
        trilib.gradients(tanh_mlp(), ids[:, :1].expand(2, 4), skewed_loss)


def test_a_global_backward_hook_or_a_post_accumulate_hook_is_refused():
    x = torch.randn(3, 4, dtype=F64)
    handle = nn.modules.module.register_module_full_backward_hook(lambda m, gi, go: None)
    try:
        with pytest.raises(UnsupportedLayerError, match=r"every module .* has a global backward hook"):
            trilib.backward_system(tanh_mlp(), x, skewed_loss)
    finally:
        handle.remove()
    net = tanh_mlp()
    net[4].bias.register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(UnsupportedLayerError, match=r"'4' \(Linear\) has a gradient hook .* \(bias\)"):
        trilib.backward_system(net, x, skewed_loss)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b = nn.Linear(4, 5, dtype=F64), nn.Linear(5, 3, dtype=F64)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _container_hooked():
    net = nn.Sequential(nn.Linear(4, 4, dtype=F64), nn.Sequential(nn.Tanh(), nn.Linear(4, 3, dtype=F64)))
    net[1].register_forward_hook(lambda m, i, o: o.flip(1))
    return net


def _root_patched():
    net = tanh_mlp()
    net.forward = lambda z: nn.Sequential.forward(net, z) * 3
    return net


def _root_hooked(model, kind="hook"):
    hook = (lambda m, i, o: 2 * o) if kind == "hook" else (lambda m, i: (i[0] * 2,))
    getattr(model, f"register_forward_{kind}")(hook)
    return model


# hooks and patches the graph builder's capture may not run (on the model itself, on a container
# it traces through): exact with every method, or refused naming the module and the feature
ROOT_CASES = {
    "forward hook on the Sequential itself": (lambda: _root_hooked(tanh_mlp()),
                                              "'(the model)' (Sequential) has a forward hook"),
    "forward pre-hook on the Sequential itself": (lambda: _root_hooked(tanh_mlp(), "pre_hook"),
                                                  "'(the model)' (Sequential) has a forward pre-hook"),
    "forward patched on the Sequential itself": (_root_patched, "(Sequential) has a patched forward"),
    "forward hook on a custom model": (lambda: _root_hooked(Block()),
                                       "'(the model)' (Block) has a forward hook"),
    "forward hook on a nested Sequential": (_container_hooked, "'1' (Sequential) has a forward hook"),
}


@pytest.mark.parametrize("case", list(ROOT_CASES))
def test_hooks_the_capture_may_miss_are_exact_or_refused(case):
    make, says = ROOT_CASES[case]
    net, x = make(), torch.randn(3, 4, dtype=F64)
    try:
        problem = trilib.api.backward_problem(net, x, skewed_loss)
    except UnsupportedLayerError as e:
        assert says in str(e) and "differs from model(x)" in str(e)
        return
    ref = autograd_grads(net, x, skewed_loss)
    for method in trilib.methods(problem.system):
        grads = problem.parameter_gradients(trilib.solve(problem.system, method))
        assert grad_error(grads, ref) <= EXACT, method


def test_a_frozen_base_under_a_low_rank_parametrization():
    net, x = _low_rank(frozen=True), torch.randn(3, 4, dtype=F64)
    assert isinstance(trilib.backward_system(net, x, skewed_loss), trilib.BlockBidiagonalSystem)
    for method in ("sequential", "blelloch", "jacobi"):
        assert trilib.compare_to_autograd(net, x, skewed_loss, method=method) <= EXACT
