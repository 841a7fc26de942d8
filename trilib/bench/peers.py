"""Scans outside trilib on the same blocks: PyTorch's ``associative_scan`` and, when JAX is
installed (``pip install trilib[bench]``), JAX's jitted ``jax.lax.associative_scan`` and
``jax.lax.scan``. They solve the upper block bi-diagonal system of a deep MLP of equal widths;
the benchmark times them beside trilib's solvers and autograd in the same run."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..systems import BlockBidiagonalSystem

__all__ = ["JAX_METHODS", "JAX_SCAN", "JAX_SEQUENTIAL", "associative_scan_solve", "jax_device", "jax_info",
           "jax_solvers", "prepare_jax_for_gpu", "scan_applies"]

#: Names of the JAX peers in the result rows.
JAX_SCAN = "jax.associative_scan"
JAX_SEQUENTIAL = "jax.scan"
JAX_METHODS = (JAX_SCAN, JAX_SEQUENTIAL)
_INSTALL = "pip install trilib[bench]"
#: The oldest torch whose ``associative_scan`` has ``combine_mode="generic"`` (trilib itself
#: needs torch >= 2.4, see pyproject.toml).
SCAN_TORCH = "2.6"


def scan_applies(system) -> bool:
    """Whether the scans here apply: an upper block bi-diagonal system of one width."""
    return (isinstance(system, BlockBidiagonalSystem) and system.upper
            and len(set(system.block_sizes)) == 1)


def _stacked(system: BlockBidiagonalSystem) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, c)``: the ``k`` blocks ``B_1 .. B_{k-1}, 0`` as ``(k, batch, n, n)`` and the
    right-hand side ``(k, batch, n)``, from the system's stacked runs."""
    if not isinstance(system, BlockBidiagonalSystem) or not system.upper:
        raise TypeError(f"system must be an upper BlockBidiagonalSystem, got {system!r}")
    if len(set(system.block_sizes)) != 1:
        raise ValueError(f"associative_scan needs equal block widths, got {system.block_sizes}")
    n, batch = system.block_sizes[0], system.batch_size
    last = system.row_runs[0].rhs.new_zeros(1, batch, n, n)            # B_k = 0
    a = torch.cat([*(run.dense().expand(-1, batch, -1, -1) for run in system.block_runs), last])
    c = torch.cat([run.rhs for run in system.row_runs])
    return a, c


def associative_scan_solve(system: BlockBidiagonalSystem) -> list[torch.Tensor]:
    """Solve an upper block bi-diagonal system with ``torch._higher_order_ops.associative_scan``.

    Row ``l`` is the affine map ``v_l = B_l v_{l+1} + r_l``; composing two rows,
    ``(A, c) ∘ (A', c') = (A A', c + A c')``, is associative (docs/theory.md §5), so a reverse
    inclusive scan of the pairs ``(B_l, r_l)`` (with ``B_k = 0``) yields every ``v_l``.

    Args:
        system: an upper :class:`~trilib.systems.BlockBidiagonalSystem` whose blocks all have
            the same width n (a deep narrow MLP).

    Returns:
        The ``k`` blocks ``v_l``, each ``(batch, n)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v = associative_scan_solve(U)
        >>> all(torch.allclose(a, b) for a, b in zip(v, trilib.solve(U)))
        True
    """
    if torch.__version__ < SCAN_TORCH:
        raise RuntimeError(f"associative_scan(..., combine_mode='generic') needs torch >= {SCAN_TORCH} "
                           f"(this is {torch.__version__}); upgrade torch, or leave 'associative_scan' "
                           "out of --methods")
    from torch._higher_order_ops import associative_scan

    a, c = _stacked(system)

    def combine(later, earlier):
        # In a reverse scan the first argument is the row further down (larger l).
        a2, c2 = later
        a1, c1 = earlier
        return a1 @ a2, c1 + (a1 @ c2.unsqueeze(-1)).squeeze(-1)

    _, v = associative_scan(combine, (a, c), dim=0, reverse=True, combine_mode="generic")
    return list(v.unbind(0))


def jax_info() -> dict:
    """``{"jax": version, "jaxlib": version, "xla_flags": ...}``, or ``{"jax": None, "reason":
    why}`` when JAX cannot be imported."""
    try:
        import jax
        import jaxlib
    except ImportError as exc:
        return {"jax": None, "reason": f"jax not installed ({exc.name}): {_INSTALL}"}
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "backend": jax.default_backend()}


def limit_jax_threads() -> None:
    """Ask XLA for one thread of work per operation (``--xla_cpu_multi_thread_eigen=false``), as
    ``--threads 1`` asks of torch; only effective before JAX is first imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def jax_device(device: torch.device | str):
    """The JAX device that matches a torch device: JAX's first GPU for ``cuda``, its CPU
    otherwise, so JAX's scans run where trilib's solvers run.

    Raises:
        ImportError: JAX is not installed.
        RuntimeError: ``cuda`` was asked for but JAX sees no GPU (a CPU-only jaxlib): comparing
            JAX on the CPU with trilib on the GPU would mislead.
    """
    info = jax_info()
    if info["jax"] is None:
        raise ImportError(info["reason"])
    import jax

    if torch.device(device).type != "cuda":
        return jax.devices("cpu")[0]
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        raise RuntimeError(f"JAX sees no GPU (its devices: {jax.devices()}); install a CUDA jaxlib "
                           f"(pip install 'jax[cuda12]') to time its scans on the GPU") from None


def prepare_jax_for_gpu() -> None:
    """Stop JAX from taking 75 % of the GPU's memory when it starts (its default), which would
    leave PyTorch too little; only effective before JAX is first imported."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def jax_solvers(system: BlockBidiagonalSystem, device: torch.device | str = "cpu"
                ) -> dict[str, Callable[[], object]]:
    """JAX's jitted scans on the blocks of ``system``, compiled and ready to time.

    The blocks are converted once (torch → numpy → jax) and placed on :func:`jax_device`
    of ``device`` (JAX's GPU for ``cuda``, its CPU otherwise). Each
    returned function runs one solve and waits for it (``block_until_ready``); it returns the
    solution ``(k, batch, n)`` as a JAX array. ``jax.associative_scan`` composes the affine maps
    ``(A, c)`` exactly as trilib's direct solvers do; ``jax.scan`` is back-substitution, the
    sequential method, compiled into one loop.

    Raises:
        ImportError: JAX is not installed (the message says how to install it).
        RuntimeError: ``device`` is ``cuda`` and JAX sees no GPU.
    """
    import jax
    import jax.numpy as jnp

    where = jax_device(device)
    a, c = _stacked(system)
    a, c = (jax.device_put(t.detach().cpu().numpy(), where) for t in (a, c))

    def combine(later, earlier):
        a2, c2 = later
        a1, c1 = earlier
        return a1 @ a2, c1 + jnp.einsum("...ij,...j->...i", a1, c2)

    def substitute(v, row):
        a_l, c_l = row
        v = c_l + jnp.einsum("bij,bj->bi", a_l, v)
        return v, v

    scan = jax.jit(lambda a, c: jax.lax.associative_scan(combine, (a, c), reverse=True)[1])
    seq = jax.jit(lambda a, c: jax.lax.scan(substitute, jnp.zeros_like(c[0]), (a, c), reverse=True)[1])
    fns = {JAX_SCAN: lambda: scan(a, c).block_until_ready(),
           JAX_SEQUENTIAL: lambda: seq(a, c).block_until_ready()}
    for fn in fns.values():                     # compile now, outside the timed calls
        fn()
    return fns
