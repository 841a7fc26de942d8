"""Where the batch lives in each tensor of a captured graph, and the per-sample blocks it gives.

A block row of the backward system is one sample's part of a node's value, flattened
(docs/theory.md §3). The batch need not stay in dimension 0: ``(B, T, C) -> (B·T, C)`` merges
it with the tokens, ``(B, T, E) -> (T, B, E)`` moves it. A :class:`Layout` ``(dim, outer,
inner)`` says that dimension ``dim`` has size ``outer · B · inner`` with the sample index in
the middle factor; :func:`to_blocks` and :func:`from_blocks` are the permutations between a
value and its ``(B, n)`` blocks.

Layouts are propagated through the graph: a shape operation (view, transpose, permute, cat,
slicing ...) is applied to a tensor of sample indices, and the layout read back from the
result; any other operation keeps the batch where its first batched argument has it (the
sample-mixing probe in :mod:`._probes` then checks that the operation really is per sample).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Layout", "SHAPE_OPS", "from_blocks", "infer", "input_batch_dim", "sample_ids", "strided_like",
           "to_blocks"]

# Operations that only move elements around: their sample layout follows from applying them to
# a tensor of sample indices (first argument; a list of tensors for cat and stack).
SHAPE_OPS = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "expand_as",
    "unsqueeze", "squeeze", "flatten", "unflatten", "clone", "contiguous", "alias", "detach",
    "slice", "select", "cat", "concat", "stack", "split", "split_with_sizes", "chunk", "unbind",
    "movedim", "narrow", "index", "index_select", "view_as", "reshape_as", "flip", "roll",
    "repeat", "lift_fresh_copy", "_to_copy", "to", "type_as", "as_strided", "diagonal",
}


# torch modules that declare where their input's batch is (``batch_first``; False: dimension 1).
_SEQUENCE_FIRST = (nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer,
                   nn.TransformerDecoder, nn.Transformer, nn.MultiheadAttention, nn.RNNBase)


def _declared_batch_first(module: nn.Module) -> bool | None:
    """``batch_first`` of a torch sequence module (read from its attention if it has none)."""
    if not isinstance(module, _SEQUENCE_FIRST):
        return None
    for sub in module.modules():
        if hasattr(sub, "batch_first"):
            return bool(sub.batch_first)
    return None


def input_batch_dim(module: nn.Module, x: torch.Tensor, batch_dim: int | None = None) -> int:
    """The dimension of ``x`` that holds the batch: ``batch_dim`` if given (validated), else
    the one ``module`` declares (``batch_first=False`` on an ``nn.TransformerEncoderLayer``,
    ``nn.Transformer*``, ``nn.MultiheadAttention`` or ``nn.RNN``/``GRU``/``LSTM``: dimension
    1), else 0.

    Raises:
        ValueError: ``batch_dim`` is not a dimension of ``x``, or ``x`` of a module that
            declares ``batch_first`` has no batch dimension (an unbatched sequence).
    """
    if batch_dim is not None:
        if isinstance(batch_dim, bool) or not isinstance(batch_dim, int):
            raise TypeError(f"batch_dim must be an int (the dimension of x that holds the batch), "
                            f"got {type(batch_dim).__name__}")
        if not -x.dim() <= batch_dim < x.dim():
            raise ValueError(f"batch_dim={batch_dim} is not a dimension of x of shape "
                             f"{tuple(x.shape)}; pass the index of the dimension that holds the batch")
        return batch_dim % x.dim()
    first = _declared_batch_first(module)
    if first is None:
        return 0
    dims = 2 if isinstance(module, nn.RNNBase) else 3
    if x.dim() < dims:
        raise ValueError(
            f"x of shape {tuple(x.shape)} is an unbatched sequence for {type(module).__name__}, "
            f"which takes {dims}-dimensional input with the batch in dimension "
            f"{0 if first else 1} (batch_first={first}); add that batch dimension, or pass "
            "batch_dim= the dimension of x that holds the batch")
    return 0 if first else 1


class Layout(NamedTuple):
    """Dimension ``dim`` of a value has size ``outer * B * inner``, sample index in the middle."""

    dim: int
    outer: int
    inner: int


def op_kind(node) -> str:
    """The bare ATen name of a node's operation (``"view"`` for ``aten.view.default``)."""
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", getattr(target, "__name__", str(target)))


