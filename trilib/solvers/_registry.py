"""The solver registry and :func:`solve` (the package ``trilib.solvers`` re-exports them).

Each method is a pure function ``(system, trace, **options) -> k blocks`` (a list, or a
:class:`~trilib.systems.BlockVector` over the stack it computed in), registered with
:func:`register` for the system classes it handles and tagged with its **families**
(:data:`FAMILIES`), so that lists of methods are asked of the registry
(``methods(system, family="direct")``) rather than written out by hand. :func:`solve` hands
every solution back as a ``BlockVector``. Instrumentation goes into the trace, which is
``None`` when the caller asked for none (``return_trace=False``): a solver then records nothing
and builds no pairs. There is no second copy of any algorithm.
"""

from __future__ import annotations

from collections.abc import Callable

from ..systems import BlockVector, TriangularSystem
from ..trace import Trace

__all__ = ["FAMILIES", "register", "methods", "families", "solve", "check_method"]

#: The method families: ``"substitution"`` (one block row after another: ordinary
#: propagation), ``"direct"`` (parallel direct solvers, O(log) steps), ``"iterative"`` (sweeps
#: that converge to the solution), ``"matrix-free"`` (need only products ``N u``, never a
#: block), ``"rnn"`` (made for the RNN grid) and ``"graph"`` (made for computation graphs).
FAMILIES = ("substitution", "direct", "iterative", "matrix-free", "rnn", "graph")

# name -> {system class -> solver function}
_REGISTRY: dict[str, dict[type, Callable]] = {}
# name -> families
_FAMILIES: dict[str, set[str]] = {}


def register(name: str, *system_types: type, family: str | tuple[str, ...] = ()):
    """Decorator: register ``fn`` as method ``name`` for ``system_types``, in ``family``
    (one name or several from :data:`FAMILIES`; families add up over registrations)."""
    fams = (family,) if isinstance(family, str) else tuple(family)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown method family {unknown}; families are {', '.join(FAMILIES)}")

    def deco(fn):
        for t in system_types:
            _REGISTRY.setdefault(name, {})[t] = fn
        _FAMILIES.setdefault(name, set()).update(fams)
        return fn

    return deco


def families(method: str) -> tuple[str, ...]:
    """The families of a registered method, in the order of :data:`FAMILIES`.

    Example:
        >>> import trilib
        >>> trilib.solvers.families("jacobi")
        ('iterative', 'matrix-free')
    """
    check_method(method)
    return tuple(f for f in FAMILIES if f in _FAMILIES[method])


def methods(system: TriangularSystem | type | None = None, family: str | None = None) -> tuple[str, ...]:
    """The method names available, in registration order.

    Args:
        system: a system (or a system class): only the methods that apply to it.
        family: a name from :data:`FAMILIES`: only the methods of that family.

    Example:
        >>> import trilib
        >>> trilib.methods(family="direct")[:2]
        ('recursive_doubling', 'blelloch')
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families are {', '.join(FAMILIES)}")
    names = [n for n in _REGISTRY if family is None or family in _FAMILIES[n]]
    if system is None:
        return tuple(names)
    cls = system if isinstance(system, type) else type(system)
    return tuple(n for n in names if _lookup(_REGISTRY[n], cls) is not None)


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
        The solution as a :class:`~trilib.systems.BlockVector`: a sequence of ``k`` tensors, one
        per block row, each ``(batch, n_l)`` (``list(v)`` makes it a list); with
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
    trace = Trace(method) if return_trace else None     # solvers record nothing into None
    solution = BlockVector.of(fn(system, trace, **options))
    return (solution, trace) if return_trace else solution
