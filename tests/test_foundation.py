"""Foundation (issue 2): FNN systems, sequential solves and gradients against independent oracles."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import autograd_grads, rel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import trilib
from trilib._autograd import ELEMENTWISE

ACTIVATIONS = [t for t in ELEMENTWISE]


def gradient_rel_err(ours: dict, ref: dict) -> float:
    """Relative error of the whole gradient (all parameters as one vector).

    Per-parameter relative errors are not meaningful for parameters whose gradient has vanished
    through many layers (1e-30 beside 1e-2 elsewhere): any change of rounding order, by any
    correct algorithm, makes those entries differ in their last digits relative to themselves.
    """
    assert list(ours) == list(ref)
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
    return rel(torch.cat([ours[n].flatten() for n in ref]), torch.cat([ref[n].flatten() for n in ref]))


def build(widths, acts, bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    mods = []
    for l, act in enumerate(acts):
        mods.append(nn.Linear(widths[l], widths[l + 1], bias=bias, dtype=dtype))
        if act is not None:
            mods.append(act())
    return nn.Sequential(*mods)


def cross_entropy(target):
    return lambda out: F.cross_entropy(out, target)


def mse(target):
    return lambda out: F.mse_loss(out, target)


@st.composite
def networks(draw, max_depth=64):
    k = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, 64 if k <= 8 else 16)) for _ in range(k + 1)]
    acts = [draw(st.sampled_from([*ACTIVATIONS, None])) for _ in range(k)]
    batch = draw(st.integers(1, 32))
    loss = draw(st.sampled_from(["ce", "mse"]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return widths, acts, batch, loss, bias, seed


def make_case(widths, acts, batch, loss, bias, seed, dtype):
    model = build(widths, acts, bias=bias, dtype=dtype, seed=seed)
    x = torch.randn(batch, widths[0], dtype=dtype)
    if loss == "ce":
        loss_fn = cross_entropy(torch.randint(0, widths[-1], (batch,)))
    else:
        loss_fn = mse(torch.randn(batch, widths[-1], dtype=dtype))
    return model, x, loss_fn


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_gradients_equal_autograd_float64(case):
    model, x, loss_fn = make_case(*case, dtype=torch.float64)
    ours = trilib.gradients(model, x, loss_fn)
    assert gradient_rel_err(ours, autograd_grads(model, x, loss_fn)) <= 1e-12


@settings(max_examples=20, deadline=None)
@given(networks(max_depth=16))
def test_gradients_equal_autograd_float32(case):
    model, x, loss_fn = make_case(*case, dtype=torch.float32)
    ours = trilib.gradients(model, x, loss_fn)
    assert gradient_rel_err(ours, autograd_grads(model, x, loss_fn)) <= 1e-5


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda t: t.__name__)
def test_every_activation_float64(act):
    model, x, loss_fn = make_case([5, 7, 6, 4], [act, act, act], 9, "ce", True, 1, torch.float64)
    ours, ref = trilib.gradients(model, x, loss_fn), autograd_grads(model, x, loss_fn)
    for name in ref:
        assert rel(ours[name], ref[name]) <= 1e-12


def test_composed_activations_and_nested_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.GELU(),
                          nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    loss_fn = mse(torch.randn(7, 3, dtype=torch.float64))
    ours, ref = trilib.gradients(model, x, loss_fn), autograd_grads(model, x, loss_fn)
    assert list(ours) == list(ref)
    for name in ref:
        assert rel(ours[name], ref[name]) <= 1e-12


def test_shared_layer_accumulates_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4, dtype=torch.float64)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(4, 2, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    loss_fn = lambda out: out.pow(3).sum()
    ours, ref = trilib.gradients(model, x, loss_fn), autograd_grads(model, x, loss_fn)
    assert list(ours) == list(ref)
    for name in ref:
        assert rel(ours[name], ref[name]) <= 1e-12


@settings(max_examples=25, deadline=None)
@given(networks(max_depth=12))
def test_solve_equals_dense_triangular_solve(case):
    model, x, loss_fn = make_case(*case, dtype=torch.float64)
    system = trilib.backward_system(model, x, loss_fn)
    v = trilib.solve(system)
    for s in range(system.batch_size):
        a = system.to_dense(s)
        assert torch.equal(a, torch.triu(a)) and torch.equal(a.diagonal(), torch.ones_like(a.diagonal()))
        ref = torch.linalg.solve_triangular(a, system.rhs_dense(s)[:, None], upper=True)[:, 0]
        assert rel(torch.cat([vl[s] for vl in v]), ref) <= 1e-12 or float(ref.norm()) == 0
    assert system.residual_norm(v) <= 1e-13


def test_backward_solution_is_dE_dy():
    """v_l is dE/dy_l: compare with autograd through the pre-activations themselves."""
    torch.manual_seed(3)
    model = build([3, 5, 4, 2], [nn.Tanh, nn.Softplus, None])
    x = torch.randn(6, 3, dtype=torch.float64)
    loss_fn = lambda out: out.square().sum()
    v = trilib.solve(trilib.backward_system(model, x, loss_fn))
    ys, z = [], x
    for layer in model:
        z = layer(z)
        if isinstance(layer, nn.Linear):
            z.retain_grad()
            ys.append(z)
    loss_fn(z).backward()
    for vl, y in zip(v, ys):
        assert rel(vl, y.grad) <= 1e-12


@settings(max_examples=25, deadline=None)
@given(networks(max_depth=24))
def test_forward_system_solution_is_model_output(case):
    model, x, _ = make_case(*case, dtype=torch.float64)
    system = trilib.forward_system(model, x)
    assert not system.upper
    z = trilib.solve(system)
    with torch.no_grad():
        out = model(x)
    assert rel(z[-1], out) <= 1e-12 or float(out.norm()) == 0
    a = system.to_dense(0)
    assert torch.equal(a, torch.tril(a))


def test_linear_stack_forward_system_is_explicit_and_linear():
    model = build([3, 4, 5, 2], [None, None, None])
    x = torch.randn(4, 3, dtype=torch.float64)
    system = trilib.forward_system(model, x)
    assert isinstance(system, trilib.BlockBidiagonalSystem)
    a, r = system.to_dense(1), system.rhs_dense(1)
    z = torch.linalg.solve_triangular(a, r[:, None], upper=False)[:, 0]
    with torch.no_grad():
        assert rel(z[-2:], model(x)[1]) <= 1e-12
        assert torch.allclose(system.rhs[0], model[0](x))
    # sub-diagonal blocks are -W_l
    assert torch.equal(a[4:9, 0:4], -model[1].weight.detach())


def test_nonlinear_forward_system_and_newton_linearisation():
    model = build([3, 4, 4, 2], [nn.Tanh, nn.Sigmoid, None])
    x = torch.randn(5, 3, dtype=torch.float64)
    system = trilib.forward_system(model, x)
    assert isinstance(system, trilib.NonlinearForwardSystem)
    z = trilib.solve(system)
    assert system.residual_norm(z) == 0.0
    assert all(float(r.abs().max()) == 0 for r in system.rhs)
    # the linearisation at the solution is dF/dz: check one block against autograd
    lin = system.linearize(z)
    jac = torch.autograd.functional.jacobian(model[2:4], z[0][2])
    got = dict(((i, j), b) for i, j, b in lin.dense_blocks(2))[(1, 0)]
    assert rel(got, jac) <= 1e-12
    assert torch.equal(system.to_dense(2), lin.to_dense(2))


def test_system_attributes():
    model = build([3, 6, 5, 2], [nn.ReLU, nn.Tanh, None], dtype=torch.float32)
    x = torch.randn(4, 3)
    s = trilib.backward_system(model, x, lambda out: out.sum())
    assert (s.k, s.block_sizes, s.batch_size, s.upper) == (3, (6, 5, 2), 4, True)
    assert s.dtype == torch.float32 and s.device == torch.device("cpu")
    assert len(s.rhs) == 3 and s.rhs[-1].shape == (4, 2)
    assert s.to_dense(0).shape == (13, 13)
    v, trace = trilib.solve(s, return_trace=True)
    assert [t.shape for t in v] == [(4, 6), (4, 5), (4, 2)]
    assert (trace.steps, trace.work) == (3, 2)
    assert trace.combines == [[], [(1, 2)], [(0, 1)]]
    assert "upper" in repr(s) and "k=3" in repr(s)
    assert "sequential" in trilib.methods() and "sequential" in trilib.methods(s)
    with pytest.raises(IndexError, match="sample"):
        s.to_dense(4)
    with pytest.raises(ValueError, match="must have 3 blocks, got 2"):
        s.residual(v[:2])


# -- bad input ----------------------------------------------------------------------------------

def small():
    return build([3, 4, 2], [nn.Tanh, None]), torch.randn(5, 3, dtype=torch.float64)


def test_unsupported_layer_is_named_with_its_index():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(trilib.UnsupportedLayerError, match=r"layer 2 \(BatchNorm1d\).*Linear.*Tanh"):
        trilib.forward_system(model, torch.randn(5, 3))
    with pytest.raises(trilib.UnsupportedLayerError, match=r"layer 2 \(BatchNorm1d\)"):
        trilib.backward_system(model, torch.randn(5, 3), lambda out: out.sum())
    with pytest.raises(trilib.UnsupportedLayerError, match=r"layer 0 \(ReLU\) comes before"):
        trilib.forward_system(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), torch.randn(5, 3))


def test_mismatched_shapes():
    model, x = small()
    with pytest.raises(ValueError, match="x has 4 features but the first Linear expects 3"):
        trilib.gradients(model, torch.randn(5, 4, dtype=torch.float64), lambda out: out.sum())
    with pytest.raises(ValueError, match="x must be 2-D.*unsqueeze"):
        trilib.gradients(model, x[0], lambda out: out.sum())
    bad = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="expects 5 input features but the previous Linear produces 4"):
        trilib.backward_system(bad, torch.randn(2, 3), lambda out: out.sum())


def test_dtype_and_device_mismatch():
    model, x = small()
    with pytest.raises(TypeError,
                       match="x has dtype torch.float32 but the model's parameters are torch.float64"):
        trilib.gradients(model, x.float(), lambda out: out.sum())
    with pytest.raises(TypeError, match="floating dtype"):
        trilib.gradients(model, x.long(), lambda out: out.sum())
    with pytest.raises(ValueError, match="is on device meta but the model's parameters are on cpu"):
        trilib.gradients(model, x.to("meta"), lambda out: out.sum())


def test_non_finite_input_and_parameters():
    model, x = small()
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        trilib.backward_system(model, x, lambda out: out.sum())
    model, x = small()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        trilib.forward_system(model, x)


def test_empty_model():
    with pytest.raises(ValueError, match="no nn.Linear"):
        trilib.backward_system(nn.Sequential(), torch.randn(2, 3), lambda out: out.sum())


def test_bad_loss():
    model, x = small()
    with pytest.raises(ValueError, match="must return a scalar.*shape \\(5, 2\\)"):
        trilib.gradients(model, x, lambda out: out)
    with pytest.raises(TypeError, match="scalar torch.Tensor, got float"):
        trilib.gradients(model, x, lambda out: 1.0)
    with pytest.raises(ValueError, match="does not depend on the model output"):
        trilib.gradients(model, x, lambda out: torch.tensor(1.0))
    with pytest.raises(ValueError, match="non-finite loss"):
        trilib.gradients(model, x, lambda out: out.sum() * math.inf)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        trilib.gradients(model, x, "mse")


def test_unknown_method_lists_valid_ones():
    model, x = small()
    with pytest.raises(ValueError,
                       match="unknown method .magic.; valid methods are: sequential, recursive_doubling"):
        trilib.gradients(model, x, lambda out: out.sum(), method="magic")
    with pytest.raises(ValueError, match="unknown method"):
        trilib.solve(trilib.backward_system(model, x, lambda out: out.sum()), method="magic")
    with pytest.raises(TypeError, match="trilib system"):
        trilib.solve(torch.eye(3))


def test_memory_estimate_guards_to_dense(monkeypatch):
    model, x = small()
    system = trilib.backward_system(model, x, lambda out: out.sum())
    monkeypatch.setattr(trilib.config, "memory_limit_bytes", 100)
    with pytest.raises(trilib.MemoryLimitError, match=r"6x6 system would need about 288 B"):
        system.to_dense()


def test_system_constructor_checks_block_shapes():
    rhs = [torch.zeros(2, 3), torch.zeros(2, 4)]
    with pytest.raises(ValueError, match=r"B_1 has shape \(4, 3\) but block widths say \(3, 4\)"):
        trilib.BlockBidiagonalSystem([torch.zeros(4, 3)], [None], rhs, upper=True)
    with pytest.raises(ValueError, match="need 1 coupling blocks"):
        trilib.BlockBidiagonalSystem([], [], rhs, upper=True)
