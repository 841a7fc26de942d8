"""The command line: ``python -m trilib.bench --help``."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..solvers import methods as registered_methods
from .report import crossover, save_results, table
from .suites import AUTOGRAD, SCAN, rnn_supported, run_mlp, run_rnn
from .timing import device_name

__all__ = ["main", "parser"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trilib.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="mlp,rnn", help="comma-separated: mlp, rnn, gated (GRU/LSTM "
                   "forward and forward+backward against nn.GRU/nn.LSTM, sizes of trilib.bench.gated)")
    p.add_argument("--k", type=_ints, default=[4, 16, 64, 256], help="MLP depths of the k sweep")
    p.add_argument("--n", type=_ints, default=[8, 16, 64], help="MLP widths of the n sweep")
    p.add_argument("--batch", type=_ints, default=[1, 4, 32], help="batch sizes of the batch sweep")
    p.add_argument("--tau", type=_ints, default=[16, 64, 256], help="RNN sequence lengths")
    p.add_argument("--fixed-k", type=int, default=64, help="k held fixed in the n and batch sweeps")
    p.add_argument("--fixed-n", type=int, default=16, help="n held fixed in the k, batch, τ sweeps")
    p.add_argument("--fixed-batch", type=int, default=4, help="batch held fixed in the k, n, τ sweeps")
    p.add_argument("--methods", default=None,
                   help="comma-separated trilib methods and/or associative_scan (default: all "
                        "that trilib.methods(system) reports, plus associative_scan)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on CPU (0 = torch's default); 1 keeps timings "
                        "stable on a small shared machine")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON/CSV")
    p.add_argument("--figures", default="figures", help="folder for bench_<device>.png ('' = none)")
    p.add_argument("--tag", default="", help="suffix of the result file names (e.g. 'deep')")
    p.add_argument("--no-step", action="store_true", help="skip the forward+backward step timing")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; returns the result dict it wrote."""
    args = parser().parse_args(argv)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in ("mlp", "rnn", "gated")]
    if bad:
        raise SystemExit(f"--suite: unknown suite(s) {bad}; choose from mlp, rnn, gated")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if methods:
        known = set(registered_methods()) | {SCAN, AUTOGRAD}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(sorted(known))}")
    dtype = getattr(torch, args.dtype)
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    common = dict(methods=methods, device=device, dtype=dtype, repeats=args.repeats,
                  warmup=args.warmup, progress=say)
    fk, fn, fb = args.fixed_k, args.fixed_n, args.fixed_batch
    rows: list[dict] = []
    notes = []
    if "mlp" in suites:
        rows += run_mlp(args.k, [fn], [fb], sweep="k", step=not args.no_step, **common)
        rows += run_mlp([fk], args.n, [fb], sweep="n", step=False, **common)
        rows += run_mlp([fk], [fn], args.batch, sweep="batch", step=False, **common)
    if "rnn" in suites:
        if rnn_supported():
            rows += run_rnn(args.tau, [fn], [fb], sweep="tau", **common)
        else:
            notes.append("rnn: trilib cannot build nn.RNN systems yet; suite skipped")
    if "gated" in suites:
        from .gated import run_gated

        rows += run_gated(device=device, dtype=dtype, repeats=args.repeats, warmup=args.warmup, progress=say)
    name = device_name(device)
    stem = f"{device.type}-{_slug(name)}" + (f"-{_slug(args.tag)}" if args.tag else "")
    result = {
        "machine": {"device": device.type, "name": name, "stem": stem, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "config": {k: v for k, v in vars(args).items()},
        "methods": sorted(set(registered_methods())),
        "notes": notes,
        "crossover": {"mlp_k": crossover(rows, "mlp", "k"),
                      "mlp_k_vs_sequential": crossover(rows, "mlp", "k", against="sequential"),
                      "rnn_tau": crossover(rows, "rnn", "tau")},
        "rows": rows,
    }
    print(f"machine: {name} ({device.type}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.dtype}")
    print(table(rows, "backward"))
    if any(r["metric"] == "step" for r in rows):
        print()
        print(table(rows, "step"))
    if "gated" in suites:
        from .gated import gated_table

        print(gated_table(rows))
    for key, c in result["crossover"].items():
        if c["largest"] is None:
            continue
        where = (f"from {c['size']} = {c['crossover']}" if c["crossover"] is not None
                 else f"none up to {c['size']} = {c['largest']}")
        print(f"crossover ({key}, best parallel method vs {c['against']}): {where}")
    for note in notes:
        print(f"note: {note}")
    for r in rows:
        if r["note"]:
            print(f"skipped {r['method']} at {r['suite']} k={r['k']} n={r['n']} b={r['batch']} "
                  f"tau={r['tau']}: {r['note']}")
    jpath, cpath = save_results(result, args.out)
    print(f"wrote {jpath} and {cpath}")
    if args.figures:
        fpath = Path(args.figures) / (f"bench_{device.type}" + (f"_{_slug(args.tag)}" if args.tag else "")
                                      + ".png")
        from ..viz.bench import plot_results

        plot_results(result, fpath)
        print(f"wrote {fpath}")
    return result


if __name__ == "__main__":
    main()
