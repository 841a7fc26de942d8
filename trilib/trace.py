"""What a solver did: steps, work, and the combines of every step.

A solver receives an empty :class:`Trace` and records each parallel step with
:meth:`Trace.add_step`. Plots draw trees and timelines from the trace alone, so the algorithm
is written once. A solve called without a trace (``trilib.solve(..., return_trace=False)``)
receives ``None`` and records nothing.

Recording must stay cheap next to the step it describes: a step of a direct solver on a
``k``-row system has up to ``k`` pairs, so :meth:`Trace.add_step` also takes the pairs as a
compact description (:class:`StridedPairs`, :class:`SharedPairs`) that is expanded into a list
only when :attr:`Trace.combines` is first read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["LazyPairs", "SharedPairs", "StridedPairs", "Trace"]


class LazyPairs:
    """A step's ``(target, source)`` pairs, described but not yet listed.

    Subclasses give ``len()`` (the number of pairs, the step's default work) and
    :meth:`expand`. :meth:`Trace.add_step` stores such an object as it is; reading
    :attr:`Trace.combines` expands it once.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def expand(self) -> list[tuple[int, int]]:
        """The pairs as a list of ``(int, int)`` tuples."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.expand())


@dataclass(frozen=True)
class StridedPairs(LazyPairs):
    """The pairs ``(t, t + offset)`` for ``t = first, first + stride, ...`` (``count`` of them,
    ``stride`` of either sign): one step of a scan or a reduction, in O(1) memory.

    Example:
        >>> list(StridedPairs(first=7, stride=-2, count=3, offset=1))
        [(7, 8), (5, 6), (3, 4)]
    """

    first: int
    stride: int
    count: int
    offset: int

    def __len__(self) -> int:
        return self.count

    def expand(self) -> list[tuple[int, int]]:
        f, s, o = self.first, self.stride, self.offset
        return [(f + i * s, f + i * s + o) for i in range(self.count)]


class SharedPairs(LazyPairs):
    """The same list of pairs recorded for many steps (e.g. every sweep of Jacobi reads every
    coupling): the list is built once by the caller and referenced, not copied, per step.

    Example:
        >>> pairs = SharedPairs([(0, 1), (1, 2)])
        >>> len(pairs), pairs.expand()
        (2, [(0, 1), (1, 2)])

    Args:
        pairs: a list of ``(target, source)`` pairs, or a callable returning one (then
            ``count`` must say how many pairs it will return).
        count: the number of pairs, when ``pairs`` is a callable.
    """

    def __init__(self, pairs, count: int | None = None):
        if callable(pairs) and count is None:
            raise ValueError("SharedPairs(callable) needs count=, the number of pairs it returns")
        self._pairs = pairs
        self._count = count

    def __len__(self) -> int:
        return len(self._pairs) if self._count is None else self._count

    def expand(self) -> list[tuple[int, int]]:
        pairs = self._pairs() if callable(self._pairs) else self._pairs
        return [(int(t), int(s)) for t, s in pairs]


@dataclass
class Trace:
    """Instrumentation of one solve.

    Attributes:
        method: the method name.
        steps: parallel steps: rounds of operations that depend on the previous round.
            Sequential substitution takes one step per unknown block.
        work: block products (one product of an off-diagonal block with a vector or a matrix).
        combines: ``combines[s]`` lists the ``(target, source)`` pairs of step ``s``: block row
            ``target`` absorbed block row ``source`` (or, for iterative methods, read it).
            Expanded from the recorded descriptions when first read.
        residuals: relative residual ``||r - A u|| / ||r||`` after each sweep (iterative methods).
        errors: relative error after each sweep against a reference, when one is known.
        info: anything else a method reports (e.g. ``converged``).
    """

    method: str
    steps: int = 0
    work: int = 0
    residuals: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    _combines: list = field(default_factory=list, repr=False)

    def add_step(self, pairs=(), work: int | None = None) -> None:
        """Record one parallel step whose combines are ``pairs``.

        Args:
            pairs: an iterable of ``(target, source)`` block rows (listed now), or a
                :class:`LazyPairs` description (:class:`StridedPairs`, :class:`SharedPairs`),
                stored as it is and listed only if :attr:`combines` is read.
            work: block products of the step; defaults to one per pair.
        """
        if not isinstance(pairs, LazyPairs):
            pairs = [(int(t), int(s)) for t, s in pairs]
        self._combines.append(pairs)
        self.steps += 1
        self.work += len(pairs) if work is None else int(work)

    @property
    def combines(self) -> list[list[tuple[int, int]]]:
        """``combines[s]``: the ``(target, source)`` pairs of step ``s`` (see the class doc)."""
        for s, pairs in enumerate(self._combines):
            if isinstance(pairs, LazyPairs):
                self._combines[s] = pairs.expand()
        return self._combines

    def __repr__(self) -> str:
        extra = f", sweeps_residual={self.residuals[-1]:.2e}" if self.residuals else ""
        return f"Trace(method={self.method!r}, steps={self.steps}, work={self.work}{extra})"
