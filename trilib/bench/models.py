"""Real-model benchmark: the small GPT of notebook 11 (:func:`trilib.nets.gpt`, float64, one
thread) as a triangular system, every listed method against autograd's backward.

Times are measured **side by side in one process** (:func:`trilib.bench.timing.measure`:
interleaved rounds, each timed call right after an untimed one of the same function, medians):
autograd's ``torch.autograd.grad`` of the loss on a forward graph recorded once
(``retain_graph=True``) against a solve of the captured system plus the parameter gradients.
Peak resident memory needs a process of its own: each method (autograd too) then runs once
more in a fresh subprocess that builds the model, captures the system and computes the
gradients, and reports its peak RSS. Rows: ``method``, ``seconds``, ``ratio`` (over autograd's
time), ``peak_rss_mb``, ``rss_ratio``, ``rel_error`` (gradients against autograd's), ``note``
(why a method has no numbers: its error, e.g. a memory refusal).

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
import subprocess
import sys
from statistics import median

import torch
from torch import nn

from .tables import cell, text_table
from .timing import measure

__all__ = ["models_table", "run_models"]

AUTOGRAD = "autograd"


def _setup(vocab: int, width: int, layers: int, tokens: int, batch: int):
    """The small GPT (float64, eval mode), a batch of token ids and its next-token loss."""
    from .. import nets

    torch.set_num_threads(1)
    net = nets.gpt(vocab, width, layers, 2 if width % 2 == 0 else 1, tokens, seed=0,
                   dtype=torch.float64).eval()
    idx = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))

    def loss_fn(out):
        return nn.functional.cross_entropy(out.reshape(-1, vocab), idx.reshape(-1))

    return net, idx, loss_fn


def _gradient_fns(methods, vocab, width, layers, tokens, batch) -> tuple[dict, dict, list, list]:
    """``{method: () -> gradients}`` for autograd and every method that builds, ``{method:
    error message}`` for those that raise, autograd's gradients, and the methods tried (``None``:
    every method the captured system lists)."""
    from .. import api
    from ..solvers import methods as listed
    from ..solvers import solve

    net, idx, loss_fn = _setup(vocab, width, layers, tokens, batch)
    params = list(net.parameters())
    loss = loss_fn(net(idx))
    fns = {AUTOGRAD: lambda: torch.autograd.grad(loss, params, retain_graph=True)}
    problem = api.backward_problem(net, idx, loss_fn)
    if methods is None:
        methods = list(listed(problem.system))
    failed = {}
    for method in methods:
        fn = (lambda m=method: list(problem.parameter_gradients(solve(problem.system, m)).values()))
        try:
            fn()                                   # a method that refuses (memory) is noted
        except Exception as err:                   # noqa: BLE001 - reported in the row's note
            failed[method] = f"{type(err).__name__}: {err}"
            continue
        fns[method] = fn
    return fns, failed, list(fns[AUTOGRAD]()), methods


def _peak_rss(method: str, vocab: int, width: int, layers: int, tokens: int, batch: int) -> dict:
    """In this (fresh) process: one gradient computation by ``method``; peak RSS in MiB."""
    fns, failed, _, _ = _gradient_fns([] if method == AUTOGRAD else [method], vocab, width, layers,
                                   tokens, batch)
    if method in failed:
        raise RuntimeError(failed[method])
    fns[method]()
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}   # KiB


def run_models(vocab: int = 32, width: int = 16, layers: int = 2, tokens: int = 8, batch: int = 4,
               repeats: int = 3, methods=None, timeout: float = 600.0, progress=None) -> list[dict]:
    """Autograd and every listed method (or ``methods``) on the small GPT: times side by side in
    this process, peak memory in one subprocess each."""
    from .._numerics import rel_error

    sizes = dict(vocab=vocab, width=width, layers=layers, tokens=tokens, batch=batch)
    threads = torch.get_num_threads()
    try:
        fns, failed, ref, methods = _gradient_fns(methods, **sizes)
        times = {m: median(t) for m, t in measure(fns, repeats=repeats, warmup=1).items()}
        errors = {m: float(rel_error(fns[m](), ref)) for m in fns}
    finally:
        torch.set_num_threads(threads)
    rows = []
    for method in [AUTOGRAD, *methods]:
        row = {"suite": "gpt", "method": method, **sizes, "repeats": repeats,
               "seconds": times.get(method), "rel_error": errors.get(method), "peak_rss_mb": None,
               "note": failed.get(method, "" if method in fns else f"unknown method {method!r}")}
        if method in fns:
            cmd = [sys.executable, "-m", "trilib.bench.models", method, json.dumps(sizes)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if done.returncode:
                    row["note"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
                else:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                row["note"] = f"memory run over {timeout:.0f} s"
        if progress is not None:
            progress(f"gpt {method}: {row['seconds']} s, {row['peak_rss_mb']} MiB {row['note']}")
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["ratio"] = r["seconds"] / base["seconds"] if r["seconds"] is not None else None
        r["rss_ratio"] = (r["peak_rss_mb"] / base["peak_rss_mb"]
                          if r["peak_rss_mb"] is not None and base["peak_rss_mb"] else None)
    return rows


def models_table(rows: list[dict]) -> str:
    """A text table: time and peak memory of each method against autograd's backward, then a
    line for each method that has no numbers, saying why."""
    body = [[r["method"], cell(r["seconds"], ".5f"), cell(r["ratio"], ".1f"),
             cell(r["peak_rss_mb"], ".0f"), cell(r["rss_ratio"], ".2f"), cell(r["rel_error"], ".0e")]
            for r in rows]
    first = rows[0] if rows else {}
    title = (f"small GPT: {first.get('layers')} layers, width {first.get('width')}, "
             f"{first.get('tokens')} tokens, batch {first.get('batch')}, float64, one thread")
    table = text_table(["method", "seconds", "x autograd", "peak MiB", "x RSS", "rel err"], body,
                       title=title, left=1)
    return "\n".join([table, *(f"{r['method']}: {r['note']}" for r in rows if r["note"])])


if __name__ == "__main__":
    print(json.dumps(_peak_rss(sys.argv[1], **json.loads(sys.argv[2]))))
