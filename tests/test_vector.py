"""BlockVector, the solution type every solve returns: a sequence of k blocks that keeps the
stack a parallel solver made, so that no tensor per block is made unless one is asked for."""

from __future__ import annotations

import pytest
import torch
from conftest import rel

import trilib
from trilib.systems import BlockBidiagonalSystem, BlockVector

DIRECT = trilib.methods(BlockBidiagonalSystem, family="direct")


def mixed_stack():
    # k = 4 blocks of widths 3, 3, 2, 3 in a (4, batch = 2, 3) stack; block 2 is padded
    return torch.arange(24.0).view(4, 2, 3), (3, 3, 2, 3)


def test_from_stack_is_a_sequence_of_views():
    stack, widths = mixed_stack()
    v = BlockVector.from_stack(stack, widths)
    assert len(v) == 4 and [tuple(b.shape) for b in v] == [(2, 3), (2, 3), (2, 2), (2, 3)]
    assert torch.equal(v[2], stack[2, :, :2]) and torch.equal(v[-1], stack[3])
    assert all(b.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr() for b in v)
    assert isinstance(v[1:3], list) and [tuple(b.shape) for b in v[1:3]] == [(2, 3), (2, 2)]
    a, b, c, d = v                                          # unpacks like a list
    assert torch.equal(c, v[2])
    with pytest.raises(IndexError):
        v[4]


def test_listed_and_stacked_forms_agree():
    stack, widths = mixed_stack()
    from_stack = BlockVector.from_stack(stack, widths)
    from_list = BlockVector([b.clone() for b in from_stack])
    for i in range(-4, 4):
        assert torch.equal(from_stack[i], from_list[i])
    assert torch.equal(from_stack.stacked(0, 2), from_list.stacked(0, 2))
    assert from_stack.stacked(0, 2).data_ptr() == stack.data_ptr()      # a view, not a copy
    assert BlockVector.of(from_list) is from_list


@pytest.mark.parametrize("start,stop,message", [
    (0, 4, r"widths \[2, 3\]"), (2, 2, "start < stop"), (0, 5, "stop <= k"), (-1, 2, "0 <= start")])
def test_stacked_rejects_what_does_not_stack(start, stop, message):
    stack, widths = mixed_stack()
    stacked = BlockVector.from_stack(stack, widths)
    for v in (stacked, BlockVector(list(stacked))):
        with pytest.raises(ValueError, match=message):
            v.stacked(start, stop)


@pytest.mark.parametrize("stack,widths,message", [
    (torch.zeros(3), None, "one row per block"), (torch.zeros(3, 2, 2), (2, 2), "k = 3"),
    (torch.zeros(3, 2, 2), (2, 2, 5), r"in \[0, 2\]")])
def test_from_stack_checks_its_arguments(stack, widths, message):
    with pytest.raises(ValueError, match=message):
        BlockVector.from_stack(stack, widths)


def test_repr_names_sizes_not_values():
    stack, widths = mixed_stack()
    assert repr(BlockVector.from_stack(stack, widths)) == (
        "BlockVector(k=4, batch=(2,), widths=2..3, dtype=torch.float32, device=cpu)")
    assert repr(BlockVector([])) == "BlockVector(k=0)"


@pytest.mark.parametrize("method", trilib.methods(BlockBidiagonalSystem))
def test_every_method_returns_a_block_vector_equal_to_substitution(method):
    net = trilib.nets.mlp([3, 5, 2, 4, 4, 2], seed=0, dtype=torch.float64)
    U = trilib.backward_system(net, torch.randn(3, 3, dtype=torch.float64), lambda o: o.square().sum())
    v, ref = trilib.solve(U, method), trilib.solve(U, "sequential")
    assert isinstance(v, BlockVector) and len(v) == U.k
    assert rel(torch.cat(list(v), -1), torch.cat(list(ref), -1)) <= 1e-12
    assert U.residual_norm(v) <= 1e-12


@pytest.mark.parametrize("method", DIRECT)
def test_direct_solvers_hand_back_their_stack(method):
    """The blocks are views of one stack the solver wrote (stacking them again copies nothing),
    padded where a block is narrower."""
    net = trilib.nets.mlp([3, 4, 4, 2, 4, 4], seed=0, dtype=torch.float64)
    U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
    v = trilib.solve(U, method)
    storage = v.stacked(0, 2).untyped_storage().data_ptr()
    assert all(b.untyped_storage().data_ptr() == storage for b in v)
    assert v.stacked(0, 2).data_ptr() == v.stacked(0, 2).data_ptr() == v[0].data_ptr()


def test_has_shapes_answers_from_the_stack():
    stack, widths = mixed_stack()
    v = BlockVector.from_stack(stack, widths)
    assert v.has_shapes(widths, (2,)) and not v.has_shapes((3, 3, 3, 3), (2,))
    assert not v.has_shapes(widths, (3,))
    assert not BlockVector(list(v)).has_shapes(widths, (2,))      # no stack: check block by block


def test_a_grid_solution_goes_back_to_its_grid_without_per_block_tensors():
    rnn = torch.nn.RNN(2, 3, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    system = trilib.backward_system(rnn, x, lambda out: out[0].square().sum())
    for method in ("sequential", "nested"):
        v = trilib.solve(system, method)
        grid = system.to_grid(v)
        assert v._blocks is None                       # nothing was unbound on the way
        assert torch.equal(grid[1, 2], v[1 * 5 + 2] if system.order == "layer" else v[2 * 2 + 1])
