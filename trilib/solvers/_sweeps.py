"""What every iterative method shares (docs/theory.md §6): option checks, the sweep loop with
its residual record and stopping rule, and the warning or error when the limit is hit.

Write the system as ``(I - N) u = r`` with ``N`` strictly triangular, so ``N^k = 0``. Each method
is **exact after a known number of sweeps**, its *exact count* (Jacobi: the nilpotency index of
``N``; block Jacobi: p; Gauss–Seidel: 1 or k; Newton: k iterations). The stopping rule:

* ``tol=None`` (default): stop when the iterate no longer changes bit for bit (a sweep is a
  deterministic function of the iterate, so every later sweep would return the same bits: the
  result *equals* the exact-count result), or at the exact count. This is autograd's answer up
  to rounding, whatever the conditioning. Newton (on layers, and in time) also stops when every
  row of every sample equals its own update up to ``ROUNDING`` units of rounding (its last bits
  settle one row per iteration).
* ``tol > 0``: instead of the rounding-level stop, stop once the relative residual is
  ``<= tol``. The residual bounds the backward error only; the forward error can be far
  larger on ill-conditioned systems.
* ``tol = 0.0``: stop at an exactly zero residual only.

:class:`Stopper` is this rule, used by :func:`sweep_loop` and by Newton in time.

Reaching the exact count is convergence. Only a ``max_sweeps`` below the exact count can stop a
method short: it then warns with :class:`ConvergenceWarning` (``on_failure="warn"``, default) or
raises :class:`ConvergenceError` (``on_failure="raise"``), naming the residual reached.
``trace.info["stopped"]`` says why a method stopped (``"fixed point"``, ``"tol"``,
``"exact count"`` or ``"max_sweeps"``/``"max_iterations"``) and ``trace.info["exact_count"]`` the
count. Every method records the relative residual after each sweep in ``trace.residuals`` (and the
relative error in ``trace.errors`` when a ``reference`` solution is given); ``trace.steps`` is the
number of sweeps (Newton: iterations). A sweep costs one fused norm reduction and one host
synchronisation, whatever k.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from .._checks import check_int, check_number
from .._numerics import slabs
from ..systems import BlockBidiagonalSystem, BlockVector, NonlinearForwardSystem, TriangularSystem

__all__ = ["ConvergenceWarning", "ConvergenceError", "exact_count", "own_trace", "slabs", "sweep_loop"]


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at a sweep limit below its exact count, short of its tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when ``on_failure="raise"``."""


def exact_count(system: TriangularSystem) -> int:
    """The nilpotency index of ``N``: the number of Jacobi sweeps after which the iterate is exact
    (from any start). The number of block rows on the longest dependency path: k for a block
    bi-diagonal or nonlinear forward system, the depth for a graph, k + τ - 1 for the RNN grid.

    Example:
        >>> import torch, trilib
        >>> rnn = torch.nn.RNN(2, 3, num_layers=2)
        >>> U = trilib.backward_system(rnn, torch.randn(5, 1, 2), lambda o: o[0].sum())
        >>> U.k, exact_count(U)
        (10, 6)
    """
    depth = getattr(system, "depth", None)              # GraphSystem: nodes on the longest path
    if isinstance(depth, int):
        return depth
    grid = getattr(system, "grid_shape", None)          # RNNSystem: (k, τ)
    if grid is not None:
        return grid[0] + grid[1] - 1
    return system.k


def check_blocks(name: str, system: TriangularSystem, blocks) -> list[torch.Tensor]:
    if blocks is None:
        return None
    sequence = isinstance(blocks, (list, tuple, BlockVector))
    if not sequence or len(blocks) != system.k:
        got = f"{len(blocks)} blocks" if sequence else type(blocks).__name__
        raise ValueError(f"{name} must be a list of k = {system.k} tensors, got {got}")
    for i, (b, r) in enumerate(zip(blocks, system.rhs)):
        if not isinstance(b, torch.Tensor) or b.shape != r.shape:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name} block {i} has shape {shape}, expected {tuple(r.shape)}")
    return [b.to(dtype=system.dtype, device=system.device) for b in blocks]


def check_common(system: TriangularSystem, tol, max_sweeps, reference, on_failure,
                 name: str = "max_sweeps"):
    """Validate the shared options: ``(tol or None, max_sweeps or None, reference blocks)``."""
    tol = check_tol(tol)
    if max_sweeps is not None:
        check_int(name, max_sweeps, 1)
    check_on_failure(on_failure)
    return tol, max_sweeps, check_blocks("reference", system, reference)


def check_tol(tol: object) -> float | None:
    """``tol`` of every iterative method: ``None`` or a number ``>= 0``."""
    if tol is None:
        return None
    return check_number("tol", tol, what=f"tol must be None (run to the exact answer) or a number >= 0, "
                                          f"got {tol!r}")


def check_on_failure(on_failure: object) -> None:
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}")


