"""What a solver did: steps, work, and the combines of every step.

A solver receives an empty :class:`Trace` and records each parallel step with
:meth:`Trace.add_step`. Plots draw trees and timelines from the trace alone, so the algorithm
is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Trace"]


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
        residuals: relative residual ``||r - A u|| / ||r||`` after each sweep (iterative methods).
        errors: relative error after each sweep against a reference, when one is known.
        info: anything else a method reports (e.g. ``converged``).
    """

    method: str
    steps: int = 0
    work: int = 0
    combines: list[list[tuple[int, int]]] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add_step(self, pairs=(), work: int | None = None) -> None:
        """Record one parallel step whose combines are ``pairs``.

        ``work`` defaults to one block product per pair.
        """
        pairs = [(int(t), int(s)) for t, s in pairs]
        self.combines.append(pairs)
        self.steps += 1
        self.work += len(pairs) if work is None else int(work)

    def __repr__(self) -> str:
        extra = f", sweeps_residual={self.residuals[-1]:.2e}" if self.residuals else ""
        return f"Trace(method={self.method!r}, steps={self.steps}, work={self.work}{extra})"
