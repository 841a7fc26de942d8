"""A block row's forward recorded once by autograd, and its vector-Jacobian products on
per-sample blocks (docs/theory.md §3): with respect to its parents (one row) and to its
parameters (all rows in one call of autograd's engine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import layout as L

__all__ = ["Linearized", "params_vjps", "row_vjp"]


class Linearized:
    """One block row's forward recorded once by autograd (like autograd's own forward), on its
    parents' ``(B, n_i)`` blocks and returning its own ``(B, n)`` blocks (the layout
    permutations are recorded too), so each transpose-Jacobian product is one
    ``torch.autograd.grad`` on blocks, without retracing or Python reshapes."""

    def __init__(self, rec, row):
        """Record ``row`` (a capture row) on the values ``rec`` recorded."""
        batch = rec.batch
        with torch.enable_grad():
            self.ins = [L.to_blocks(rec.values[p].detach(), rec.layout[p], batch)
                        .detach().requires_grad_(True) for p in row.parents]
            values = [L.strided_like(L.from_blocks(b, rec.layout[p], tuple(rec.values[p].shape)),
                                     rec.values[p]) for b, p in zip(self.ins, row.parents)]
            self.ps = {n: rec.values[p].detach().requires_grad_(True) for n, p in row.params.items()}
            self.out = L.to_blocks(row(values, self.ps), rec.layout[row.node], batch)

    def parents_vjp(self, v: torch.Tensor, batched: bool = False) -> list[torch.Tensor]:
        """``[J_ji^T v_j]`` per parent ``i``, each ``(B, n_i)`` (``(E, B, n_i)`` for ``E``
        cotangents ``(E, B, n)`` at once if batched)."""
        if not self.ins:
            return []
        grads = torch.autograd.grad(self.out, self.ins, v, retain_graph=True, allow_unused=True,
                                    is_grads_batched=batched)
        return [g if g is not None else v.new_zeros(v.shape[:-2] + x.shape)
                for g, x in zip(grads, self.ins)]

    def params_vjp(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (dx_j/dp)^T v_j}`` for the parameters this row reads."""
        return params_vjps([self], [v])


def params_vjps(lins: Sequence[Linearized], vs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: sum over rows j of (dx_j/dp)^T v_j}``: one ``torch.autograd.grad`` over all
    rows (their recorded graphs are disjoint, so one call is one pass of the engine)."""
    pairs = [(lin, v) for lin, v in zip(lins, vs) if lin.ps]
    if not pairs:
        return {}
    leaves = [(n, p) for lin, _ in pairs for n, p in lin.ps.items()]
    grads = torch.autograd.grad([lin.out for lin, _ in pairs], [p for _, p in leaves],
                                [v for _, v in pairs], retain_graph=True, allow_unused=True)
    found: dict[str, torch.Tensor] = {}
    for (n, p), g in zip(leaves, grads):
        g = torch.zeros_like(p) if g is None else g
        found[n] = found[n] + g if n in found else g
    return found


def row_vjp(lin: Linearized, fast: Callable | None) -> Callable:
    """The row's ``(v, batched=False) -> [J_ji^T v]``: structured if it can be, else autograd."""
    if fast is None:
        return lin.parents_vjp
    return lambda v, batched=False: lin.parents_vjp(v, True) if batched else fast(v)
