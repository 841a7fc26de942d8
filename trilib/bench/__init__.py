"""Backward-propagation benchmark: torch autograd against every trilib method.

``python -m trilib.bench`` times, for deep narrow MLPs (sweeps over depth k, width n and
batch) and single-layer RNNs (sweep over τ), the **backward** pass of

* ``autograd``: ``torch.autograd.grad`` through ``nn.Sequential`` / ``nn.RNN`` (cuDNN on GPU),
  on a forward graph recorded once (``retain_graph=True``);
* every method that ``trilib.methods(system)`` reports at run time: a solve of the backward
  system plus the parameter gradients (metric ``backward``), and for substitution and the
  direct methods the solve alone (metric ``solve``), on a system built once;
* the same blocks through other libraries' scans, where the system is block bi-diagonal with
  equal widths: ``associative_scan``, PyTorch's own ``torch._higher_order_ops.associative_scan``
  (``combine_mode="generic"``) over the affine maps ``(B_l, r_l)`` (docs/theory.md §5), and,
  when JAX is installed (``pip install trilib[bench]``), ``jax.associative_scan`` and
  ``jax.scan``, jitted and timed after compilation (metric ``solve``);

and the whole training **step** (forward + backward, from ``x`` to every ``p.grad``) of
autograd against ``trilib.backward(...)`` with ``"sequential"`` and with the fastest direct
method of the case. Measurements are interleaved (one call of each method per round, so a noisy
shared machine slows all of them alike), come after a warm-up, and are summarised by medians;
ratios are against autograd's backward (or step) measured in the same run. On CUDA the timer is
a pair of CUDA events after ``torch.cuda.synchronize()``; with ``--cuda-graphs`` each direct
solve is also captured in a ``torch.cuda.CUDAGraph`` and its replay timed (``<method>+cuda_graph``),
and JAX's scans run on JAX's GPU (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so JAX leaves
PyTorch its memory).

Example:
    >>> from trilib import bench
    >>> rows = bench.run_mlp([4], [4], [2], repeats=1, warmup=0, methods=["sequential"])
    >>> [r["method"] for r in rows if r["metric"] == "backward"]
    ['autograd', 'sequential']
"""

from .peers import JAX_METHODS, associative_scan_solve, jax_info
from .report import DIRECT, crossover, load_results, save_results, summary, table
from .suites import AUTOGRAD, CUDA_GRAPH, SCAN, run_mlp, run_rnn
from .timing import device_name, measure, median_times

__all__ = [
    "AUTOGRAD", "CUDA_GRAPH", "DIRECT", "JAX_METHODS", "SCAN", "associative_scan_solve", "crossover",
    "device_name", "jax_info", "load_results", "main", "measure", "median_times", "run_mlp", "run_rnn",
    "save_results", "summary", "table",
]


def main(argv=None) -> dict:
    """Run the benchmark command line (``python -m trilib.bench``); returns the result it wrote."""
    from .__main__ import main as _main

    return _main(argv)
