"""Model parallelism as solver schedules (docs/theory.md §6): per-device timelines for k layers on P
devices with m micro-batches.

Cost model (kept deliberately simple, so every count has a closed form):

* layers are split into P contiguous slabs (any ``P <= k``) by :func:`trilib._numerics.slabs`,
  the convention of block Jacobi and of :mod:`trilib.distributed`: sizes ``b_d`` differ by at
  most one, the larger first; ``b = ⌈k / P⌉`` is the largest, ``b_last`` the last slab's size
  (``b_last = b = k / P`` when P divides k); device ``d`` owns slab ``d``;
* one **time unit** is one block operation (a layer evaluation, or one combine of a direct
  solver) on one micro-batch; a device does one at a time;
* a **message** carries one micro-batch's boundary value from one device to another and takes
  no time.

Schedules (for one solve of each of the m micro-batches):

========================  ==============================  =======================  ==============
method                    steps (makespan T)              messages                 idle (P T - work)
========================  ==============================  =======================  ==============
``"sequential"``          ``m k``                         ``m (P - 1)``            ``m k (P - 1)``
``"jacobi"``              ``b (k + m - 2) + b_last``      ``m (P - 1)``            ``P T - m k``
``"block_jacobi"``        ``b (P + m - 2) + b_last``      ``m (P - 1)``            ``P T - m k``
``"tree"``                ``m (2 b + R)``, P > 1          ``m (P R - 2^R + 1)``    ``P T - work``
========================  ==============================  =======================  ==============

with ``R = ⌈log2 P⌉`` communication rounds for the tree. ``"sequential"``: one micro-batch at a
time through all layers (naive model parallelism). ``"jacobi"``: pipelined Jacobi; sweep ``s``
updates layer ``l`` on micro-batch ``s - l`` (the only one whose input became exact in the
previous sweep); a device spends ``b`` units per sweep, one per layer it owns, idle when that
layer has no micro-batch. ``"block_jacobi"``: pipelined block Jacobi (GPipe): in sweep ``s``
device ``d`` substitutes through its slab for micro-batch ``s - d``. ``"tree"``: a direct
solver across devices: every device scans its slab into affine maps (``b`` units per
micro-batch), R rounds of recursive doubling over the devices' slab maps (device ``d >= 2^r``
combines the map received from ``d - 2^r``), then every device but the first applies its
incoming value to its rows. With uneven slabs the tree's makespan is
``m (b + R) + (m - 1) b + b_1`` (``b_1``: device 1's slab), ``m (2 b + R)`` when P divides k.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from ._checks import check_int, check_memory
from ._numerics import ceil_log2, slabs

__all__ = ["Task", "Message", "Schedule", "METHODS", "simulate", "closed_form", "BrentSchedule", "brent"]

#: The schedules :func:`simulate` lays out.
METHODS = ("sequential", "jacobi", "block_jacobi", "tree")


@dataclass(frozen=True)
class Task:
    """One time unit of work: ``device`` works on ``micro_batch`` at block row ``layer``
    during ``[start, start + 1)``; ``kind`` is ``"layer"``, ``"combine"`` or ``"apply"``."""

    device: int
    start: int
    micro_batch: int
    layer: int
    kind: str = "layer"


@dataclass(frozen=True)
class Message:
    """A boundary value of ``micro_batch`` sent from ``src`` to ``dst``, available at ``time``."""

    src: int
    dst: int
    time: int
    micro_batch: int


@dataclass
class Schedule:
    """Per-device timelines of one method.

    Attributes:
        method, k, P, m: what was laid out.
        tasks: every unit of work.
        messages: every message between devices.
        sweeps: sweeps (Jacobi methods), or phases + rounds (tree), as the method counts them.
        rounds: communication rounds (time slots in which some message is sent).
    """

    method: str
    k: int
    P: int
    m: int
    tasks: list[Task] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    sweeps: int = 0

    @property
    def steps(self) -> int:
        """The makespan: time units until the last task ends."""
        return max((t.start + 1 for t in self.tasks), default=0)

    @property
    def work(self) -> int:
        """Busy time units over all devices."""
        return len(self.tasks)

    def busy(self) -> list[int]:
        """Busy time units of every device."""
        out = [0] * self.P
        for t in self.tasks:
            out[t.device] += 1
        return out

    @property
    def idle(self) -> int:
        """Idle device-time units: ``P * steps - work``."""
        return self.P * self.steps - self.work

    @property
    def rounds(self) -> int:
        return len({msg.time for msg in self.messages})

    def summary(self) -> dict:
        """``{"steps", "messages", "idle", "work", "rounds"}``."""
        return {"steps": self.steps, "messages": len(self.messages), "idle": self.idle,
                "work": self.work, "rounds": self.rounds}


def _check(method: str, k: int, P: int, m: int) -> list[range]:
    """The slabs of ``k`` layers over ``P`` devices, after checking every argument."""
    if method not in METHODS:
        raise ValueError(f"unknown schedule {method!r}; valid schedules are: {', '.join(METHODS)}")
    for name, value in (("k", k), ("P", P), ("m", m)):
        check_int(name, value, 1)
    check_int("P", P, 1, k, span=f"from 1 to k = {k} (each device owns at least one layer)")
    return slabs(k, P)


def simulate(method: str, k: int, P: int, m: int = 1) -> Schedule:
    """Lay out the per-device timeline of ``method`` for k layers on P devices, m micro-batches.

    Args:
        method: one of :data:`METHODS`.
        k: layers (block rows); P: devices (any ``P <= k``, split by
            :func:`trilib._numerics.slabs`); m: micro-batches.

    Returns:
        A :class:`Schedule` (tasks, messages, and the counts ``steps``, ``idle``, ``work``).

    Example:
        >>> from trilib.schedule import simulate
        >>> simulate("block_jacobi", k=8, P=4, m=3).summary()
        {'steps': 12, 'messages': 9, 'idle': 24, 'work': 24, 'rounds': 5}
    """
    parts = _check(method, k, P, m)
    check_memory(64 * k * m * (2 * P), f"a schedule with about {k * m * 2 * P} tasks",
                 "Use smaller k, P or m.")
    sched = Schedule(method, k, P, m)
    _LAYOUTS[method](sched, parts)
    return sched


class _Layout:
    """What every layout needs: the slabs, the owner of each layer, the unit length ``b`` of a
    device's turn (its largest slab), and the message a layer's output causes."""

    def __init__(self, sched: Schedule, parts: list[range]):
        self.sched, self.parts, self.b = sched, parts, max(map(len, parts))
        self.owner = [d for d, part in enumerate(parts) for _ in part]

    def task(self, device: int, start: int, j: int, layer: int, kind: str = "layer") -> None:
        self.sched.tasks.append(Task(device, start, j, layer, kind))

    def send(self, l: int, time: int, j: int) -> None:
        """Layer l's output for micro-batch j leaves its device at ``time`` if layer l + 1
        lives elsewhere."""
        if l + 1 < self.sched.k and self.owner[l + 1] != self.owner[l]:
            self.sched.messages.append(Message(self.owner[l], self.owner[l + 1], time, j))


def _sequential(sched: Schedule, parts: list[range]) -> None:
    """One micro-batch at a time through all layers."""
    lay, k = _Layout(sched, parts), sched.k
    for j in range(sched.m):
        for l in range(k):
            lay.task(lay.owner[l], j * k + l, j, l)
            lay.send(l, j * k + l + 1, j)
    sched.sweeps = sched.m * k


def _jacobi(sched: Schedule, parts: list[range]) -> None:
    """Sweep ``s``: layer ``l`` on micro-batch ``s - l``, at the device's ``(l - lo)``-th unit."""
    lay, k, m = _Layout(sched, parts), sched.k, sched.m
    sched.sweeps = k + m - 1
    for s in range(k + m - 1):
        for l in range(k):
            j = s - l
            if 0 <= j < m:
                d = lay.owner[l]
                lay.task(d, s * lay.b + l - parts[d].start, j, l)
                lay.send(l, (s + 1) * lay.b, j)


