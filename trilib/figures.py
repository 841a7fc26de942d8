"""Regenerate the pictures in ``figures/`` from library code: ``python -m trilib.figures``.

Each function below draws one figure with trilib's own plotting functions and returns the
Matplotlib figure; :func:`main` saves them all (or those named on the command line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from . import viz  # noqa: E402
from .api import backward_system, forward_system  # noqa: E402
from .nets import mlp  # noqa: E402
from .solvers import methods  # noqa: E402
from .systems import BlockBidiagonalSystem  # noqa: E402


def fnn_systems():
    """Forward (lower) and backward (upper) systems of a 6-layer tanh MLP."""
    net = mlp([4, 4, 4, 4, 4, 4, 3], activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return viz.spy_pair(forward_system(net, x), backward_system(net, x, lambda out: out.square().sum()))


DIRECT = methods(BlockBidiagonalSystem, family="direct")


def scan_trees():
    """The combine trees of the four direct parallel methods for k = 12."""
    return viz.plot_trees(DIRECT, k=12)


def scan_counts():
    """Steps and work against k for every direct method beside sequential substitution."""
    return viz.plot_counts(("sequential", *DIRECT))


def pipelines():
    """Per-device timelines of sequential, pipelined Jacobi, block Jacobi and tree schedules."""
    return viz.gantt_grid(k=8, P=4, m=3)


def rnn_systems():
    """The 2-D backward system of a 2-layer, 6-step RNN, ordered by layer and by time."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(2, 3, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    return viz.rnn_spy_pair(backward_system(rnn, x, lambda out: out[0].square().sum()))


def graph_system():
    """A residual chain with skip distance 2 beside its triangular pattern, levels coloured."""
    from .graph.models import SkipChain

    torch.manual_seed(0)
    net = SkipChain(width=3, blocks=6, skip=2).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    return viz.dag_and_spy(backward_system(net, x, lambda out: out.square().sum()))


def bench_cpu():
    """Recorded CPU benchmark: backward time against autograd (redrawn from benchmarks/results)."""
    from .viz.bench import recorded_figure

    return recorded_figure("cpu")


def bench_cpu_deep():
    """Recorded CPU benchmark of deep narrow MLPs (k up to 4096), with the crossover depth."""
    from .viz.bench import recorded_figure

    return recorded_figure("cpu", tag="deep")


def bench_cuda():
    """Recorded CUDA benchmark (scripts/gpu_check.sh): the default sizes and long RNNs."""
    from .viz.bench import recorded_figure

    return recorded_figure("cuda")


def bench_cuda_deep():
    """Recorded CUDA benchmark of deep narrow MLPs (k up to 8192, scripts/gpu_check.sh)."""
    from .viz.bench import recorded_figure

    return recorded_figure("cuda", tag="deep")


#: Figures drawn from recorded measurements that may be absent (no GPU recorded yet): without
#: names on the command line they are skipped with a message when their results are missing.
RECORDED = ("bench_cuda", "bench_cuda_deep")

FIGURES = {"bench_cpu": bench_cpu, "bench_cpu_deep": bench_cpu_deep, "bench_cuda": bench_cuda,
           "bench_cuda_deep": bench_cuda_deep, "fnn_systems": fnn_systems,
           "scan_trees": scan_trees, "scan_counts": scan_counts, "pipelines": pipelines,
           "rnn_systems": rnn_systems, "graph_system": graph_system}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"figures to draw (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or FIGURES:
        try:
            fig = FIGURES[name]()
        except FileNotFoundError as exc:
            if args.names or name not in RECORDED:
                raise
            print(f"skipped {name}: {exc}")
            continue
        path = args.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        matplotlib.pyplot.close(fig)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
