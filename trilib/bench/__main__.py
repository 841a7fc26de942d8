"""The command line: ``python -m trilib.bench --help``."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..solvers import methods as registered_methods
from .peers import JAX_METHODS, jax_info, limit_jax_threads
from .report import crossovers, save_results, summary, table
from .suites import AUTOGRAD, SCAN, run_mlp, run_rnn
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


DESCRIPTION = ("Time backward propagation: torch autograd against every trilib method, and the "
               "scans of PyTorch and JAX on the same blocks, side by side in one run.")
SIZES = """sizes:
  Without --k, --n or --batch the default suite runs three MLP sweeps: depth k = 4,16,64,256 at
  width --fixed-n and batch --fixed-batch; width n = 8,16,64 at depth --fixed-k; batch = 1,4,32
  at --fixed-k and --fixed-n (and RNNs over --tau at --fixed-n, --fixed-batch).
  With any of --k, --n, --batch, the MLP suite runs every combination of the values given, and a
  size not given is held at its --fixed-* value: `--k 64,256 --n 8` runs k = 64 and 256 at
  n = 8 (batch --fixed-batch); `--k 256,1024,4096 --n 8,16 --batch 4` runs the three depths at
  both widths. RNNs run every --tau at the --n and --batch values given (else the fixed ones).

