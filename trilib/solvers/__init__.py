"""The solvers: one file per algorithm, each registered for the system classes it handles.

Solvers depend on :mod:`trilib.systems` (and the foundation) only, never on a model builder.
The registry (:mod:`trilib.solvers._registry`) tags every method with its families, so lists of
methods are asked of it: ``trilib.methods(system, family="direct")``.
"""

from ._registry import FAMILIES, check_method, families, methods, register, solve

__all__ = ["FAMILIES", "check_method", "families", "methods", "register", "solve"]

# Importing the method modules registers them, in the order trilib.methods() lists them:
# substitution, the direct parallel methods, the iterative ones, then graph and RNN methods.
# isort: off
from . import sequential  # noqa: E402,F401
from . import recursive_doubling, blelloch, cyclic_reduction, parallel_cyclic_reduction  # noqa: E402,F401
from . import jacobi, block_jacobi, gauss_seidel, newton  # noqa: E402,F401
from . import graph_methods, rnn_methods, newton_in_time  # noqa: E402,F401
# isort: on
