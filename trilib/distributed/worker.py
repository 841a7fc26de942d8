"""The code every rank runs, under :func:`trilib.distributed.run` (spawned processes) and under
``torchrun`` (``python -m trilib.distributed``) alike.

A rank joins the process group (``spec["init_method"]``: a ``file://`` store in the run's private
folder under :func:`trilib.distributed.run`; ``env://``, i.e. MASTER_ADDR and MASTER_PORT, under
torchrun), and for each requested
schedule runs it ``warmup`` times unrecorded and once recorded (each run starts at a barrier,
t = 0 when the rank leaves it), then gathers gradients, loss and timeline on rank 0.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .processes import STATUS_BYTES
from .schedules import SCHEDULES, Context
from .timeline import Fault, Recorder

__all__ = ["WorkerError", "serve", "spawn_entry"]



class WorkerError(RuntimeError):
    """A rank failed; ``rank`` and ``activity`` say which and while doing what."""

    def __init__(self, rank: int, activity: str, cause: BaseException):
        self.rank, self.activity = rank, activity
        first = str(cause).strip().splitlines()
        self.cause = f"{type(cause).__name__}: {first[0] if first else ''}"
        super().__init__(f"rank {rank} failed during {activity}: {self.cause}")


def _device(backend: str) -> torch.device:
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _split(batch: int, microbatches: int) -> list[int]:
    return [batch // microbatches + (1 if j < batch % microbatches else 0) for j in range(microbatches)]


def serve(rank: int, world: int, spec: dict, on_status=None) -> list[dict] | None:
    """Run ``spec["schedules"]`` as rank ``rank`` of ``world``; on rank 0 return one dict per
    schedule: ``{"schedule", "gradients", "loss", "events"}`` (None on the other ranks).

    Args:
        spec: ``layers`` (list of :class:`~trilib.distributed.model.Layer`), ``x``, ``loss``
            (callable ``out -> E``), ``schedules``, ``microbatches``, ``warmup``, ``backend``,
            ``timeout_s`` and optionally ``threads``.
        on_status: called with a short text whenever the rank starts something new.

    Raises:
        WorkerError: naming the rank and what it was doing.
    """
    rec = Recorder(rank, on_status, Fault.from_env())
    try:
        rec.set_status("setup")
        rec.check_fault("setup")
        torch.set_num_threads(int(spec.get("threads", 1)))
        device = _device(spec["backend"])
        if device.type == "cuda":
            rec.sync = torch.cuda.synchronize
        rec.set_status("setup: init_process_group (waiting for every rank to join)")
        dist.init_process_group(spec["backend"], init_method=spec.get("init_method"), rank=rank,
                                world_size=world,
                                timeout=timedelta(seconds=float(spec["timeout_s"])))
        x = spec["x"].to(device)
        results = []
        for name in spec["schedules"]:
            m = spec["microbatches"] if name == "pipeline" else 1
            ctx = Context(rank, world, spec["layers"], rec, device,
                          spec["loss"] if rank == world - 1 else None, _split(x.shape[0], m))
            for _ in range(int(spec.get("warmup", 1)) + 1):
                rec.set_status(f"{name}: start barrier")
                dist.barrier()
                rec.restart()
                grads, loss = SCHEDULES[name](ctx, x)
            rec.set_status(f"{name}: gathering results on rank 0")
            payload = {"gradients": {k: t.detach().cpu() for k, t in grads.items()}, "loss": loss,
                       "events": rec.events}
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(payload, gathered, dst=0)
            if rank == 0:
                merged = {"schedule": name, "gradients": {}, "loss": gathered[-1]["loss"], "events": []}
                for part in gathered:
                    merged["gradients"].update(part["gradients"])
                    merged["events"].extend(part["events"])
                results.append(merged)
        rec.set_status("shutting down")
        dist.destroy_process_group()
        return results if rank == 0 else None
    except BaseException as exc:
        if isinstance(exc, WorkerError):
            raise
        raise WorkerError(rank, rec.status, exc) from exc


# --- processes started by trilib.distributed.run ---------------------------------------------------


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def spawn_entry(argv=None) -> None:
    """Entry point of the processes :func:`trilib.distributed.run` starts
    (``python -c "...spawn_entry()" WORKDIR RANK WORLD``): reads ``spec.pt``, serves, writes
    ``result.pt`` (rank 0) or ``error-<rank>.json``, and keeps ``status-<rank>`` up to date with
    what the rank is doing (see :mod:`trilib.distributed.processes`)."""
    workdir, rank, world = (argv or sys.argv[1:])[:3]
    folder, rank, world = Path(workdir), int(rank), int(world)
    activity = ["setup"]
    status = os.open(folder / f"status-{rank}", os.O_RDWR | os.O_CREAT, 0o600)

    def on_status(text: str) -> None:
        activity[0] = text
        os.lseek(status, 0, os.SEEK_SET)
        os.write(status, text.encode()[:STATUS_BYTES].ljust(STATUS_BYTES, b"\0"))

    if hasattr(signal, "SIGUSR1"):            # the parent asks for our stack when we time out
        stack = open(folder / f"stack-{rank}.txt", "w")      # stays open until os._exit
        faulthandler.register(signal.SIGUSR1, file=stack, all_threads=False)
    try:
        on_status("setup: loading the job")
        parent_path = json.loads((folder / "sys_path.json").read_text())
        sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
        spec = torch.load(folder / "spec.pt", weights_only=False)
        results = serve(rank, world, spec, on_status)
        if rank == 0:
            torch.save(results, folder / "result.tmp")
            os.replace(folder / "result.tmp", folder / "result.pt")
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        err = exc if isinstance(exc, WorkerError) else WorkerError(rank, activity[0], exc)
        _write_json(folder / f"error-{rank}.json",
                    {"rank": rank, "activity": err.activity, "message": str(err), "time": time.time(),
                     "traceback": traceback.format_exc()})
        _exit(1)                              # skip destructors that could wait on dead peers
    _exit(0)                                  # and the slow interpreter teardown of torch


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
