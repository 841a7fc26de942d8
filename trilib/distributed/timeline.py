"""Measured timelines: what each rank did, and when (seconds since the start barrier).

Every rank records its own events; t = 0 is the moment the rank left the barrier that starts
the measured run (all ranks leave it within a message latency of each other, and no shared clock
across machines is needed). The event kinds:

* ``"compute"``: arithmetic on the rank's own layers (``phase`` says which: ``"forward"``,
  ``"loss"``, ``"backward"`` (back-substitution), ``"scan"`` (the tree's slab map),
  ``"combine"`` (a tree round's composition), ``"apply"`` (the tree's final back-substitution),
  ``"gradients"``);
* ``"send"``: a blocking send, or posting a non-blocking one (then short);
* ``"recv"``: a blocking receive, including the time spent waiting for the peer;
* ``"wait"``: waiting for a non-blocking send or receive to complete.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["KINDS", "PHASES", "Event", "Recorder", "Fault", "summarize"]

KINDS = ("compute", "send", "recv", "wait")
PHASES = ("forward", "loss", "backward", "scan", "combine", "apply", "gradients")
#: The environment variable of the fault-injection test hook: ``"RANK:WHEN[:HOW]"`` with
#: WHEN in ``setup``, ``forward``, ``backward`` and HOW in ``raise`` (default), ``hang``.
FAULT_ENV = "TRILIB_DISTRIBUTED_FAULT"


@dataclass(frozen=True)
class Event:
    """One interval of one rank's measured timeline.

    Attributes:
        rank: the rank that did it.
        kind: one of :data:`KINDS`.
        start, end: seconds since the rank left the start barrier.
        layers: the 1-based layer numbers involved (the rank's slab for compute events).
        microbatch: the micro-batch (pipeline), else None.
        phase: one of :data:`PHASES`.
        peer: the other rank of a send, recv or wait, else None.
    """

    rank: int
    kind: str
    start: float
    end: float
    layers: tuple[int, ...] = ()
    microbatch: int | None = None
    phase: str = ""
    peer: int | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start


def describe(kind: str, phase: str, layers=(), microbatch=None, peer=None) -> str:
    """What a rank is doing, in words, e.g. ``"backward recv from rank 2 (micro-batch 1)"``."""
    if kind == "compute":
        text = f"{phase} compute"
        if layers:
            text += f" (layers {layers[0]}-{layers[-1]})" if len(layers) > 1 else f" (layer {layers[0]})"
    else:
        text = f"{phase} {kind} {dict(send='to', recv='from', wait='on').get(kind, 'with')} rank {peer}"
    return text + (f" (micro-batch {microbatch})" if microbatch is not None else "")


@dataclass(frozen=True)
class Fault:
    """The test hook: rank ``rank`` raises (or hangs) at its first compute of ``when``."""

    rank: int
    when: str
    how: str = "raise"

    @classmethod
    def from_env(cls) -> Fault | None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return None
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0].isdigit() \
                or parts[1] not in ("setup", "forward", "backward") \
                or (len(parts) == 3 and parts[2] not in ("raise", "hang")):
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected RANK:(setup|forward|backward)[:(raise|hang)]")
        return cls(int(parts[0]), parts[1], parts[2] if len(parts) == 3 else "raise")


class InjectedFault(RuntimeError):
    """Raised by the fault-injection test hook."""


class Recorder:
    """Collects one rank's events and keeps its current activity (for error messages)."""

    def __init__(self, rank: int, on_status=None, fault: Fault | None = None):
        self.rank, self.on_status, self.fault = rank, on_status, fault
        self.events: list[Event] = []
        self.t0 = time.perf_counter()
        self.status = "starting"
        self.sync = None                      # e.g. torch.cuda.synchronize on a GPU

    def set_status(self, text: str) -> None:
        self.status = text
        if self.on_status is not None:
            self.on_status(text)

    def restart(self) -> None:
        """Forget the events so far and set t = 0 to now."""
        self.events = []
        self.t0 = time.perf_counter()

    def check_fault(self, when: str) -> None:
        f = self.fault
        if f is None or f.rank != self.rank or f.when != when:
            return
        self.fault = None                     # fire once
        if f.how == "hang":
            self.set_status(self.status + " [injected hang]")
            while True:
                time.sleep(1.0)
        raise InjectedFault(f"injected fault ({FAULT_ENV}={f.rank}:{f.when}:{f.how})")

    @contextmanager
    def span(self, kind: str, phase: str, layers=(), microbatch=None, peer=None):
        """Record the enclosed block as one event (and say what the rank is doing meanwhile)."""
        self.set_status(describe(kind, phase, layers, microbatch, peer))
        if kind == "compute":
            self.check_fault(phase if phase in ("forward", "loss") else "backward")
        start = time.perf_counter()
        yield
        if self.sync is not None and kind == "compute":
            self.sync()
        self.events.append(Event(self.rank, kind, start - self.t0, time.perf_counter() - self.t0,
                                 tuple(layers), microbatch, phase, peer))


def summarize(events, world_size: int) -> list[dict]:
    """Seconds per kind and rank: ``[{"rank", "compute", "send", "recv", "wait", "events"}]``.

    Example:
        >>> summarize([Event(0, "compute", 0.0, 0.5)], 1)
        [{'rank': 0, 'compute': 0.5, 'send': 0.0, 'recv': 0.0, 'wait': 0.0, 'events': 1}]
    """
    rows = [{"rank": r, **{k: 0.0 for k in KINDS}, "events": 0} for r in range(world_size)]
    for e in events:
        rows[e.rank][e.kind] += e.duration
        rows[e.rank]["events"] += 1
    return rows
