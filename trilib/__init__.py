"""trilib: forward and backward propagation as triangular systems, and the parallel solvers
that compute them in O(log k) steps (M. Naumov, arXiv 1712.06577; the theory chapter is
docs/theory.md).

The library is layered; every import points down this list, never up or sideways:

1. foundation: ``_checks`` (errors, config), ``_numerics``, ``_autograd``, ``trace``;
2. ``systems`` — every system class and the backward-problem value type;
3. the model builders ``fnn``, ``rnn``, ``gated`` (GRU, LSTM), ``graph`` (capture and example
   models) and the ``solvers`` (one file per algorithm), which never import each other;
4. ``api`` — dispatches on the model type to a builder, then solves (``backward_system``,
   ``gradients``, ``forward``, ...), and ``training`` (``backward``, ``fit``);
5. ``bench``, ``viz``, ``distributed``, ``figures``, ``schedule``, ``nets``, ``data``.

Example:
    >>> import torch, trilib
    >>> net = trilib.nets.mlp([4, 16, 16, 3], activation="tanh", seed=0, dtype=torch.float64)
    >>> x = torch.randn(8, 4, dtype=torch.float64)
    >>> U = trilib.backward_system(net, x, lambda out: out.square().mean())
    >>> v = trilib.solve(U)                       # back-substitution = backprop
    >>> grads = trilib.gradients(net, x, lambda out: out.square().mean())
"""

from . import data, graph, nets, rnn, solvers, systems, trace
from ._checks import MemoryLimitError, UnsupportedLayerError, config
from .api import backward_system, compare_to_autograd, forward, forward_system, gradients
from .solvers import methods, solve
from .solvers._sweeps import ConvergenceError, ConvergenceWarning
from .systems import (
    BlockBidiagonalSystem,
    BlockVector,
    GraphSystem,
    NonlinearForwardSystem,
    RNNSystem,
    TriangularSystem,
)
from .training import backward

__version__ = "0.1.0"

__all__ = [
    "BlockBidiagonalSystem", "BlockVector", "ConvergenceError", "ConvergenceWarning", "GraphSystem",
    "MemoryLimitError", "NonlinearForwardSystem", "RNNSystem", "TriangularSystem",
    "UnsupportedLayerError", "backward", "backward_system", "compare_to_autograd", "config", "data",
    "forward", "forward_system", "gradients", "graph", "methods", "nets", "rnn", "solve", "solvers",
    "systems", "trace", "viz",
]


def __getattr__(name):
    # trilib.viz and trilib.bench import matplotlib or timing machinery: load them only when asked for.
    if name in ("viz", "bench"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'trilib' has no attribute {name!r}")
