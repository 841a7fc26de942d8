"""Command line: model-parallel backward propagation on P processes, checked against autograd.

Under torchrun every process runs this module; it reads RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT from the environment torchrun sets up (so it runs across machines too). Without
torchrun it starts ``--processes`` local processes itself. Either way the ranks run the same worker
code (:func:`trilib.distributed.worker.serve`).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..nets import ACTIVATIONS, mlp
from .launch import BACKENDS, DistributedError, check_args, collect, run
from .model import LOSSES, make_loss
from .schedules import SCHEDULES
from .worker import WorkerError, serve

DESCRIPTION = """\
Spread the k layers of an MLP (k layers of width n) over P processes that talk through
torch.distributed, and compute its gradients with one model-parallel schedule:
  sequential  back-substitution: the error travels down the ranks, one message per boundary;
  pipeline    GPipe: --microbatches chunks flow through the ranks, neighbours overlap;
  tree        each rank turns its slab into one affine map, ceil(log2 P) rounds of recursive
              doubling across the ranks, then every rank back-substitutes locally.
Rank 0 recomputes the gradients with torch.autograd and prints the largest relative error,
then per rank the layers it owns and the seconds it spent computing, sending, receiving and
waiting (measured from a common start barrier). Exit status 1 if the error is above the
tolerance (1e-10 in float64, 1e-4 in float32) or a rank fails.

Across processes (and machines) with torchrun:
  torchrun --standalone --nproc-per-node 4 -m trilib.distributed --k 16 --width 8 --schedule tree
(torch 2.13's torchrun rejects "--n 8" before this module starts, as an ambiguous abbreviation
of its own --nnodes/--nproc-per-node, pytorch/pytorch#120601: write --width 8 or -n 8 there.)
Without torchrun, --processes P spawns P local processes:
  python -m trilib.distributed --processes 3 --k 12 --n 8 --schedule pipeline --microbatches 4
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trilib.distributed", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=16, help="number of layers (default 16)")
    p.add_argument("-n", "--n", "--width", dest="n", type=int, default=8,
                   help="width of every layer and of the input (default 8)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="tree", help="default tree")
    p.add_argument("--microbatches", type=int, default=1, help="micro-batches of the pipeline (default 1)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="default float64")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, inputs and targets (default 0)")
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="tanh", help="default tanh")
    p.add_argument("--loss", choices=list(LOSSES), default="cross_entropy", help="default cross_entropy")
    p.add_argument("--backend", choices=list(BACKENDS), default="gloo",
                   help="gloo (CPU) or nccl (one GPU per rank); default gloo")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent peer is an error")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded runs before the measured one")
    p.add_argument("--processes", type=int, default=2,
                   help="processes to spawn when not started by torchrun (default 2)")
    return p.parse_args(argv)


def problem(args):
    """The seeded network, input and loss every rank builds identically."""
    dtype = getattr(torch, args.dtype)
    net = mlp([args.n] * (args.k + 1), activation=args.activation, seed=args.seed, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.n, generator=gen, dtype=dtype)
    targets = None
    if args.loss == "cross_entropy":
        targets = torch.randint(0, args.n, (args.batch,), generator=gen)
    elif args.loss == "mse":
        targets = torch.randn(args.batch, args.n, generator=gen, dtype=dtype)
    return net, x, targets


def report(result, net, x, loss, launcher: str) -> tuple[str, float]:
    """The printed report and the largest relative gradient error against autograd."""
    net.zero_grad()
    loss(net(x)).backward()
    error = max(float((result.gradients[n] - p.grad).norm() / p.grad.norm().clamp_min(1e-300))
                for n, p in net.named_parameters())
    k = result.slabs[-1][-1]
    lines = [
        f"trilib.distributed: schedule {result.schedule!r} on {result.world_size} rank(s) "
        f"({result.backend}, {launcher}), k={k} layers, batch {x.shape[0]}, {x.dtype}"
        + (f", {result.microbatches} micro-batches" if result.schedule == "pipeline" else ""),
        "slabs: " + ", ".join(f"rank {d} owns layers {s[0]}-{s[-1]}" for d, s in enumerate(result.slabs)),
        f"loss: {result.loss:.10g}",
        f"relative gradient error against autograd (max over parameters): {error:.2e}",
        result.table(),
        f"makespan: {result.makespan:.4f} s (from the start barrier to the last event)",
    ]
    return "\n".join(lines), error


def main(argv=None) -> int:
    args = parse_args(argv)
    net, x, targets = problem(args)
    tolerance = 1e-10 if args.dtype == "float64" else 1e-4
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    try:
        if under_torchrun:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            layers = check_args(net, x, world, [args.schedule], args.backend, args.microbatches,
                                args.timeout, args.warmup)
            spec = {"layers": layers, "x": x, "loss": make_loss(args.loss, targets),
                    "schedules": [args.schedule], "microbatches": args.microbatches,
                    "warmup": args.warmup, "backend": args.backend, "timeout_s": args.timeout}
            raw = serve(rank, world, spec)
            if rank != 0:
                return 0
            result = collect(raw, net, world, args.backend, args.microbatches)[args.schedule]
        else:
            result = run(net, x, args.loss, args.processes, args.schedule, args.backend, args.microbatches,
                         args.timeout, targets=targets, warmup=args.warmup)
    except (WorkerError, DistributedError) as exc:
        print(f"trilib.distributed: {exc}", file=sys.stderr, flush=True)
        return 1
    except (TypeError, ValueError) as exc:
        print(f"trilib.distributed: {exc}", file=sys.stderr, flush=True)
        return 2
    text, error = report(result, net, x, make_loss(args.loss, targets),
                         "torchrun" if under_torchrun else "spawned")
    print(text, flush=True)
    if error > tolerance:
        print(f"FAILED: gradient error {error:.2e} above the tolerance {tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if "RANK" in os.environ and code != 0:
        os._exit(code)            # a failed rank must not wait in process-group destructors
    sys.exit(code)
