"""Model parallelism on real processes: the layers of an MLP spread over P ranks that talk
through ``torch.distributed`` (gloo on CPUs, NCCL on GPUs), with measured timelines
(docs/theory.md §6 and §8).

Three schedules solve the backward system ``U v = r`` across the ranks: ``"sequential"``
(back-substitution, the error travels down the ranks), ``"pipeline"`` (GPipe: micro-batches,
pipelined block Jacobi) and ``"tree"`` (each rank's slab as one affine map, ⌈log2 P⌉ rounds of
recursive doubling across ranks, then local back-substitution).

* :func:`run` spawns P local processes and returns gradients, loss and the measured timeline;
* ``torchrun --standalone --nproc-per-node P -m trilib.distributed --k K --n N --schedule S``
  runs the same worker code on any number of machines (see ``python -m trilib.distributed -h``);
* :func:`gantt` and :func:`compare` draw measured timelines (beside
  :func:`trilib.schedule.simulate`'s predictions).

Example:
    >>> import torch, trilib.distributed as td
    >>> from trilib.nets import mlp
    >>> net = mlp([8] * 7, seed=0, dtype=torch.float64)
    >>> x = torch.randn(32, 8, dtype=torch.float64)
    >>> res = td.run(net, x, "sum_squares", world_size=3, schedule="tree")  # doctest: +SKIP
    >>> print(res.table())  # doctest: +SKIP
"""

from .launch import BACKENDS, DistributedError, DistributedResult, run
from .model import ELEMENTWISE, LOSSES, parse_mlp, slab_bounds
from .schedules import SCHEDULES, SIMULATED
from .timeline import FAULT_ENV, KINDS, PHASES, Event

__all__ = [
    "BACKENDS", "DistributedError", "DistributedResult", "ELEMENTWISE", "Event", "FAULT_ENV", "KINDS",
    "LOSSES", "PHASES", "SCHEDULES", "SIMULATED", "compare", "gantt", "parse_mlp", "run", "slab_bounds",
]


def __getattr__(name):
    # The plots import matplotlib: load them only when asked for (workers never do).
    if name in ("gantt", "compare"):
        from . import plot

        return getattr(plot, name)
    raise AttributeError(f"module 'trilib.distributed' has no attribute {name!r}")
