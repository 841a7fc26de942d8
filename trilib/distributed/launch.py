"""``trilib.distributed.run``: spawn P local processes, run schedules, collect what they did."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
from pathlib import Path

import torch
from torch import nn

from .model import make_loss, parse_mlp, slab_bounds
from .schedules import SCHEDULES
from .timeline import Event, summarize
from .worker import STATUS_BYTES, spawn_entry

__all__ = ["BACKENDS", "DistributedError", "DistributedResult", "check_args", "collect", "run"]

BACKENDS = ("gloo", "nccl")
_COMMS = (" recv from ", " send to ", " wait on ", "barrier", "init_process_group", "gathering")


class DistributedError(RuntimeError):
    """A distributed run failed or timed out.

    Attributes:
        rank: the rank that failed first (or stopped answering).
        activity: what it was doing, e.g. ``"backward compute (layers 4-6)"``.
        errors: ``[(rank, message)]`` for every rank that reported something.
        tracebacks: ``{rank: text}``: the traceback of each rank that raised; after a timeout,
            the Python stack of each rank still running (where it was stuck).
    """

    def __init__(self, message: str, rank: int, activity: str, errors=(), tracebacks=None):
        super().__init__(message)
        self.rank, self.activity = rank, activity
        self.errors, self.tracebacks = list(errors), dict(tracebacks or {})


@dataclass
class DistributedResult:
    """What one schedule did on P processes.

    Attributes:
        gradients: ``dE/dp`` keyed like ``model.named_parameters()``.
        loss: E.
        timeline: every rank's :class:`~trilib.distributed.timeline.Event` list, concatenated.
        schedule, world_size, backend, microbatches: what was run.
        slabs: ``slabs[d]`` = the 1-based layer numbers rank d owns.
    """

    gradients: dict[str, torch.Tensor]
    loss: float
    timeline: list[Event]
    schedule: str
    world_size: int
    slabs: tuple[tuple[int, ...], ...]
    backend: str = "gloo"
    microbatches: int = 1
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def makespan(self) -> float:
        """Seconds from the start barrier to the last event's end."""
        return max((e.end for e in self.timeline), default=0.0)

    def summary(self) -> list[dict]:
        """Per rank: ``rank``, ``layers`` (e.g. ``"1-4"``), seconds of compute/send/recv/wait, events."""
        rows = summarize(self.timeline, self.world_size)
        for row, slab in zip(rows, self.slabs):
            row["layers"] = f"{slab[0]}-{slab[-1]}" if len(slab) > 1 else f"{slab[0]}"
        return rows

    def table(self) -> str:
        """:meth:`summary` as a text table (seconds with 4 decimals)."""
        lines = [f"{'rank':>4}  {'layers':>7}  {'compute_s':>9}  {'send_s':>7}  {'recv_s':>7}  "
                 f"{'wait_s':>7}  {'events':>6}"]
        for r in self.summary():
            lines.append(f"{r['rank']:>4}  {r['layers']:>7}  {r['compute']:9.4f}  {r['send']:7.4f}  "
                         f"{r['recv']:7.4f}  {r['wait']:7.4f}  {r['events']:>6}")
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_args(model, x, world_size, schedules, backend, microbatches, timeout_s, warmup):
    """Every argument of :func:`run`, before any process starts; returns the parsed layers."""
    layers = parse_mlp(model)
    k = len(layers)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a (batch, n_0) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != layers[0].n_in:
        raise ValueError(f"x has {x.shape[1]} features but the first Linear expects {layers[0].n_in}")
    if x.dtype != layers[0].weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {layers[0].weight.dtype}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= k:
        raise ValueError(f"world_size must be an int from 1 to the number of layers k={k} "
                         f"(each rank owns at least one layer), got {world_size!r}")
    if len(set(schedules)) != len(schedules):
        raise ValueError(f"schedule lists a schedule twice: {list(schedules)}")
    for name in schedules:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; valid schedules are: {', '.join(SCHEDULES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are: {', '.join(BACKENDS)}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend='nccl' needs CUDA GPUs; use backend='gloo' on CPUs")
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) \
            or not 1 <= microbatches <= x.shape[0]:
        raise ValueError(f"microbatches must be an int from 1 to the batch size {x.shape[0]}, "
                         f"got {microbatches!r}")
    if microbatches > 1 and "pipeline" not in schedules:
        raise ValueError(f"microbatches={microbatches} applies to the 'pipeline' schedule only, "
                         f"got schedule(s) {list(schedules)}")
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) \
            or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    return layers


