"""The solver registry and :func:`solve`.

Each method is a pure function ``(system, trace, **options) -> list of k tensors`` registered
with :func:`register` for the system classes it handles. Instrumentation goes into the trace;
there is no second copy of any algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

from ..systems import TriangularSystem
from ..trace import Trace

__all__ = ["register", "methods", "solve", "check_method"]

# name -> {system class -> solver function}
_REGISTRY: dict[str, dict[type, Callable]] = {}


def register(name: str, *system_types: type):
    """Decorator: register ``fn`` as method ``name`` for ``system_types``."""

    def deco(fn):
        for t in system_types:
            _REGISTRY.setdefault(name, {})[t] = fn
        return fn

    return deco


def methods(system: TriangularSystem | None = None) -> tuple[str, ...]:
    """The method names available (for ``system``'s class, when given)."""
    if system is None:
        return tuple(_REGISTRY)
    return tuple(n for n, impls in _REGISTRY.items() if _lookup(impls, type(system)) is not None)


def _lookup(impls: dict[type, Callable], cls: type) -> Callable | None:
    for base in cls.__mro__:
        if base in impls:
            return impls[base]
    return None


def check_method(method: object) -> str:
    """Raise a ValueError listing the valid names unless ``method`` is a registered name."""
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(_REGISTRY)}")
    return method


def solve(system: TriangularSystem, method: str = "sequential", return_trace: bool = False,
          **options):
    """Solve the triangular system ``A u = r``.

    Args:
        system: a system from :func:`trilib.backward_system` or :func:`trilib.forward_system`.
        method: one of :func:`trilib.methods` (``"sequential"`` is substitution, i.e. ordinary
            forward or backward propagation).
        return_trace: also return the :class:`~trilib.trace.Trace` (steps, work, combines).
        **options: method-specific options (see each method's docstring).

    Returns:
        A list of ``k`` tensors, one per block row, each ``(batch, n_l)``; with
        ``return_trace=True`` the pair ``(solution, trace)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 2], activation="tanh", seed=0)
        >>> U = trilib.backward_system(net, torch.randn(5, 3), lambda out: out.sum())
        >>> v, trace = trilib.solve(U, return_trace=True)
        >>> [t.shape for t in v], trace.steps
        ([torch.Size([5, 4]), torch.Size([5, 2])], 2)
    """
    if not isinstance(system, TriangularSystem):
        raise TypeError(f"system must be a trilib system (from trilib.backward_system or "
                        f"trilib.forward_system), got {type(system).__name__}")
    check_method(method)
    fn = _lookup(_REGISTRY[method], type(system))
    if fn is None:
        raise ValueError(f"method {method!r} does not apply to a {type(system).__name__}; "
                         f"methods for it: {', '.join(methods(system))}")
    trace = Trace(method)
    solution = fn(system, trace, **options)
    return (solution, trace) if return_trace else solution


# Importing the method modules registers them, in the order trilib.methods() lists them:
# substitution, the direct parallel methods, the iterative ones, then graph and RNN methods.
# isort: off
from . import sequential  # noqa: E402,F401
from . import recursive_doubling, blelloch, cyclic_reduction, parallel_cyclic_reduction  # noqa: E402,F401
from . import iterative, graph_methods, rnn_methods  # noqa: E402,F401
# isort: on
