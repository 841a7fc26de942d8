"""Start P worker processes, watch them against a deadline, and always reap them.

Each rank is a fresh Python interpreter (``python -c "...spawn_entry()" WORKDIR RANK WORLD``,
started with :mod:`subprocess`, nothing forked): like the spawn start method of
:mod:`multiprocessing`, but without its resource-tracker process (which ignores SIGTERM and so
delays a Jupyter kernel's shutdown) and without re-importing the caller's ``__main__`` (so
scripts need no ``if __name__ == "__main__"`` guard). The parent and the ranks share only files
in a temporary folder: ``spec.pt`` (the job), ``status-R`` (what rank R is doing, for error
messages), ``error-R.json``, ``result.pt`` (rank 0), ``rank-R.log`` (the rank's own stdout and
stderr) and ``stack-R.txt`` (its Python stack, written on SIGUSR1 when it times out). The ranks
talk to each other through ``torch.distributed`` only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["DistributedError", "STATUS_BYTES", "launch"]

STATUS_BYTES = 160
_COMMS = (" recv from ", " send to ", " wait on ", "barrier", "init_process_group", "gathering")
_ENTRY = "from trilib.distributed.worker import spawn_entry; spawn_entry()"


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


def _environment() -> dict:
    """The caller's environment, with the folder that holds this ``trilib`` first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def launch(world: int, workdir: str, timeout_s: float) -> list[dict]:
    """Run ``world`` ranks on the job in ``workdir/spec.pt``; return rank 0's results.

    Raises:
        DistributedError: a rank failed (at once, naming it), or the run did not finish within
            ``timeout_s`` (naming the rank that stopped answering). The processes are
            terminated and reaped in every case.
    """
    folder = Path(workdir)
    (folder / "sys_path.json").write_text(json.dumps(sys.path))
    env = _environment()
    # keep the last tenth of timeout_s (at most 1 s) for collecting stacks and terminating
    deadline = time.monotonic() + timeout_s - min(1.0, timeout_s / 10)
    procs: list[subprocess.Popen] = []
    try:
        for r in range(world):
            with open(folder / f"rank-{r}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-c", _ENTRY, workdir, str(r), str(world)],
                                              env=env, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, close_fds=True))
        while True:
            codes = [p.poll() for p in procs]
            errors = _errors(folder)
            if errors or any(c not in (None, 0) for c in codes):
                _grace(procs, min(1.0, max(0.0, deadline - time.monotonic())))
                raise _failure(_errors(folder), procs, _statuses(folder, world), folder)
            if all(c == 0 for c in codes):
                break
            if time.monotonic() >= deadline:
                raise _timeout(_statuses(folder, world), timeout_s, _stacks(procs, folder))
            time.sleep(0.02)
        path = folder / "result.pt"
        if not path.exists():
            raise DistributedError("every rank exited cleanly but rank 0 wrote no result", 0, "finishing")
        return torch.load(path, weights_only=False)
    finally:
        _reap(procs)


def _statuses(folder: Path, world: int) -> list[str]:
    out = []
    for r in range(world):
        try:
            raw = (folder / f"status-{r}").read_bytes()
        except OSError:
            raw = b""
        out.append(raw.rstrip(b"\0").decode(errors="replace") or "starting")
    return out


def _errors(folder: Path) -> list[dict]:
    found = []
    for path in folder.glob("error-*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue                                     # being written: read next time
    return sorted(found, key=lambda e: e["time"])


def _reap(procs) -> None:
    """Terminate and wait for every child (SIGTERM, then SIGKILL after 2 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _grace(procs, seconds: float) -> None:
    """Give the other ranks a moment to report (their peers just failed), then stop waiting."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(p.poll() is None for p in procs):
        time.sleep(0.02)


def _log_tail(folder: Path, rank: int, lines: int = 6) -> str:
    try:
        text = (folder / f"rank-{rank}.log").read_text(errors="replace").strip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failure(errors: list[dict], procs, statuses: list[str], folder: Path) -> DistributedError:
    reports = [(e["rank"], e["message"]) for e in errors]
    reported = {e["rank"] for e in errors}
    tracebacks = {e["rank"]: e["traceback"] for e in errors}
    for r, p in enumerate(procs):
        code = p.poll()
        if code not in (None, 0) and r not in reported:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            tail = _log_tail(folder, r)
            reports.append((r, f"rank {r} exited with {how} during {statuses[r]}"
                               + (f"; its last output:\n{tail}" if tail else "")))
            tracebacks[r] = tail
    first_rank = errors[0]["rank"] if errors else reports[0][0]
    activity = errors[0]["activity"] if errors else statuses[first_rank]
    message = reports[0][1]
    if len(reports) > 1:
        message += "\nthen: " + "\nthen: ".join(m for _, m in reports[1:])
    return DistributedError(message, first_rank, activity, reports, tracebacks)


def _stacks(procs, folder: Path) -> dict[int, str]:
    """Ask the ranks still running for their Python stack (SIGUSR1, see ``spawn_entry``)."""
    if not hasattr(signal, "SIGUSR1"):
        return {}
    alive = [r for r, p in enumerate(procs) if p.poll() is None]
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
