"""The forward pass as a nonlinear lower system ``F(z) = 0`` (docs/theory.md §1).

The system does not know where its layers come from: a layer is any object with
``pre_activation(z_prev)`` (``W_l z_prev + b_l``), ``activate(y)`` (``f_l(y)``),
``forward_with_derivative(z_prev)`` (``(z_l, f_l'(y_l))``, the derivative ``None`` for the
identity) and ``linear`` (an ``nn.Linear`` with ``weight`` and ``out_features``), such as the
layers :func:`trilib.fnn.parse_sequential` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import TriangularSystem
from .bidiagonal import BlockBidiagonalSystem

__all__ = ["NonlinearForwardSystem"]


class NonlinearForwardSystem(TriangularSystem):
    """The forward pass as the nonlinear lower system ``F(z) = 0`` (docs/theory.md §1):

    ``F_l(z) = z_l - f_l(W_l z_{l-1} + b_l)`` with ``z_0 = x``, i.e. ``(I - N)(z) = 0`` for the
    nonlinear map ``N(z)_l = f_l(W_l z_{l-1} + b_l)``. Forward substitution solves it (that is
    ordinary forward propagation). Its Jacobian has the lower bi-diagonal pattern with blocks
    ``-D_l W_l``: :meth:`linearize` returns it as a :class:`BlockBidiagonalSystem` (one Newton
    step), and :meth:`to_dense` shows it at the forward-propagation solution.
    """

    upper = False
    symbol = "z"

    def __init__(self, layers: Sequence, x: torch.Tensor):
        self.layers = list(layers)
        self.x = x
        widths = [layer.linear.out_features for layer in self.layers]
        self.rhs = tuple(x.new_zeros(x.shape[0], n) for n in widths)
        self._point = None

    def layer_map(self, l: int, z_prev: torch.Tensor) -> torch.Tensor:
        """``f_l(W_l z_prev + b_l)`` for 0-based layer ``l``."""
        layer = self.layers[l]
        with torch.no_grad():
            return layer.activate(layer.pre_activation(z_prev))

    def apply_offdiagonal(self, u: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        prev = [self.x, *u[:-1]]
        return [self.layer_map(l, p) for l, p in enumerate(prev)]

    def linearize(self, z: Sequence[torch.Tensor]) -> BlockBidiagonalSystem:
        """The Newton system ``J(z) dz = -F(z)``: unit lower bi-diagonal with
        ``B_l = D_{l+1} W_{l+1}`` evaluated at ``z``."""
        self._check_solution(z)
        prev = [self.x, *z[:-1]]
        with torch.no_grad():
            ds = [layer.forward_with_derivative(p)[1] for layer, p in zip(self.layers, prev)]
        mats = [layer.weight.detach() for layer in self.layers[1:]]
        return BlockBidiagonalSystem(mats, ds[1:], self.residual(z), upper=False, symbol="dz")

    def _forward_solution(self) -> list[torch.Tensor]:
        if self._point is None:
            with torch.no_grad():
                z, self._point = self.x, []
                for l in range(self.k):
                    z = self.layer_map(l, z)
                    self._point.append(z)
        return self._point

    def dense_blocks(self, sample: int = 0):
        return self.linearize(self._forward_solution()).dense_blocks(sample)
