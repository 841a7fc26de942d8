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


def fnn_systems():
    """Forward (lower) and backward (upper) systems of a 6-layer tanh MLP."""
    net = mlp([4, 4, 4, 4, 4, 4, 3], activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return viz.spy_pair(forward_system(net, x), backward_system(net, x, lambda out: out.square().sum()))


FIGURES = {"fnn_systems": fnn_systems}


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
        fig = FIGURES[name]()
        path = args.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        matplotlib.pyplot.close(fig)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