def run(model: nn.Module, x: torch.Tensor, loss_fn, world_size: int, schedule="tree",
        backend: str = "gloo", microbatches: int = 1, timeout_s: float = 60.0, *,
        targets: torch.Tensor | None = None, warmup: int = 1):
    """Backward propagation of an MLP whose layers are spread over ``world_size`` processes.

    Spawns the processes (``multiprocessing`` spawn context, rendezvous on 127.0.0.1 and a free
    port), which talk through ``torch.distributed`` only, and waits for them. As with every use
    of the spawn context, a script that calls ``run`` must do so under
    ``if __name__ == "__main__":`` (notebooks need nothing).

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` and element-wise activations; rank d owns the
            layers of :func:`~trilib.distributed.model.slab_bounds`.
        x: the input batch ``(batch, n_0)``, the model's dtype.
        loss_fn: ``"sum_squares"``, ``"mse"`` or ``"cross_entropy"`` (with ``targets``), or a
            **picklable** callable ``loss_fn(out)`` (``loss_fn(out, targets)`` with targets): a
            function at the top level of an importable module, or ``functools.partial`` of
            one. Lambdas and functions defined in a notebook raise ``TypeError`` (the spawned
            processes cannot import them).
        world_size: P, from 1 to the number of layers k.
        schedule: ``"sequential"``, ``"pipeline"`` or ``"tree"``, or a list of them (one set of
            processes runs each in turn; then a dict ``name -> result`` is returned).
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per rank).
        microbatches: m, for ``"pipeline"``.
        timeout_s: the whole run (start-up included) ends within this many seconds; a worker
            that raises ends it at once. Either way the processes are terminated and joined.
        targets: for the named losses, or passed to ``loss_fn``.
        warmup: unrecorded runs of each schedule before the recorded one.

    Returns:
        A :class:`DistributedResult` (or a dict of them for a list of schedules).

    Raises:
        DistributedError: a rank failed or did not finish in time; names the rank and what it
            was doing. Bad arguments raise ``TypeError``/``ValueError`` before any process starts.

    Example:
        >>> import torch
        >>> from trilib.nets import mlp
        >>> net = mlp([4, 8, 8, 8, 3], seed=0, dtype=torch.float64)
        >>> res = run(net, torch.randn(16, 4, dtype=torch.float64), "sum_squares", 2)  # doctest: +SKIP
        >>> res.slabs  # doctest: +SKIP
        ((1, 2), (3, 4))
    """
    names = [schedule] if isinstance(schedule, str) else list(schedule)
    if not names:
        raise ValueError("schedule must name at least one schedule")
    layers = check_args(model, x, world_size, names, backend, microbatches, timeout_s, warmup)
    loss = make_loss(loss_fn, targets)
    spec = {"layers": layers, "x": x.detach().cpu(), "loss": loss, "schedules": names,
            "microbatches": microbatches, "warmup": warmup, "backend": backend,
            "timeout_s": float(timeout_s), "threads": 1, "port": _free_port()}
    with tempfile.TemporaryDirectory(prefix="trilib-distributed-") as workdir:
        torch.save(spec, Path(workdir) / "spec.pt")
        raw = _launch(world_size, workdir, float(timeout_s))
    results = collect(raw, model, world_size, backend, microbatches)
    return results[names[0]] if isinstance(schedule, str) else results


def collect(raw: list[dict], model: nn.Module, world_size: int, backend: str,
            microbatches: int) -> dict[str, DistributedResult]:
    """Rank 0's gathered dicts (see :func:`~trilib.distributed.worker.serve`) as results."""
    k = len(parse_mlp(model))
    slabs = tuple(tuple(range(lo + 1, hi + 1)) for lo, hi in slab_bounds(k, world_size))
    order = [n for n, _ in model.named_parameters()]
    results = {}
    for item in raw:
        grads = {n: item["gradients"][n] for n in order}
        results[item["schedule"]] = DistributedResult(
            grads, item["loss"], sorted(item["events"], key=lambda e: (e.rank, e.start)),
            item["schedule"], world_size, slabs, backend,
            microbatches if item["schedule"] == "pipeline" else 1)
    return results


