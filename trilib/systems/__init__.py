"""Every system class, and the backward-problem value type. Depends only on ``trilib._checks``.

* :class:`TriangularSystem` — the base: ``(I - N) u = r``, batched over samples;
* :class:`BlockBidiagonalSystem` — the FNN pattern (linear forward and backward systems);
* :class:`NonlinearForwardSystem` — the forward pass ``F(z) = 0``;
* :class:`GridSystem` — the k x τ grid of a recurrent network's backward pass, dense blocks;
* :class:`RNNSystem` — the same grid for ``nn.RNN``, blocks factorised;
* :class:`RecurrentForwardSystem` — a recurrent network's forward pass ``F(s) = 0`` over time;
* :class:`GraphSystem` — a computation graph's pattern;
* :class:`BackwardProblem` — a system with its loss and the map to parameter gradients;
* :class:`BlockVector` — a solution ``(u_1, ..., u_k)``, what every solve returns.
"""

from .base import TriangularSystem
from .bidiagonal import BlockBidiagonalSystem
from .graph import GraphNode, GraphSystem
from .grid import GridSystem
from .nonlinear import NonlinearForwardSystem
from .problem import BackwardProblem
from .recurrent import RecurrentForwardSystem
from .rnn import ORDERS, RNNSystem
from .vector import BlockVector

__all__ = ["BackwardProblem", "BlockBidiagonalSystem", "BlockVector", "GraphNode", "GraphSystem",
           "GridSystem", "NonlinearForwardSystem", "ORDERS", "RNNSystem", "RecurrentForwardSystem",
           "TriangularSystem"]