def sample_ids(shape: torch.Size, layout: Layout | None, batch: int) -> torch.Tensor:
    """A tensor of ``shape`` holding each element's sample index (-1 where there is none)."""
    if layout is None:
        return torch.full(tuple(shape), -1, dtype=torch.long)
    d, a, c = layout
    ids = torch.arange(batch).repeat_interleave(c).repeat(a)
    view = [1] * len(shape)
    view[d] = shape[d]
    return ids.reshape(view).expand(tuple(shape)).contiguous()


def read_layout(ids: torch.Tensor, batch: int) -> Layout | None | bool:
    """The layout of a tensor of sample indices; ``None`` if it has none, ``False`` if the
    samples are not laid out as one factor of one dimension (-1 entries match any layout)."""
    known = ids >= 0
    if not bool(known.any()):
        return None
    if batch == 1 and ids.dim():
        return Layout(0, 1, ids.shape[0])
    for d, size in enumerate(ids.shape):
        if size % batch:
            continue
        for inner in range(1, size // batch + 1):
            if (size // batch) % inner:
                continue
            layout = Layout(d, size // (batch * inner), inner)
            if bool(((sample_ids(ids.shape, layout, batch) == ids) | ~known).all()):
                return layout
    return False


def _inherit(shape: torch.Size, parent: tuple[torch.Size, Layout], batch: int) -> Layout | bool:
    """The layout of a computed (not shape-only) result: where its first batched argument has
    the batch, aligned from the left, else from the right (broadcasts, reductions)."""
    pshape, (d, a, c) = parent
    for dim in (d, d - len(pshape) + len(shape)):
        if 0 <= dim < len(shape) and shape[dim] == pshape[d]:
            return Layout(dim, a, c)
    if batch == 1 and len(shape):
        return Layout(0, 1, shape[0])
    return False


def infer(node, value, args_info, batch: int, apply_shape_op) -> object:
    """The layout of ``node``'s value (a tuple of layouts for a tuple value).

    Args:
        node: the graph node.
        value: its recorded value.
        args_info: ``(shape, layout)`` of each batched tensor argument, in argument order.
        batch: the batch size B.
        apply_shape_op: ``() -> ids`` applying the node's shape operation to sample indices.

    Returns:
        A :class:`Layout`, ``None`` (no batch), ``False`` (the batch cannot be followed) or a
        tuple of those for a tuple value.
    """
    if not args_info:
        return None
    if op_kind(node) in SHAPE_OPS:
        ids = apply_shape_op()
        if isinstance(ids, (tuple, list)):
            return tuple(read_layout(i, batch) for i in ids)
        return read_layout(ids, batch)
    if isinstance(value, (tuple, list)):
        return tuple(_inherit(v.shape, args_info[0], batch) if isinstance(v, torch.Tensor) else None
                     for v in value)
    if not isinstance(value, torch.Tensor):
        return None
    return _inherit(value.shape, args_info[0], batch)


def to_blocks(t: torch.Tensor, layout: Layout, batch: int) -> torch.Tensor:
    """A value as its ``(B, n)`` per-sample blocks."""
    d, a, c = layout
    if d == 0 and a == 1:
        return t.reshape(batch, -1)
    s = tuple(t.shape)
    return t.reshape(s[:d] + (a, batch, c) + s[d + 1:]).movedim(d + 1, 0).reshape(batch, -1)


def from_blocks(u: torch.Tensor, layout: Layout, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`to_blocks`: ``(B, n)`` blocks back to a value of ``shape``."""
    d, a, c = layout
    if d == 0 and a == 1:
        return u.reshape(shape)
    batch = u.shape[0]
    s = tuple(shape)
    return u.reshape((batch,) + s[:d] + (a, c) + s[d + 1:]).movedim(0, d + 1).reshape(s)


def strided_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` (differentiably) with the strides of ``ref``, the value a graph recorded: an exported
    ``view`` needs the memory layout its trace saw."""
    if t.stride() == ref.stride():
        return t
    if ref.is_contiguous() or any(st == 0 and n > 1 for st, n in zip(ref.stride(), ref.shape)):
        return t.contiguous()
    return torch.empty_strided(ref.shape, ref.stride(), dtype=t.dtype, device=t.device).copy_(t)