def _block_jacobi(sched: Schedule, parts: list[range]) -> None:
    """Sweep ``s``: device ``d`` substitutes through its slab for micro-batch ``s - d``."""
    lay, P, m = _Layout(sched, parts), sched.P, sched.m
    sched.sweeps = P + m - 1
    for s in range(P + m - 1):
        for d, part in enumerate(parts):
            j = s - d
            if 0 <= j < m:
                for i, l in enumerate(part):
                    lay.task(d, s * lay.b + i, j, l)
                lay.send(part[-1], (s + 1) * lay.b, j)


def _tree(sched: Schedule, parts: list[range]) -> None:
    """Scan every slab, recursive doubling over the devices, apply the incoming values."""
    lay, P, m, b = _Layout(sched, parts), sched.P, sched.m, max(map(len, parts))
    R = ceil_log2(P)
    for d, part in enumerate(parts):                # phase 1: scan the slab, b units per micro-batch
        for j in range(m):
            for i, l in enumerate(part):
                lay.task(d, j * b + i, j, l)
    t0 = m * b
    for r in range(R):                              # phase 2: recursive doubling over devices
        dist = 2 ** r
        for d in range(dist, P):
            for j in range(m):
                sched.messages.append(Message(d - dist, d, t0 + j, j))
                lay.task(d, t0 + j, j, parts[d].start, "combine")
        t0 += m
    for d, part in enumerate(parts[1:], start=1):   # phase 3: apply the incoming value
        for j in range(m):
            for i, l in enumerate(part):
                lay.task(d, t0 + j * b + i, j, l, "apply")
    sched.sweeps = R


_LAYOUTS = {"sequential": _sequential, "jacobi": _jacobi, "block_jacobi": _block_jacobi, "tree": _tree}