def _statuses(status, world: int) -> list[str]:
    with status.get_lock():
        raw = bytes(status[:])
    return [raw[r * STATUS_BYTES:(r + 1) * STATUS_BYTES].rstrip(b"\0").decode(errors="replace") or "starting"
            for r in range(world)]


def _errors(folder: Path) -> list[dict]:
    found = []
    for path in folder.glob("error-*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue                                     # being written: read next time
    return sorted(found, key=lambda e: e["time"])


def _reap(procs) -> None:
    """Terminate and join every child (SIGTERM, then SIGKILL after 2 s)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _launch(world: int, workdir: str, timeout_s: float) -> list[dict]:
    folder = Path(workdir)
    ctx = mp.get_context("spawn")
    status = ctx.Array("c", world * STATUS_BYTES)
    procs = [ctx.Process(target=spawn_entry, args=(r, world, workdir, status), daemon=True,
                         name=f"trilib-distributed-rank-{r}") for r in range(world)]
    # keep the last tenth of timeout_s (at most 1 s) for collecting stacks and terminating
    deadline = time.monotonic() + timeout_s - min(1.0, timeout_s / 10)
    try:
        for p in procs:
            p.start()
        while True:
            errors = _errors(folder)
            died = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if errors or died:
                _grace(procs, folder, min(1.0, max(0.0, deadline - time.monotonic())))
                raise _failure(_errors(folder), procs, _statuses(status, world))
            if all(p.exitcode == 0 for p in procs):
                break
            if time.monotonic() >= deadline:
                raise _timeout(_statuses(status, world), timeout_s, _stacks(procs, folder))
            wait_for([p.sentinel for p in procs if p.exitcode is None],
                     timeout=min(0.05, max(0.0, deadline - time.monotonic())))
        path = folder / "result.pt"
        if not path.exists():
            raise DistributedError("every rank exited cleanly but rank 0 wrote no result", 0, "finishing")
        return torch.load(path, weights_only=False)
    finally:
        _reap(procs)


def _grace(procs, folder: Path, seconds: float) -> None:
    """Give the other ranks a moment to report (their peers just failed), then stop waiting."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(p.exitcode is None for p in procs):
        wait_for([p.sentinel for p in procs if p.exitcode is None], timeout=0.05)


def _failure(errors: list[dict], procs, statuses: list[str]) -> DistributedError:
    reports = [(e["rank"], e["message"]) for e in errors]
    reported = {e["rank"] for e in errors}
    for r, p in enumerate(procs):
        if p.exitcode not in (None, 0) and r not in reported:
            how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            reports.append((r, f"rank {r} exited with {how} during {statuses[r]}"))
    first = errors[0] if errors else {"rank": reports[0][0], "activity": statuses[reports[0][0]]}
    message = reports[0][1] if errors else reports[0][1]
    others = [m for r, m in reports[1:]]
    if others:
        message += "\nthen: " + "\nthen: ".join(others)
    return DistributedError(message, first["rank"], first["activity"], reports,
                            {e["rank"]: e["traceback"] for e in errors})


def _stacks(procs, folder: Path) -> dict[int, str]:
    """Ask the ranks still running for their Python stack (SIGUSR1, see ``spawn_entry``)."""
    if not hasattr(signal, "SIGUSR1"):
        return {}
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in alive:
        try:
            os.kill(procs[r].pid, signal.SIGUSR1)
        except OSError:
            pass
    time.sleep(0.2)
    out = {}
    for r in alive:
        try:
            out[r] = (folder / f"stack-{r}.txt").read_text()
        except OSError:
            continue
    return out


def _timeout(statuses: list[str], timeout_s: float, stacks=None) -> DistributedError:
    stuck = next((r for r, s in enumerate(statuses) if not any(c in s for c in _COMMS)), 0)
    message = (f"the distributed run did not finish within timeout_s={timeout_s:g} s: rank {stuck} "
               f"stopped answering during {statuses[stuck]}")
    rest = [f"rank {r} was in {s}" for r, s in enumerate(statuses) if r != stuck]
    if rest:
        message += "; " + "; ".join(rest)
    return DistributedError(message, stuck, statuses[stuck], [(r, s) for r, s in enumerate(statuses)],
                            stacks)
