"""Model parallelism as solver schedules (docs/theory.md §6): per-device timelines for k layers on P
devices with m micro-batches.

Cost model (kept deliberately simple, so every count has a closed form):

* layers are split into P contiguous slabs of ``b = k / P`` layers (P must divide k); device
  ``d`` owns slab ``d``;
* one **time unit** is one block operation (a layer evaluation, or one combine of a direct
  solver) on one micro-batch; a device does one at a time;
* a **message** carries one micro-batch's boundary value from one device to another and takes
  no time.

Schedules (for one solve of each of the m micro-batches):

========================  ==============================  =======================  ==============
method                    steps (makespan T)              messages                 idle (P T - work)
========================  ==============================  =======================  ==============
``"sequential"``          ``m k``                         ``m (P - 1)``            ``m k (P - 1)``
``"jacobi"``              ``b (k + m - 1)``               ``m (P - 1)``            ``k (k - 1)``
``"block_jacobi"``        ``b (P + m - 1)``               ``m (P - 1)``            ``k (P - 1)``
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
incoming value to its b rows.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from ._checks import check_memory
from ._numerics import ceil_log2

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


def _check(method: str, k: int, P: int, m: int) -> int:
    if method not in METHODS:
        raise ValueError(f"unknown schedule {method!r}; valid schedules are: {', '.join(METHODS)}")
    for name, value in (("k", k), ("P", P), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if P > k or k % P:
        raise ValueError(f"P must divide k (each device owns k / P layers), got k={k}, P={P}")
    return k // P




def simulate(method: str, k: int, P: int, m: int = 1) -> Schedule:
    """Lay out the per-device timeline of ``method`` for k layers on P devices, m micro-batches.

    Args:
        method: one of :data:`METHODS`.
        k: layers (block rows); P: devices (must divide k); m: micro-batches.

    Returns:
        A :class:`Schedule` (tasks, messages, and the counts ``steps``, ``idle``, ``work``).

    Example:
        >>> from trilib.schedule import simulate
        >>> simulate("block_jacobi", k=8, P=4, m=3).summary()
        {'steps': 12, 'messages': 9, 'idle': 24, 'work': 24, 'rounds': 5}
    """
    b = _check(method, k, P, m)
    check_memory(64 * k * m * (2 * P), f"a schedule with about {k * m * 2 * P} tasks",
                 "Use smaller k, P or m.")
    owner = [l // b for l in range(k)]
    sched = Schedule(method, k, P, m)
    tasks, messages = sched.tasks, sched.messages

    def send(l: int, time: int, j: int) -> None:
        """Layer l's output for micro-batch j leaves its device at ``time`` if layer l + 1
        lives elsewhere."""
        if l + 1 < k and owner[l + 1] != owner[l]:
            messages.append(Message(owner[l], owner[l + 1], time, j))

    if method == "sequential":
        for j in range(m):
            for l in range(k):
                t = j * k + l
                tasks.append(Task(owner[l], t, j, l))
                send(l, t + 1, j)
        sched.sweeps = m * k
    elif method == "jacobi":
        sched.sweeps = k + m - 1
        for s in range(k + m - 1):                      # sweep s: layer l on micro-batch s - l
            for l in range(k):
                j = s - l
                if 0 <= j < m:
                    t = s * b + l % b                   # the device's l % b-th unit of sweep s
                    tasks.append(Task(owner[l], t, j, l))
                    send(l, (s + 1) * b, j)
    elif method == "block_jacobi":
        sched.sweeps = P + m - 1
        for s in range(P + m - 1):                      # sweep s: device d on micro-batch s - d
            for d in range(P):
                j = s - d
                if 0 <= j < m:
                    for i in range(b):
                        tasks.append(Task(d, s * b + i, j, d * b + i))
                    send(d * b + b - 1, (s + 1) * b, j)
    else:                                               # tree
        R = ceil_log2(P)
        for d in range(P):                              # phase 1: scan the slab, b units per micro-batch
            for j in range(m):
                for i in range(b):
                    tasks.append(Task(d, j * b + i, j, d * b + i, "layer"))
        t0 = m * b
        for r in range(R):                              # phase 2: recursive doubling over devices
            dist = 2 ** r
            for d in range(dist, P):
                for j in range(m):
                    messages.append(Message(d - dist, d, t0 + j, j))
                    tasks.append(Task(d, t0 + j, j, d * b, "combine"))
            t0 += m
        if P > 1:                                       # phase 3: apply the incoming value
            for d in range(1, P):
                for j in range(m):
                    for i in range(b):
                        tasks.append(Task(d, t0 + j * b + i, j, d * b + i, "apply"))
        sched.sweeps = R
    return sched


def closed_form(method: str, k: int, P: int, m: int = 1) -> dict:
    """The counts of :func:`simulate` from their formulas (see the module docstring).

    Returns:
        ``{"steps", "messages", "idle", "work"}``.

    Example:
        >>> closed_form("jacobi", k=8, P=8, m=4)
        {'steps': 11, 'messages': 28, 'idle': 56, 'work': 32}
    """
    b = _check(method, k, P, m)
    if method == "sequential":
        steps, messages, work = m * k, m * (P - 1), m * k
    elif method == "jacobi":
        steps, messages, work = b * (k + m - 1), m * (P - 1), m * k
    elif method == "block_jacobi":
        steps, messages, work = b * (P + m - 1), m * (P - 1), m * k
    else:
        R = ceil_log2(P)
        senders = P * R - 2 ** R + 1                    # Σ_{r<R} (P - 2^r)
        steps = m * (2 * b + R) if P > 1 else m * b
        messages = m * senders
        work = P * m * b + m * senders + (P - 1) * m * b
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