def own_trace(trace, method: str):
    """``(trace, wanted)``. Iterative methods keep their residual history even when the caller
    asked for no trace (``trilib.solve(..., return_trace=False)`` passes ``trace=None``): a
    private one then, into which no pairs are recorded (``wanted`` is False)."""
    from ..trace import Trace

    return (Trace(method), False) if trace is None else (trace, True)


def sweep_pairs(pairs, wanted: bool) -> list[tuple[int, int]]:
    """The ``(target, source)`` pairs of one sweep, normalised once per solve (empty when no
    trace was asked for)."""
    return [(int(t), int(s)) for t, s in pairs] if wanted and pairs else []


def record_step(trace, pairs: list[tuple[int, int]], work: int) -> None:
    """One sweep in the trace. Every sweep of an iterative method reads the same couplings, so
    ``pairs`` is one list built once per solve (:func:`sweep_pairs`) and appended by reference:
    a trace of s sweeps holds one copy of the k pairs, not s."""
    trace.combines.append(pairs)
    trace.steps += 1
    trace.work += int(work)


def coupling_pairs(system: TriangularSystem) -> list[tuple[int, int]] | None:
    """The ``(target, source)`` block pairs of ``N`` (row ``target`` reads ``u_source``), or None
    when the system does not expose its pattern without materialising blocks."""
    if isinstance(system, BlockBidiagonalSystem):
        return [system.row_col(l) for l in range(system.k - 1)]
    if isinstance(system, NonlinearForwardSystem):
        return [(l, l - 1) for l in range(1, system.k)]
    graph = getattr(system, "graph", None)
    if graph is not None and hasattr(graph, "edges"):
        return sorted((int(i), int(j)) for i, j in graph.edges)   # edge i -> j: N_ij = J_ji^T
    return None


def jacobi_step(system: TriangularSystem, u: Sequence[torch.Tensor]):
    """``(N u + r, N u + r - u)``: the next Jacobi iterate (``k`` contiguous blocks: the layer
    maps then see the memory layout substitution gives them, so a fixed point is bit for bit
    substitution's answer) and the residual of ``u`` as one flat ``(batch, N)`` tensor
    (:func:`flat`). The residual is exactly the change the next sweep makes, so it is zero
    exactly when ``u`` is a fixed point."""
    nxt = torch._foreach_add(system.apply_offdiagonal(u), list(system.rhs))
    return nxt, flat(nxt) - flat(u)