def closed_form(method: str, k: int, P: int, m: int = 1) -> dict:
    """The counts of :func:`simulate` from their formulas (see the module docstring).

    Returns:
        ``{"steps", "messages", "idle", "work"}``.

    Example:
        >>> closed_form("jacobi", k=8, P=8, m=4)
        {'steps': 11, 'messages': 28, 'idle': 56, 'work': 32}
    """
    parts = _check(method, k, P, m)
    b, last = len(parts[0]), len(parts[-1])         # the largest slab and the last one
    if method == "sequential":
        steps, messages, work = m * k, m * (P - 1), m * k
    elif method == "jacobi":
        steps, messages, work = b * (k + m - 2) + last, m * (P - 1), m * k
    elif method == "block_jacobi":
        steps, messages, work = b * (P + m - 2) + last, m * (P - 1), m * k
    else:
        R = ceil_log2(P)
        senders = P * R - 2 ** R + 1                    # Σ_{r<R} (P - 2^r)
        applied = len(parts[1]) if P > 1 else 0         # the largest slab of the devices d >= 1
        steps = m * (b + R) + (m - 1) * b + applied if P > 1 else m * b
        messages = m * senders
        work = m * k + m * senders + m * (k - b)
    return {"steps": steps, "messages": messages, "idle": P * steps - work, "work": work}


@dataclass(frozen=True)
class BrentSchedule:
    """Greedy list scheduling of a solve's combines on P processors (docs/theory.md §10).

    Attributes:
        P: processors.
        work: combines in the trace (the DAG's nodes; ``trace.work`` for the direct methods).
        depth: combines on the longest chain of dependent combines (the DAG's longest path):
            the trace's steps that hold a combine for sequential substitution, recursive doubling
            and PCR; one or two fewer for Blelloch and cyclic reduction, whose last up-sweep
            (reduction) combine and first down-sweep (back-substitution) combines are independent.
        width: the most combines that are ever ready at once (the widest level of the DAG):
            from this ``P`` on, ``steps == depth``.
        steps: steps the greedy schedule took; ``busy[s]`` combines ran in step ``s``.
        bound: Brent's bound ``⌈work / P⌉ + depth``; ``steps <= bound`` always.
    """

    P: int
    work: int
    depth: int
    width: int
    busy: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.busy)

    @property
    def bound(self) -> int:
        return -(-self.work // self.P) + self.depth


def brent(trace, P: int) -> BrentSchedule:
    """Run a solve's combine DAG on ``P`` processors by greedy list scheduling.

    The DAG has one node per ``(target, source)`` pair of ``trace.combines``; a combine of step
    ``s`` depends on the last combine of an earlier step that wrote its ``target`` row and the
    last one that wrote its ``source`` row. Each step runs up to ``P`` ready combines, earliest
    trace step first. ``P = 1`` takes ``work`` steps; ``P >= width`` (the widest trace step for
    every direct method except cyclic reduction at k = 3 and 5) takes the DAG's depth; no
    ``P`` takes more than ``⌈work / P⌉ + depth`` (Brent).

    Args:
        trace: a :class:`trilib.trace.Trace` (``trilib.solve(..., return_trace=True)``).
        P: processors, an int >= 1.

    Example:
        >>> import torch, trilib
        >>> from trilib.schedule import brent
        >>> net = trilib.nets.mlp([2] * 9, seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(1, 2, dtype=torch.float64), lambda o: o.sum())
        >>> _, trace = trilib.solve(U, "cyclic_reduction", return_trace=True)
        >>> [(b.steps, b.bound) for b in (brent(trace, 1), brent(trace, 2), brent(trace, 4))]
        [(11, 15), (6, 10), (4, 7)]
    """
    if not hasattr(trace, "combines"):
        raise TypeError(f"brent(trace, P): trace must be a trilib Trace, got {type(trace).__name__}")
    if isinstance(P, bool) or not isinstance(P, int) or P < 1:
        raise ValueError(f"brent(trace, P): P must be an int >= 1, got {P!r}")
    deps, level, last = [], [], {}            # last[row]: the latest combine that wrote row
    for pairs in trace.combines:
        wrote = {}
        for target, source in pairs:
            before = {last[r] for r in (target, source) if r in last}
            deps.append(before)
            level.append(1 + max((level[j] for j in before), default=0))
            wrote[target] = len(deps) - 1
        last.update(wrote)
    waiting = [len(d) for d in deps]
    children = [[] for _ in deps]
    for j, before in enumerate(deps):
        for i in before:
            children[i].append(j)
    ready, busy = [j for j, w in enumerate(waiting) if w == 0], []     # a heap: trace order first
    while ready:
        run = [heapq.heappop(ready) for _ in range(min(P, len(ready)))]
        busy.append(len(run))
        for i in run:
            for j in children[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
    width = max(Counter(level).values(), default=0)
    return BrentSchedule(P=P, work=len(deps), depth=max(level, default=0), width=width, busy=tuple(busy))
