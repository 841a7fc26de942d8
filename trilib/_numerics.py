"""Small numerical facts used across the library, each written once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import check_int

__all__ = ["ceil_log2", "norm", "rel_error", "runs_of"]


def ceil_log2(k: int) -> int:
    """``⌈log2 k⌉`` for ``k >= 1`` (0 for k = 1), in exact integer arithmetic.

    Example:
        >>> [ceil_log2(k) for k in (1, 2, 3, 4, 5, 1024, 1025)]
        [0, 1, 2, 2, 3, 10, 11]
    """
    return (check_int("k", k, 1) - 1).bit_length()


def rnn_cell(xp: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
             relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell of ``nn.RNN``, the one both RNN paths use (the backward builder
    :mod:`trilib.rnn` and the forward cells of :mod:`trilib.gated`): ``y = xp + W_hh h + b_hh``
    (``xp = W_ih x + b_ih``, projected once per layer), ``h' = f(y)`` with f = tanh or relu.
    Returns ``(h', f'(y))``; batched over leading dimensions.

    Example:
        >>> h, d = rnn_cell(torch.zeros(1, 2), torch.ones(1, 2), torch.eye(2), None, relu=True)
        >>> h.tolist(), d.tolist()
        ([[1.0, 1.0]], [[1.0, 1.0]])
    """
    y = xp + h @ w_hh.t()
    if b_hh is not None:
        y = y + b_hh
    if relu:
        return torch.relu(y), (y > 0).to(y.dtype)
    h = torch.tanh(y)
    return h, 1 - h * h


def slabs(k: int, P: int) -> list[range]:
    """The one convention for splitting rows (layers) ``0..k-1`` over ``P`` devices: contiguous
    slabs whose sizes differ by at most one, the larger ones first (``numpy.array_split``'s
    rule). Block Jacobi's blocks, :func:`trilib.schedule.simulate` and the ranks of
    :mod:`trilib.distributed` all split this way.

    Example:
        >>> [list(s) for s in slabs(7, 3)]
        [[0, 1, 2], [3, 4], [5, 6]]
    """
    check_int("k", k, 1)
    check_int("P", P, 1, k, span=f"from 1 to k = {k} (every slab holds a row)")
    base, extra = divmod(k, P)
    starts = [d * base + min(d, extra) for d in range(P + 1)]
    return [range(a, b) for a, b in zip(starts, starts[1:])]


def norm(blocks: Sequence[torch.Tensor]) -> float:
    """The 2-norm of a block vector (a sequence of tensors), accumulated in float64."""
    return math.sqrt(sum(float(b.detach().double().pow(2).sum()) for b in blocks))


def rel_error(approx: Sequence[torch.Tensor], exact: Sequence[torch.Tensor]) -> float:
    """Norm-wise relative error ``||approx - exact|| / ||exact||`` of two block vectors (the
    absolute error when ``exact`` is zero), in float64.

    Example:
        >>> rel_error([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 2.5])]) < 0.2
        True
    """
    approx, exact = list(approx), list(exact)
    if len(approx) != len(exact):
        raise ValueError(f"rel_error needs block vectors of the same length, got {len(approx)} "
                         f"and {len(exact)} blocks")
    num = norm([a.double() - b.double() for a, b in zip(approx, exact)])
    den = norm(exact)
    return num / den if den > 0 else num


def runs_of(keys: Sequence) -> list[tuple[int, int]]:
    """``(start, stop)`` of the maximal runs of equal consecutive keys (e.g. layers of one shape,
    stacked together).

    Example:
        >>> runs_of([8, 8, 8, 4, 8])
        [(0, 3), (3, 4), (4, 5)]
    """
    out, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((start, i))
            start = i
    return out
