"""trilib: forward and backward propagation as triangular systems, and the parallel solvers
that compute them in O(log k) steps (M. Naumov, arXiv 1712.06577).

Example:
    >>> import torch, trilib
    >>> net = trilib.nets.mlp([4, 16, 16, 3], activation="tanh", seed=0, dtype=torch.float64)
    >>> x = torch.randn(8, 4, dtype=torch.float64)
    >>> U = trilib.backward_system(net, x, lambda out: out.square().mean())
    >>> v = trilib.solve(U)                       # back-substitution = backprop
    >>> grads = trilib.gradients(net, x, lambda out: out.square().mean())
"""

from . import data, graph, nets, rnn, trace
from ._checks import MemoryLimitError, UnsupportedLayerError, config
from .api import backward_system, compare_to_autograd, forward_system, gradients
from .fnn import NonlinearForwardSystem
from .forward import forward
from .graph import GraphSystem
from .rnn import RNNSystem
from .solvers import methods, solve
from .solvers.iterative import ConvergenceError, ConvergenceWarning
from .systems import BlockBidiagonalSystem, TriangularSystem
from .training import backward

__version__ = "0.1.0"

__all__ = [
    "BlockBidiagonalSystem", "ConvergenceError", "ConvergenceWarning", "GraphSystem",
    "MemoryLimitError", "NonlinearForwardSystem", "RNNSystem", "TriangularSystem",
    "UnsupportedLayerError", "backward", "backward_system", "compare_to_autograd", "config", "data", "forward",
    "forward_system", "gradients", "graph", "methods", "nets", "rnn", "solve", "trace", "viz",
]


def __getattr__(name):
    # trilib.viz imports matplotlib: load it only when asked for.
    if name == "viz":
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'trilib' has no attribute {name!r}")