output:
  The JSON/CSV go to --out; the figure goes to --out too unless --figures names another folder
  (--figures '' draws none). Nothing else is written.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trilib.bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SIZES)
    p.add_argument("--suite", default="mlp,rnn",
                   help="comma-separated: mlp, rnn, gated (GRU/LSTM forward and forward+backward "
                        "against nn.GRU/nn.LSTM, sizes of trilib.bench.gated), models (the small GPT of "
                        "trilib.bench.models, every method against autograd in subprocesses) "
                        "(default: %(default)s)")
    p.add_argument("--k", type=_ints, default=None, help="MLP depths (see 'sizes' below)")
    p.add_argument("--n", type=_ints, default=None, help="MLP and RNN widths (see 'sizes' below)")
    p.add_argument("--batch", type=_ints, default=None, help="batch sizes (see 'sizes' below)")
    p.add_argument("--tau", type=_ints, default=[16, 64, 256],
                   help="RNN sequence lengths (default: 16,64,256)")
    p.add_argument("--fixed-k", type=int, default=64,
                   help="depth where k is not swept (default: %(default)s)")
    p.add_argument("--fixed-n", type=int, default=16,
                   help="width where n is not swept (default: %(default)s)")
    p.add_argument("--fixed-batch", type=int, default=4,
                   help="batch where the batch is not swept (default: %(default)s)")
    p.add_argument("--methods", default=None,
                   help="comma-separated trilib methods and/or peers (associative_scan, "
                        "jax.associative_scan, jax.scan); default: all that trilib.methods(system) "
                        "reports, plus the peers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=9, help="timed rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on CPU, and one XLA thread per op for JAX when 1 (0 = the "
                        "libraries' defaults); 1 keeps timings stable on a small shared machine "
                        "(default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results",
                   help="folder for the JSON/CSV, and for the figure unless --figures is given "
                        "(default: %(default)s)")
    p.add_argument("--figures", default=None,
                   help="folder for bench_<device>[_tag].png (default: the --out folder; '' = no figure)")
    p.add_argument("--tag", default="", help="suffix of the result file names (e.g. 'deep')")
    p.add_argument("--no-step", action="store_true", help="skip the forward+backward step timing")
    return p


def _mlp_rows(args, common: dict) -> list[dict]:
    fk, fn, fb = args.fixed_k, args.fixed_n, args.fixed_batch
    step = not args.no_step
    if args.k is None and args.n is None and args.batch is None:       # the default suite
        return (run_mlp([4, 16, 64, 256], [fn], [fb], sweep="k", step=step, **common)
                + run_mlp([fk], [8, 16, 64], [fb], sweep="n", step=False, **common)
                + run_mlp([fk], [fn], [1, 4, 32], sweep="batch", step=False, **common))
    ks, ns, bs = args.k or [fk], args.n or [fn], args.batch or [fb]
    sweep = next((name for name, vals in (("k", ks), ("n", ns), ("batch", bs)) if len(vals) > 1), "k")
    return run_mlp(ks, ns, bs, sweep=sweep, step=step, **common)


def _machine(device: torch.device, name: str, stem: str) -> dict:
    jax = jax_info()
    return {"device": device.type, "name": name, "stem": stem, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "jax": jax["jax"], "jaxlib": jax.get("jaxlib"), "xla_flags": jax.get("xla_flags"),
            "jax_reason": jax.get("reason"),
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; returns the result dict it wrote."""
    args = parser().parse_args(argv)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in ("mlp", "rnn", "gated", "models")]
    if bad:
        raise SystemExit(f"--suite: unknown suite(s) {bad}; choose from mlp, rnn, gated, models")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    if min(args.fixed_k, args.fixed_n, args.fixed_batch) < 1:
        raise SystemExit("--fixed-k, --fixed-n and --fixed-batch must be positive")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.threads == 1:
        limit_jax_threads()
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if methods:
        known = set(registered_methods()) | {SCAN, AUTOGRAD, *JAX_METHODS}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(sorted(known))}")
    dtype = getattr(torch, args.dtype)
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    common = dict(methods=methods, device=device, dtype=dtype, repeats=args.repeats,
                  warmup=args.warmup, progress=say)
    rows: list[dict] = []
    notes = []
    if "mlp" in suites:
        rows += _mlp_rows(args, common)
    if "rnn" in suites:
        rows += run_rnn(args.tau, args.n or [args.fixed_n], args.batch or [args.fixed_batch],
                        sweep="tau", **common)
    if "gated" in suites:
        from .gated import run_gated

        rows += run_gated(device=device, dtype=dtype, repeats=args.repeats, warmup=args.warmup, progress=say)
    model_rows = []
    if "models" in suites:
        from .models import run_models

        model_rows = run_models(repeats=args.repeats, progress=say)
    name = device_name(device)
    stem = f"{device.type}-{_slug(name)}" + (f"-{_slug(args.tag)}" if args.tag else "")
    machine = _machine(device, name, stem)
    if machine["jax"] is None:
        notes.append(machine["jax_reason"])
    result = {
        "machine": machine,
        "config": {k: v for k, v in vars(args).items()},
        "command": "python -m trilib.bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "methods": sorted(set(registered_methods())),
        "notes": notes,
        "crossover": crossovers(rows),
        "rows": rows,
        "models": model_rows,
    }
    jax_line = (f"jax {machine['jax']} (jaxlib {machine['jaxlib']})" if machine["jax"]
                else "no jax")
    print(f"machine: {name} ({device.type}), torch {torch.__version__}, {jax_line}, "
          f"{torch.get_num_threads()} threads, {args.dtype}")
    for metric in ("backward", "solve", "step"):
        if any(r["metric"] == metric for r in rows):
            print()
            print(table(rows, metric))
    print()
    for line in summary(rows):
        print(line)
    if "gated" in suites:
        from .gated import gated_table

        print(gated_table(rows))
    if model_rows:
        from .models import models_table

        print(models_table(model_rows))
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
            print(f"skipped {r['method']} ({r['metric']}) at {r['suite']} k={r['k']} n={r['n']} "
                  f"b={r['batch']} tau={r['tau']}: {r['note']}")
    jpath, cpath = save_results(result, args.out)
    print(f"wrote {jpath} and {cpath}")
    figures = args.out if args.figures is None else args.figures
    if figures:
        fpath = Path(figures) / (f"bench_{device.type}" + (f"_{_slug(args.tag)}" if args.tag else "")
                                 + ".png")
        from ..viz.bench import plot_results

        plot_results(result, fpath)
        print(f"wrote {fpath}")
    return result


if __name__ == "__main__":
    main()