def flat(blocks: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A block vector (``(batch, n_i)`` blocks) as one ``(batch, N)`` tensor: one kernel, after
    which every reduction is one kernel too (a loop over k blocks would cost k launches)."""
    return blocks if isinstance(blocks, torch.Tensor) else torch.cat(list(blocks), dim=-1)


def fused_norms(*groups: Sequence[torch.Tensor] | torch.Tensor | None) -> list[float]:
    """``[||g||_2, max|g|]`` for every group (a block vector, a flat tensor, or ``None``: two
    zeros) with **one** host synchronisation in all. The 2-norm is accumulated in float64
    (float32 on devices without it); the max norm is exact, so ``max|g| == 0`` tells an exactly
    zero vector even where the 2-norm underflows.

    Example:
        >>> fused_norms([torch.tensor([3.0]), torch.tensor([0.0, -4.0])], None)
        [5.0, 4.0, 0.0, 0.0]
    """
    vals: list[torch.Tensor | None] = []
    for g in groups:
        g = None if g is None or (not isinstance(g, torch.Tensor) and not len(g)) else flat(g)
        if g is None or not g.numel():
            vals.append(None)
            continue
        acc = torch.float64 if g.device.type != "mps" else torch.float32
        vals.append(torch.stack([torch.linalg.vector_norm(g, 2, dtype=acc),
                                 torch.linalg.vector_norm(g, float("inf")).to(acc)]))
    ref = next((v for v in vals if v is not None), None)
    if ref is None:
        return [0.0] * (2 * len(groups))
    return torch.cat([ref.new_zeros(2) if v is None else v for v in vals]).tolist()


class Stopper:
    """The stopping rule of every iterative method (the module doc), for one solve: Jacobi,
    block Jacobi, Gauss–Seidel, Newton on a layer stack, and Newton in time on each RNN layer.

    Args:
        widths: the block widths of an iterate (its rows, for the rounding test).
        dtype, device: of the iterates.
        tol, fixed_by, rounding: see :func:`sweep_loop`.
        rhs: the right-hand side (blocks or flat): the residual is relative to it; ``None``
            (or zero): relative to the update ``u + res`` (``N u + r``; ``c(s)`` for Newton).
        reference: a known solution, for ``trace.errors``.
    """

    def __init__(self, widths, dtype, device, tol, fixed_by: str, rounding: float | None, rhs=None,
                 reference=None):
        self.tol, self.fixed_by = tol, fixed_by
        # the rounding-level stop is the default rule's; a tol given is the caller's criterion
        self.rounding = None if rounding is None or tol is not None else rounding * torch.finfo(dtype).eps
        self.reference = None if reference is None else flat(reference)
        self.rhs_norm, _, self.ref_norm, _ = fused_norms(rhs, self.reference)  # one sync
        self.rhs_zero = self.rhs_norm == 0
        if rounding is not None:                       # column -> block row, for per-row norms
            self.block_of = torch.repeat_interleave(torch.arange(len(widths), device=device),
                                                    torch.tensor(widths, device=device))
            self.k = len(widths)

    @classmethod
    def of(cls, system: TriangularSystem, tol, reference, fixed_by: str, rounding: float | None):
        """The rule for solving ``system``."""
        return cls(system.block_sizes, system.dtype, system.device, tol, fixed_by, rounding,
                   rhs=system.rhs, reference=reference)

    def check(self, trace, u_old, u, res) -> str | None:
        """Record the sweep that turned ``u_old`` into ``u`` (residual ``res``, blocks or flat)
        in ``trace`` (none if ``None``); return why to stop, or None."""
        uf, rf = flat(u), flat(res)
        change = uf - flat(u_old) if self.fixed_by == "change" else None
        scale = uf + rf if self.rhs_zero else None              # N u when r = 0
        err = uf - self.reference if self.reference is not None else None
        excess = self._rounding_excess(uf, rf) if self.rounding is not None else None
        r2, rinf, _, cinf, s2, sinf, e2, _, _, xinf = fused_norms(rf, change, scale, err, excess)
        scale2, scaleinf = (s2, sinf) if self.rhs_zero else (self.rhs_norm, None)
        if r2 == 0 and rinf > 0:                   # the 2-norm underflowed: use max norms
            residual = rinf / (scaleinf or scale2) if (scaleinf or scale2) else rinf
        else:
            residual = r2 / scale2 if scale2 > 0 else r2
        if trace is not None:
            trace.residuals.append(residual)
        if err is not None and trace is not None:
            trace.errors.append(e2 / self.ref_norm if self.ref_norm else e2)
        if (cinf == 0) if self.fixed_by == "change" else (rinf == 0):
            return "fixed point"
        if excess is not None and xinf == 0:
            return "rounding level"
        if self.tol is not None and residual <= self.tol:
            return "tol"
        return None

    def _rounding_excess(self, uf: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
        """``max(0, ||res_{l,b}||² - (c eps)² ||(N u + r)_{l,b}||²)`` for every row ``l`` and
        sample ``b`` (one segmented sum each): all zero when every row of every sample is its own
        update up to c units of rounding."""
        acc = torch.float64 if uf.device.type != "mps" else torch.float32

        def rows(t):
            return t.new_zeros(t.shape[0], self.k, dtype=acc).index_add_(1, self.block_of, t.to(acc).square())

        return (rows(rf) - self.rounding**2 * rows(uf + rf)).clamp_min(0)


def sweep_loop(trace, sweep: Callable, u: list[torch.Tensor], *, system: TriangularSystem, tol: float | None,
               max_sweeps: int | None, exact: int, reference, on_failure: str, exact_after: str,
               fixed_by: str = "change", rounding: float | None = None, unit: str = "sweeps",
               option: str = "max_sweeps") -> list[torch.Tensor]:
    """The loop of every iterative method: ``u, residual_blocks = sweep(u)`` (the sweep records
    its own step in the trace) until a stopping criterion holds (module docstring).

    Args:
        fixed_by: ``"change"``: the iterate is a fixed point once a sweep leaves it unchanged;
            ``"residual"``: once its residual is exactly zero (methods whose next step is
            ``u + residual``-shaped: Jacobi, Newton), which is found one sweep earlier.
        exact: the exact count; ``max_sweeps`` (default ``exact``) is capped by it.
        rounding: ``c``: also stop (``"rounding level"``) once, for every row ``l`` and sample
            ``b``, ``||res_{l,b}|| <= c eps ||(N u + r)_{l,b}||``: each row equals its own update up
            to c units of rounding (Newton, whose last bits settle one row per iteration).
    """
    limit = exact if max_sweeps is None else min(max_sweeps, exact)
    stopper = Stopper.of(system, tol, reference, fixed_by, rounding)
    stopped = None
    for _ in range(limit):
        u_old = u
        u, res = sweep(u)
        stopped = stopper.check(trace, u_old, u, res)
        if stopped:
            break
    if stopped is None:
        stopped = "exact count" if limit == exact else option
    trace.info.update(converged=stopped != option, stopped=stopped, tol=tol, exact_count=exact)
    if stopped == option:
        _fail(trace, tol, limit, exact_after, on_failure, unit, option)
    return u


def _fail(trace, tol, limit: int, exact_after: str, on_failure: str, unit: str, option: str) -> None:
    short = f"is above tol={tol:.3e}" if tol is not None else "and the iterate still changes"
    msg = (f"{trace.method} did not converge: relative residual {trace.residuals[-1]:.3e} after "
           f"{trace.steps} {unit} ({option}={limit}) {short}; {exact_after} (omit {option} to get "
           "there)")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=4)
