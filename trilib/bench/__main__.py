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
from .peers import JAX_METHODS, jax_info, limit_jax_threads, prepare_jax_for_gpu
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
  The JSON/CSV (and with --text the printed report, <stem>.txt) go to --out; the figure goes to
  --out too unless --figures names another folder (--figures '' draws none). Nothing else is
  written.
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
                        "jax.associative_scan, jax.scan), each timed where it applies (one list can "
                        "name the MLP's and the RNN's methods); default: all that "
                        "trilib.methods(system) reports, plus the peers")
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
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also capture each direct solve in a torch.cuda.CUDAGraph and time its replay "
                        "(rows <method>+cuda_graph; needs --device cuda)")
    p.add_argument("--text", action="store_true",
                   help="also write the printed report as <stem>.txt beside the JSON/CSV")
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
            "jax_reason": jax.get("reason"), "jax_backend": jax.get("backend"),
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def check(args: argparse.Namespace) -> dict:
    """Every option of the command line, before anything runs: the suites, device, dtype and
    methods to measure (``SystemExit`` with the option's name for a bad one)."""
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
    if args.cuda_graphs and device.type != "cuda":
        raise SystemExit(f"--cuda-graphs: CUDA graphs exist only on a CUDA GPU, but --device is "
                         f"{device.type!r}; drop --cuda-graphs or run with --device cuda")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if methods:
        known = set(registered_methods()) | {SCAN, AUTOGRAD, *JAX_METHODS}
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(sorted(known))}")
    return {"suites": suites, "device": device, "dtype": getattr(torch, args.dtype), "methods": methods}


def configure(args: argparse.Namespace, device: torch.device) -> None:
    """Threads of torch and XLA as --threads asks, and JAX kept from taking the GPU's memory."""
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.threads == 1:
        limit_jax_threads()
    if device.type == "cuda":
        prepare_jax_for_gpu()


def measure_rows(args: argparse.Namespace, cfg: dict) -> list[dict]:
    """Run the suites asked for; the result rows (progress on stderr)."""
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    common = dict(methods=cfg["methods"], device=cfg["device"], dtype=cfg["dtype"], repeats=args.repeats,
                  warmup=args.warmup, cuda_graphs=args.cuda_graphs, progress=say)
    rows: list[dict] = []
    if "mlp" in cfg["suites"]:
        rows += _mlp_rows(args, common)
    if "rnn" in cfg["suites"]:
        rows += run_rnn(args.tau, args.n or [args.fixed_n], args.batch or [args.fixed_batch],
                        sweep="tau", **common)
    if "gated" in cfg["suites"]:
        from .gated import run_gated

        rows += run_gated(device=cfg["device"], dtype=cfg["dtype"], repeats=args.repeats,
                          warmup=args.warmup, progress=say)
    return rows


def measure_models(args: argparse.Namespace, cfg: dict) -> list[dict]:
    """The models suite (the small GPT, every listed method against autograd, one subprocess
    each), when asked for."""
    if "models" not in cfg["suites"]:
        return []
    from .models import run_models

    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    return run_models(repeats=args.repeats, progress=say)


def _unused(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """A note for each method of --methods that applied to none of the systems measured."""
    asked = [m.strip() for m in args.methods.split(",")] if args.methods else []
    measured = {r["method"] for r in rows} | {AUTOGRAD}
    return [f"--methods {m}: applies to none of the systems measured" for m in asked if m not in measured]


def make_result(args: argparse.Namespace, argv: Sequence[str] | None, device: torch.device,
                rows: list[dict], model_rows: list[dict]) -> dict:
    """The result dict that is saved: the machine, the options, the rows and the crossovers."""
    name = device_name(device)
    stem = f"{device.type}-{_slug(name)}" + (f"-{_slug(args.tag)}" if args.tag else "")
    machine = _machine(device, name, stem)
    return {
        "machine": machine,
        "config": dict(vars(args)),
        "command": "python -m trilib.bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "methods": sorted(set(registered_methods())),
        "notes": ([machine["jax_reason"]] if machine["jax"] is None else []) + _unused(args, rows),
        "crossover": crossovers(rows),
        "rows": rows,
        "models": model_rows,
    }


def report(result: dict) -> str:
    """The printed report: the machine, a table per metric, the summary, the crossovers, notes
    and skipped measurements."""
    rows, machine = result["rows"], result["machine"]
    jax_line = f"jax {machine['jax']} (jaxlib {machine['jaxlib']})" if machine["jax"] else "no jax"
    lines = [f"machine: {machine['name']} ({machine['device']}), torch {machine['torch']}, {jax_line}, "
             f"{machine['threads']} threads, {result['config']['dtype']}"]
    for metric in ("backward", "solve", "step"):
        if any(r["metric"] == metric for r in rows):
            lines += ["", table(rows, metric)]
    lines += ["", *summary(rows)]
    if any(r["suite"] in ("gru", "lstm") for r in rows):
        from .gated import gated_table

        lines.append(gated_table(rows))
    if result["models"]:
        from .models import models_table

        lines.append(models_table(result["models"]))
    for key, c in result["crossover"].items():
        if c["largest"] is None:
            continue
        where = (f"from {c['size']} = {c['crossover']}" if c["crossover"] is not None
                 else f"none up to {c['size']} = {c['largest']}")
        lines.append(f"crossover ({key}, best parallel method vs {c['against']}): {where}")
    lines += [f"note: {note}" for note in result["notes"]]
    lines += [f"skipped {r['method']} ({r['metric']}) at {r['suite']} k={r['k']} n={r['n']} "
              f"b={r['batch']} tau={r['tau']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines)


def write_outputs(result: dict, args: argparse.Namespace, text: str) -> list[Path]:
    """Save the JSON/CSV (and the report with --text) in --out and the figure in --figures."""
    paths = list(save_results(result, args.out))
    stem = result["machine"]["stem"]
    if args.text:
        paths.append(Path(args.out) / f"{stem}.txt")
        paths[-1].write_text(text + "\n")
    figures = args.out if args.figures is None else args.figures
    if figures:
        from ..viz.bench import plot_results

        tag = f"_{_slug(args.tag)}" if args.tag else ""
        paths.append(Path(figures) / f"bench_{result['machine']['device']}{tag}.png")
        plot_results(result, paths[-1])
    return paths


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; returns the result dict it wrote."""
    args = parser().parse_args(argv)
    cfg = check(args)
    configure(args, cfg["device"])
    result = make_result(args, argv, cfg["device"], measure_rows(args, cfg), measure_models(args, cfg))
    text = report(result)
    print(text)
    for path in write_outputs(result, args, text):
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
