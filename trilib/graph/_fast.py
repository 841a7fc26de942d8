"""Structured transpose-Jacobian products for the block rows whose Jacobian has a known form
(docs/theory.md §3), applied without a call into autograd's engine:

* a *permutation* (a shape operation: view, transpose, slicing, a chunk of a split ...):
  ``J^T v`` gathers / scatter-adds ``v`` by an index read off the operation applied to the
  parent's entry numbers;
* a *diagonal* (an element-wise operation on parents of its own shape): ``J_i^T v = d_i ⊙ v``
  with ``d_i = J_i^T 1``;
* a *Linear over tokens* (``x W^T + b`` on ``(..., tokens, features)``): ``I_T ⊗ W^T``, i.e.
  ``v W`` per token.

Each is built from the row's recorded forward and accepted only if it agrees with autograd's
vector-Jacobian product on a random probe; otherwise the row keeps autograd's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import layout as L

__all__ = ["structured_vjp"]

_INDEX_EXACT = 2 ** 24          # entry numbers held exactly by float32 (and float64)


def _permutation(rec, row, lin, structure: str) -> Callable | None:
    """``J^T v`` of a row that only moves its single parent's entries."""
    if len(row.parents) != 1 or row.params or any(
            L.op_kind(n) not in L.SHAPE_OPS | {"getitem"} for n in (*row.inlined, row.node)):
        return None
    (parent,), n_in = row.parents, lin.ins[0].shape[1]
    if n_in >= _INDEX_EXACT:
        return None
    ids = torch.arange(n_in, dtype=torch.float64).repeat(rec.batch, 1)
    with torch.no_grad():
        value = rec.values[parent]
        ids = L.strided_like(L.from_blocks(ids, rec.layout[parent], value.shape), value)
        out = L.to_blocks(row([ids], {}), rec.layout[row.node], rec.batch)
    if (out.dtype != torch.float64 or not bool((out == out[:1]).all())
            or not bool(((out == out.round()) & (out >= 0) & (out < n_in)).all())):
        return None                             # not only the parent's entries (data mixed in)
    index = out[0].long()
    if index.numel() == n_in and bool((index == torch.arange(n_in)).all()):
        return lambda v: [v]                    # the identity on blocks (a view within samples)
    if index.numel() == n_in and bool((index.sort().values == torch.arange(n_in)).all()):
        inverse = torch.empty_like(index)
        inverse[index] = torch.arange(n_in)
        return lambda v: [v.index_select(1, inverse)]
    return lambda v: [v.new_zeros(v.shape[0], n_in).index_add_(1, index, v)]


def _diagonal(rec, row, lin, structure: str) -> Callable | None:
    """``J_i^T v = d_i ⊙ v`` of an element-wise row."""
    if structure != "diagonal":
        return None
    with torch.no_grad():
        diagonals = lin.parents_vjp(torch.ones_like(lin.out))
    if all(bool((d == 1).all()) for d in diagonals):
        return lambda v: [v] * len(diagonals)   # a sum of its parents (a residual connection)
    return lambda v: [d * v for d in diagonals]


def _linear(rec, row, lin, structure: str) -> Callable | None:
    """``J^T v = v W`` per token of ``aten.linear(parent, W, b)`` (the batch not in features)."""
    node = row.node
    if (L.op_kind(node) != "linear" or row.parents != [node.args[0]] or row.inlined
            or any(isinstance(a, torch.fx.Node) and a not in rec.param_name for a in node.args[1:])):
        return None
    parent, weight = node.args[0], rec.values[node.args[1]]
    pshape, player, layout, shape = (tuple(rec.values[parent].shape), rec.layout[parent],
                                     rec.layout[node], tuple(rec.values[node].shape))
    if player.dim == len(pshape) - 1 or layout.dim == len(shape) - 1:
        return None
    return lambda v: [L.to_blocks(L.from_blocks(v, layout, shape) @ weight, player, rec.batch)]


def structured_vjp(rec, row, lin, structure: str) -> tuple[str, Callable | None]:
    """``(kind, v -> [J_ji^T v])`` of the row's structured product (``"permutation"``,
    ``"diagonal"`` or ``"linear"``) if it has one that matches autograd's, else
    ``("autograd", None)``."""
    builders = (("permutation", _permutation), ("diagonal", _diagonal), ("linear", _linear))
    found = next(((k, f) for k, b in builders if (f := b(rec, row, lin, structure)) is not None), None)
    if found is None:
        return "autograd", None
    kind, fn = found
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(lin.out.shape, generator=gen, dtype=torch.float64).to(lin.out)
    with torch.no_grad():
        expected, got = lin.parents_vjp(probe), fn(probe)
    eps = torch.finfo(lin.out.dtype).eps
    if all(g.shape == e.shape and torch.allclose(g, e, rtol=64 * eps, atol=64 * eps * float(
            e.abs().max()) if e.numel() else 0.0) for g, e in zip(got, expected)):
        return kind, fn
    return "autograd", None
