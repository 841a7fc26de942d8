"""The network as the ranks see it: layers, slabs, and the loss (docs/theory.md §1 and §8).

An MLP ``nn.Sequential`` is read as k layers ``y_l = W_l z_{l-1} + b_l``, ``z_l = f_l(y_l)``
(``f_l``: the element-wise activations that follow the l-th ``nn.Linear``, identity if none).
Rank ``d`` of P owns the contiguous **slab** of layers ``lo_d + 1 .. hi_d`` given by
:func:`trilib._numerics.slabs`, the convention the simulator and block Jacobi share: slabs
differ in size by at most one layer, the larger ones first.
Layers may have different widths; what crosses a slab boundary always has the width of the
boundary: ``z_{hi_d}`` (forward, ``n_{hi_d}`` wide) and ``u_d = dE/dz_{hi_d}`` (backward, the
same width).
"""

from __future__ import annotations

import copy
import inspect
import pickle

import torch
import torch.nn.functional as F
from torch import nn

from .._autograd import ELEMENTWISE
from .._numerics import slabs
from ..fnn.layers import FNNLayer, parse_sequential

__all__ = ["ELEMENTWISE", "LOSSES", "Layer", "Slab", "NamedLoss", "parse_mlp", "slab_bounds",
           "check_loss", "make_loss"]

#: Named losses: ``name -> (needs targets, E(out, targets))``.
LOSSES = {
    "sum_squares": (False, lambda out, t: 0.5 * (out if t is None else out - t).square().sum()),
    "mse": (True, lambda out, t: F.mse_loss(out, t)),
    "cross_entropy": (True, lambda out, t: F.cross_entropy(out, t)),
}


class Layer(FNNLayer):
    """One layer as a rank holds it: trilib.fnn's :class:`~trilib.fnn.layers.FNNLayer` (whose
    forward it uses) over a detached copy of the ``nn.Linear``, so it travels to the ranks
    without the rest of the model. ``name`` is the Linear's dotted name."""

    __slots__ = ()

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def n_in(self) -> int:
        return self.linear.in_features

    @property
    def n_out(self) -> int:
        return self.linear.out_features

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(z_l, diag(D_l))`` for the input ``z_{l-1}``; ``D_l`` is None for no activation."""
        return self.forward_with_derivative(z)

    def to(self, device) -> Layer:
        return Layer(self.linear.to(device), self.activations, self.name)


def parse_mlp(model: nn.Module) -> list[Layer]:
    """Read an ``nn.Sequential`` of ``nn.Linear`` layers and element-wise activations with
    trilib.fnn's parse (:func:`trilib.fnn.parse_sequential`: the same layers and errors as
    ``trilib.gradients``), keeping detached copies of the parameters.

    Args:
        model: ``nn.Sequential`` (nested ``nn.Sequential`` allowed) whose first module is an
            ``nn.Linear``; every other module is an ``nn.Linear`` or one of
            :data:`~trilib._autograd.ELEMENTWISE`.

    Returns:
        The k layers.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential``.
        trilib.UnsupportedLayerError: a module that is neither.
        ValueError: no Linear, or consecutive Linears whose widths do not chain.

    Example:
        >>> from trilib.nets import mlp
        >>> [(l.name, l.n_in, l.n_out) for l in parse_mlp(mlp([3, 5, 2]))]
        [('0', 3, 5), ('2', 5, 2)]
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential of nn.Linear layers and element-wise "
                        f"activations, got {type(model).__name__}")
    return [Layer(copy.deepcopy(layer.linear).requires_grad_(False),
                  tuple(a for a in layer.activations if type(a) is not nn.Identity), layer.name)
            for layer in parse_sequential(model)]


