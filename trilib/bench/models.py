"""Real-model benchmark: the small GPT of notebook 11 (:func:`trilib.nets.gpt`) as a triangular
system, every listed method against autograd's backward, side by side.

Each method runs in its own subprocess (one thread), so that its peak resident memory is its
own: the process builds the model and the batch, captures the system (untimed), then times
``repeats`` rounds of solve + parameter gradients (for ``"autograd"``: ``loss.backward()`` after
an untimed forward) and reports the median, the process's peak RSS and the gradients' relative
error against autograd. Rows: ``method``, ``seconds``, ``ratio`` (over autograd's time),
``peak_rss_mb``, ``rss_ratio``, ``rel_error``, ``note`` (why a method was skipped).

Example:
    >>> from trilib.bench.models import run_models
    >>> rows = run_models(width=4, layers=1, tokens=3, batch=2, vocab=5, repeats=1,
    ...                   methods=["sequential"])
    >>> [r["method"] for r in rows]
    ['autograd', 'sequential']
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

__all__ = ["models_table", "run_models"]

AUTOGRAD = "autograd"


def _measure(method: str, vocab: int, width: int, layers: int, tokens: int, batch: int,
             repeats: int) -> dict:
    """One method in this process: median seconds, peak RSS (MiB) and relative error."""
    from .. import api, nets
    from .._numerics import rel_error
    from ..solvers import solve

    torch.set_num_threads(1)
    net = nets.gpt(vocab, width, layers, 2 if width % 2 == 0 else 1, tokens, seed=0,
                   dtype=torch.float64).eval()
    idx = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))

    def loss_fn(out):
        return nn.functional.cross_entropy(out.reshape(-1, vocab), idx.reshape(-1))

    times = []
    if method == AUTOGRAD:
        for _ in range(repeats):
            net.zero_grad()
            loss = loss_fn(net(idx))
            t0 = time.perf_counter()
            loss.backward()
            times.append(time.perf_counter() - t0)
        error = 0.0
    else:
        ref = torch.autograd.grad(loss_fn(net(idx)), list(net.parameters()))
        problem = api.backward_problem(net, idx, loss_fn)
        for _ in range(repeats):
            t0 = time.perf_counter()
            grads = problem.parameter_gradients(solve(problem.system, method))
            times.append(time.perf_counter() - t0)
        error = rel_error(list(grads.values()), list(ref))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux
    return {"seconds": statistics.median(times), "peak_rss_mb": rss, "rel_error": float(error)}


def run_models(vocab: int = 32, width: int = 16, layers: int = 2, tokens: int = 8, batch: int = 4,
               repeats: int = 3, methods=None, timeout: float = 600.0, progress=None) -> list[dict]:
    """Autograd and every listed method (or ``methods``) on the small GPT, one subprocess each."""
    from .. import api, nets
    from ..solvers import methods as listed

    if methods is None:
        net = nets.gpt(vocab, width, layers, 2 if width % 2 == 0 else 1, tokens, seed=0,
                       dtype=torch.float64).eval()
        idx = torch.zeros(batch, tokens, dtype=torch.long)
        methods = list(listed(api.backward_system(net, idx, lambda out: out.sum())))
    sizes = dict(vocab=vocab, width=width, layers=layers, tokens=tokens, batch=batch, repeats=repeats)
    rows = []
    for method in [AUTOGRAD, *methods]:
        cmd = [sys.executable, "-m", "trilib.bench.models", method, json.dumps(sizes)]
        row = {"suite": "gpt", "method": method, **sizes, "seconds": None, "peak_rss_mb": None,
               "rel_error": None, "note": ""}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if done.returncode:
                row["note"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
            else:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            row["note"] = f"over {timeout:.0f} s"
        if progress is not None:
            progress(f"gpt {method}: {row['seconds']} s, {row['peak_rss_mb']} MiB {row['note']}")
        rows.append(row)
    base = rows[0]
    for r in rows:
        ok = r["seconds"] is not None and base["seconds"]
        r["ratio"] = r["seconds"] / base["seconds"] if ok else None
        r["rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"] if ok else None
    return rows


def models_table(rows: list[dict]) -> str:
    """A text table: time and peak memory of each method against autograd's backward."""
    lines = [f"{'method':<16}{'seconds':>10}{'x autograd':>12}{'peak MiB':>10}{'x RSS':>8}"
             f"{'rel err':>10}  note"]
    for r in rows:
        def fmt(v, spec):
            return format(v, spec) if v is not None else format("-", f">{spec.split('.')[0]}")
        lines.append(f"{r['method']:<16}{fmt(r['seconds'], '10.4f')}{fmt(r['ratio'], '12.1f')}"
                     f"{fmt(r['peak_rss_mb'], '10.0f')}{fmt(r['rss_ratio'], '8.2f')}"
                     f"{fmt(r['rel_error'], '10.1e')}  {r['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], **json.loads(sys.argv[2]))))
