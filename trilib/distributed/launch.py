"""``trilib.distributed.run``: spawn P local processes, run schedules, collect what they did."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._checks import check_int, check_number
from ..bench.tables import cell, text_table
from .model import make_loss, parse_mlp, slab_bounds
from .processes import DistributedError, launch
from .schedules import SCHEDULES
from .timeline import Event, summarize

__all__ = ["BACKENDS", "DistributedError", "DistributedResult", "check_args", "collect", "run"]

BACKENDS = ("gloo", "nccl")


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
        columns = [("rank", "rank", "d"), ("layers", "layers", ""), ("compute_s", "compute", ".4f"),
                   ("send_s", "send", ".4f"), ("recv_s", "recv", ".4f"), ("wait_s", "wait", ".4f"),
                   ("events", "events", "d")]
        body = [[cell(r[key], spec) for _, key, spec in columns] for r in self.summary()]
        return text_table([name for name, _, _ in columns], body, left=0)


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
    check_int("world_size", world_size, 1, k,
              span=f"from 1 to the number of layers k={k} (each rank owns at least one layer)")
    if len(set(schedules)) != len(schedules):
        raise ValueError(f"schedule lists a schedule twice: {list(schedules)}")
    for name in schedules:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; valid schedules are: {', '.join(SCHEDULES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are: {', '.join(BACKENDS)}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend='nccl' needs CUDA GPUs; use backend='gloo' on CPUs")
    check_int("microbatches", microbatches, 1, x.shape[0], span=f"from 1 to the batch size {x.shape[0]}")
    if microbatches > 1 and "pipeline" not in schedules:
        raise ValueError(f"microbatches={microbatches} applies to the 'pipeline' schedule only, "
                         f"got schedule(s) {list(schedules)}")
    check_number("timeout_s", timeout_s, positive=True, finite=True,
                 what=f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    check_int("warmup", warmup, 0)
    return layers


def run(model: nn.Module, x: torch.Tensor, loss_fn, world_size: int, schedule="tree",
        backend: str = "gloo", microbatches: int = 1, timeout_s: float = 60.0, *,
        targets: torch.Tensor | None = None, warmup: int = 1):
    """Backward propagation of an MLP whose layers are spread over ``world_size`` processes.

    Starts ``world_size`` fresh Python processes (see :mod:`trilib.distributed.processes`; they
    meet in a file store in the run's private temporary folder, so no port can be taken by
    another process in between, and talk through ``torch.distributed`` only) and waits for them.

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
    with tempfile.TemporaryDirectory(prefix="trilib-distributed-") as workdir:
        # the ranks meet in a file store in the run's private folder: no port to race for
        rendezvous = (Path(workdir) / "rendezvous").as_uri()
        spec = {"layers": layers, "x": x.detach().cpu(), "loss": loss, "schedules": names,
                "microbatches": microbatches, "warmup": warmup, "backend": backend,
                "timeout_s": float(timeout_s), "threads": 1, "init_method": rendezvous}
        torch.save(spec, Path(workdir) / "spec.pt")
        raw = launch(world_size, workdir, float(timeout_s))
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