def slab_bounds(k: int, world_size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` per rank: rank d owns layers ``lo + 1 .. hi`` (1-based), balanced by count.

    Example:
        >>> slab_bounds(7, 3)
        [(0, 3), (3, 5), (5, 7)]
    """
    return [(s.start, s.stop) for s in slabs(k, world_size)]


class Slab:
    """The layers of one rank and the three things it does with them (docs/theory.md §8)."""

    def __init__(self, layers: list[Layer], lo: int, hi: int):
        self.layers, self.lo, self.hi = layers[lo:hi], lo, hi

    @property
    def numbers(self) -> tuple[int, ...]:
        """The 1-based layer numbers ``lo + 1 .. hi``."""
        return tuple(range(self.lo + 1, self.hi + 1))

    def forward(self, z: torch.Tensor):
        """Forward substitution through the slab: ``(z_hi, cache)``, cache = inputs and D's."""
        inputs, ds = [], []
        for layer in self.layers:
            inputs.append(z)
            z, d = layer.forward(z)
            ds.append(d)
        return z, (inputs, ds)

    def back_substitute(self, u: torch.Tensor, cache, outgoing: bool = True):
        """Errors ``v_l`` of the slab from ``u = dE/dz_hi``: ``v_hi = D_hi u``,
        ``v_l = D_l W_{l+1}^T v_{l+1}``; returns ``(v, W_lo^T v_lo)`` (None if not ``outgoing``)."""
        _, ds = cache
        v: list[torch.Tensor] = [None] * len(self.layers)  # type: ignore[list-item]
        for i in range(len(self.layers) - 1, -1, -1):
            if i < len(self.layers) - 1:
                u = v[i + 1] @ self.layers[i + 1].weight      # W_{l+1}^T v_{l+1}, row vectors
            v[i] = u if ds[i] is None else ds[i] * u
        return v, (v[0] @ self.layers[0].weight if outgoing else None)

    def slab_map(self, cache) -> torch.Tensor:
        """``A`` with ``u_{d-1} = A u_d`` per sample: ``W_lo^T D_lo ... W_hi^T D_hi``,
        shape ``(batch, n_lo_in, n_hi)``."""
        _, ds = cache
        last = self.layers[-1]
        batch = cache[0][0].shape[0]
        a = last.weight.T.unsqueeze(0).expand(batch, -1, -1)
        if ds[-1] is not None:
            a = a * ds[-1].unsqueeze(1)
        for i in range(len(self.layers) - 2, -1, -1):
            if ds[i] is not None:
                a = ds[i].unsqueeze(2) * a
            a = torch.matmul(self.layers[i].weight.T, a)
        return a

    def gradients(self, v, cache) -> dict[str, torch.Tensor]:
        """``dE/dW_l = sum_batch v_l z_{l-1}^T`` and ``dE/db_l = sum_batch v_l`` of the slab."""
        inputs, _ = cache
        out = {}
        for layer, vl, z in zip(self.layers, v, inputs):
            out[f"{layer.name}.weight"] = vl.T @ z
            if layer.bias is not None:
                out[f"{layer.name}.bias"] = vl.sum(0)
        return out


class NamedLoss:
    """A picklable loss: one of :data:`LOSSES`, or a callable, with optional targets."""

    def __init__(self, loss, targets: torch.Tensor | None = None):
        self.loss, self.targets = loss, targets

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if isinstance(self.loss, str):
            return LOSSES[self.loss][1](out, self.targets)
        return self.loss(out) if self.targets is None else self.loss(out, self.targets)


def check_loss(loss_fn, targets) -> None:
    """Raise before spawning if ``loss_fn`` cannot reach the worker processes."""
    if isinstance(loss_fn, str):
        if loss_fn not in LOSSES:
            raise ValueError(f"unknown loss {loss_fn!r}; named losses are: {', '.join(LOSSES)} "
                             "(or pass a picklable top-level function)")
        if LOSSES[loss_fn][0] and targets is None:
            raise ValueError(f"loss {loss_fn!r} needs targets=...")
        return
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a loss name ({', '.join(LOSSES)}) or a callable, "
                        f"got {type(loss_fn).__name__}")
    hint = ("the worker processes receive loss_fn by pickling; use a named loss "
            f"({', '.join(LOSSES)}) with targets=..., a function defined at the top level of an "
            "importable module, or functools.partial of one")
    if getattr(loss_fn, "__name__", "") == "<lambda>" or "<locals>" in getattr(loss_fn, "__qualname__", ""):
        raise TypeError(f"loss_fn {loss_fn!r} is a lambda or a local function: {hint}")
    if getattr(loss_fn, "__module__", None) == "__main__":
        raise TypeError(f"loss_fn {loss_fn!r} is defined in __main__ (a notebook, or a script run "
                        f"directly), which the worker processes cannot import: {hint}")
    try:
        pickle.dumps(loss_fn)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
        raise TypeError(f"loss_fn {loss_fn!r} cannot be pickled ({exc}): {hint}") from None
    if inspect.isclass(loss_fn):
        raise TypeError(f"loss_fn must be a function or an instance, got the class {loss_fn.__name__}")


def make_loss(loss_fn, targets=None) -> NamedLoss:
    """``out -> E`` for a name from :data:`LOSSES` or a callable (checked by :func:`check_loss`)."""
    check_loss(loss_fn, targets)
    return NamedLoss(loss_fn, targets)
