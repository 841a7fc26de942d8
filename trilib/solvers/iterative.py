"""Iterative solvers (THEORY §6): Jacobi, block Jacobi, Gauss–Seidel, and Newton.

Write the system as ``(I - N) u = r`` with ``N`` strictly triangular, so ``N^k = 0``.

* **Jacobi** ``u <- N u + r``, all rows at once. The error is multiplied by ``N`` each sweep,
  so the iterate is exact after at most k sweeps. It needs only ``N u`` (matrix-free), so it is
  registered for every :class:`~trilib.systems.TriangularSystem`; on the nonlinear forward
  system ``N(z)_l = f_l(W_l z_{l-1} + b_l)`` it is nonlinear Jacobi, also exact after k sweeps.
* **Block Jacobi** with p blocks: each block substitutes inside itself, reading its neighbour
  block's value from the previous sweep. Exact after p sweeps.
* **Gauss–Seidel**: rows one after another, each reading the newest values. In the order of
  the dependencies it is substitution (exact in one sweep); in the reverse order it is Jacobi.
* **Newton** on the nonlinear forward system: each iteration solves the lower bi-diagonal
  linearisation ``J(z) dz = -F(z)`` with a direct (parallel) method.

Every method records the relative residual after each sweep in ``trace.residuals`` (and the
relative error in ``trace.errors`` when a ``reference`` solution is given); ``trace.steps`` is
the number of sweeps (Newton: iterations). If the tolerance is not reached within the sweep
limit the method warns with :class:`ConvergenceWarning` (``on_failure="warn"``, default) or
raises :class:`ConvergenceError` (``on_failure="raise"``), naming the residual reached.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .._checks import check_memory
from ..fnn import NonlinearForwardSystem
from ..systems import BlockBidiagonalSystem, TriangularSystem
from . import check_method, register, solve

__all__ = ["ConvergenceWarning", "ConvergenceError", "jacobi", "block_jacobi", "gauss_seidel",
           "newton", "default_tol", "slabs"]


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at its sweep limit above its tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when ``on_failure="raise"``."""


def default_tol(dtype: torch.dtype) -> float:
    """The default tolerance on the relative residual: ``64 * eps(dtype)``
    (about 1.4e-14 in float64, 7.6e-6 in float32)."""
    return 64 * torch.finfo(dtype).eps


def slabs(k: int, p: int) -> list[range]:
    """Split rows ``0..k-1`` into ``p`` contiguous blocks whose sizes differ by at most one.

    Example:
        >>> [list(s) for s in slabs(5, 2)]
        [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(k, p)
    out, start = [], 0
    for j in range(p):
        size = base + (1 if j < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


# -- shared helpers ------------------------------------------------------------------------------
def _norm(blocks: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(b.double().pow(2).sum()) for b in blocks))


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return value


def _check_blocks(name: str, system: TriangularSystem, blocks) -> list[torch.Tensor]:
    if blocks is None:
        return None
    if not isinstance(blocks, (list, tuple)) or len(blocks) != system.k:
        got = f"{len(blocks)} blocks" if isinstance(blocks, (list, tuple)) else type(blocks).__name__
        raise ValueError(f"{name} must be a list of k = {system.k} tensors, got {got}")
    for i, (b, r) in enumerate(zip(blocks, system.rhs)):
        if not isinstance(b, torch.Tensor) or b.shape != r.shape:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name} block {i} has shape {shape}, expected {tuple(r.shape)}")
    return [b.to(dtype=system.dtype, device=system.device) for b in blocks]


def _check_common(system: TriangularSystem, tol, max_sweeps, default_sweeps: int, reference,
                  on_failure, name: str = "max_sweeps"):
    if tol is None:
        tol = default_tol(system.dtype)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    max_sweeps = default_sweeps if max_sweeps is None else _check_int(name, max_sweeps, 1)
    if on_failure not in ("warn", "raise"):
        raise ValueError(f"on_failure must be 'warn' or 'raise', got {on_failure!r}")
    return float(tol), max_sweeps, _check_blocks("reference", system, reference)


def _record(trace, residual: float, u, reference) -> None:
    trace.residuals.append(residual)
    if reference is not None:
        scale = _norm(reference)
        err = _norm([a - b for a, b in zip(u, reference)])
        trace.errors.append(err / scale if scale > 0 else err)


def _finish(trace, converged: bool, tol: float, limit: int, exact_after: str, on_failure: str,
            unit: str = "sweeps", option: str = "max_sweeps") -> None:
    trace.info["converged"] = converged
    trace.info["tol"] = tol
    if converged:
        return
    msg = (f"{trace.method} did not converge: relative residual {trace.residuals[-1]:.3e} after "
           f"{trace.steps} {unit} ({option}={limit}) is above tol={tol:.3e}; {exact_after}")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=4)


def _coupling_pairs(system: TriangularSystem) -> list[tuple[int, int]] | None:
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


def _relative_residual(nu, rhs, u) -> float:
    """``||N u + r - u|| / ||r||``; when ``r = 0`` (the nonlinear forward system) relative to
    ``||N(u)||`` instead, so the number stays scale-free."""
    res = _norm([a + r - b for a, r, b in zip(nu, rhs, u)])
    scale = _norm(rhs)
    if scale == 0:
        scale = _norm(nu)
    return res / scale if scale > 0 else res


# -- Jacobi --------------------------------------------------------------------------------------
@register("jacobi", TriangularSystem)
def jacobi(system: TriangularSystem, trace, *, tol: float | None = None, max_sweeps: int | None = None,
           reference: Sequence[torch.Tensor] | None = None, initial: Sequence[torch.Tensor] | None = None,
           on_failure: str = "warn") -> list[torch.Tensor]:
    """Jacobi sweeps ``u <- N u + r`` (nonlinear Jacobi ``z <- N(z)`` on the forward system).

    Uses only ``system.apply_offdiagonal`` and ``system.rhs``, so it works matrix-free on every
    system. The product ``N u`` of a sweep also gives the residual ``N u + r - u`` of the
    previous iterate, so the residual costs nothing extra.

    Args:
        system: any :class:`~trilib.systems.TriangularSystem`.
        trace: receives one step per sweep (pairs: every block coupling).
        tol: stop once the relative residual is ``<= tol`` (default :func:`default_tol`).
        max_sweeps: sweep limit (default k: the iterate is exact after k sweeps).
        reference: a known solution; fills ``trace.errors`` with the relative error per sweep.
        initial: the starting guess (default zeros).
        on_failure: ``"warn"`` (:class:`ConvergenceWarning`) or ``"raise"``
            (:class:`ConvergenceError`) when ``tol`` is not met within ``max_sweeps``.

    Returns:
        ``k`` tensors ``(batch, n_l)``; ``trace.steps`` = sweeps done, ``trace.residuals`` the
        relative residual after each sweep.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "jacobi", return_trace=True)
        >>> trace.steps <= U.k, trace.residuals[-1] == 0.0
        (True, True)
    """
    tol, max_sweeps, reference = _check_common(system, tol, max_sweeps, system.k, reference, on_failure)
    u = _check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = _coupling_pairs(system)
    work = system.k if pairs is None or isinstance(system, NonlinearForwardSystem) else len(pairs)
    nu = system.apply_offdiagonal(u)
    converged = False
    for _ in range(max_sweeps):
        u = [n + r for n, r in zip(nu, system.rhs)]          # every row at once
        trace.add_step(pairs or [], work=work)
        nu = system.apply_offdiagonal(u)                    # next sweep's product = this residual
        _record(trace, _relative_residual(nu, system.rhs, u), u, reference)
        if trace.residuals[-1] <= tol:
            converged = True
            break
    _finish(trace, converged, tol, max_sweeps, f"Jacobi is exact after k = {system.k} sweeps",
            on_failure)
    return u


# -- block Jacobi ---------------------------------------------------------------------------------
def _dependency_order(system: BlockBidiagonalSystem, rows: range) -> list[int]:
    """Rows in the order substitution visits them (bottom-up for upper, top-down for lower)."""
    return list(reversed(rows)) if system.upper else list(rows)


def _coupling_of_row(system: BlockBidiagonalSystem) -> dict[int, int]:
    """``row -> l``: the coupling block that row ``row`` reads (rows without one are absent)."""
    return {system.row_col(l)[0]: l for l in range(system.k - 1)}


@register("block_jacobi", BlockBidiagonalSystem)
def block_jacobi(system: BlockBidiagonalSystem, trace, *, p: int = 2, tol: float | None = None,
                 max_sweeps: int | None = None, reference: Sequence[torch.Tensor] | None = None,
                 on_failure: str = "warn") -> list[torch.Tensor]:
    """Block Jacobi with ``p`` contiguous blocks of rows (p devices, each owning a slab).

    In a sweep every block substitutes through its rows at the same time; the one row that
    reads outside its block reads the neighbour's value from the previous sweep. The inner
    step ``i`` treats row ``i`` of every block at once.

    Args:
        system: upper or lower :class:`~trilib.systems.BlockBidiagonalSystem`.
        trace: one step per sweep (pairs: the k - 1 couplings);
            ``trace.info["steps_per_sweep"]`` = the longest block.
        p: number of blocks, ``1 <= p <= k`` (p = 1 is substitution, p = k is Jacobi).
        tol, reference, on_failure: as for :func:`jacobi`.
        max_sweeps: sweep limit (default p: exact after p sweeps).

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> v, trace = trilib.solve(U, "block_jacobi", p=2, return_trace=True)
        >>> trace.steps, trace.info["steps_per_sweep"]
        (2, 3)
    """
    p = _check_int("p", p, 1, system.k)
    tol, max_sweeps, reference = _check_common(system, tol, max_sweeps, p, reference, on_failure)
    blocks = [_dependency_order(system, rows) for rows in slabs(system.k, p)]
    reads = _coupling_of_row(system)
    pairs = [system.row_col(l) for l in range(system.k - 1)]
    owner = {row: j for j, b in enumerate(blocks) for row in b}
    longest = max(len(b) for b in blocks)
    trace.info["steps_per_sweep"] = longest
    trace.info["blocks"] = [sorted(b) for b in blocks]
    # inner step i treats row i of every block: its rows, the coupling each reads, and whether
    # that coupling reaches outside the block (then it reads the previous sweep)
    inner = []
    for i in range(longest):
        rows = [b[i] for b in blocks if i < len(b)]
        free = [row for row in rows if row not in reads]
        coupled = [(row, reads[row]) for row in rows if row in reads]
        outside = [owner[system.row_col(l)[1]] != owner[row] for row, l in coupled]
        inner.append((free, coupled, outside, _RowBatch(system, coupled)))
    u = [torch.zeros_like(r) for r in system.rhs]
    converged = False
    for _ in range(max_sweeps):
        new = list(u)
        for free, coupled, outside, batch in inner:     # one parallel step each
            for row in free:
                new[row] = system.rhs[row]
            sources = [(u if out else new)[system.row_col(l)[1]] for (_, l), out in zip(coupled, outside)]
            for (row, _), value in zip(coupled, batch(sources)):
                new[row] = value
        u = new
        trace.add_step(pairs)
        nu = system.apply_offdiagonal(u)
        _record(trace, _relative_residual(nu, system.rhs, u), u, reference)
        if trace.residuals[-1] <= tol:
            converged = True
            break
    _finish(trace, converged, tol, max_sweeps, f"block Jacobi is exact after p = {p} sweeps",
            on_failure)
    return u


class _RowBatch:
    """``r_row + B_l u_col`` for several independent rows ``(row, l)`` as one batched product
    when their blocks share a shape (the usual case: equal hidden widths), else block by block."""

    def __init__(self, system: BlockBidiagonalSystem, coupled: list[tuple[int, int]]):
        self.system, self.coupled = system, coupled
        mats = [system.mats[l] for _, l in coupled]
        scales = [system.scales[l] for _, l in coupled]
        self.batched = (len(coupled) > 1 and all(m.shape == mats[0].shape for m in mats)
                        and all((d is None) == (scales[0] is None) for d in scales))
        if self.batched:
            check_memory(sum(m.numel() * m.element_size() for m in mats),
                         f"stacking {len(mats)} coupling blocks for block Jacobi",
                         "Use fewer blocks p, or method='sequential'.")
            self.mats = torch.stack(mats)                               # (q, [batch,] rows, cols)
            self.scales = None if scales[0] is None else torch.stack(scales)
            self.rhs = torch.stack([system.rhs[row] for row, _ in coupled])

    def __call__(self, sources: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.batched:
            return [self.system.rhs[row] + self.system.apply_block(l, x)
                    for (row, l), x in zip(self.coupled, sources)]
        x = torch.stack(sources)                                        # (q, batch, cols)
        if self.mats.dim() == 3:
            out = x @ self.mats.transpose(-1, -2)
        else:
            out = (self.mats @ x.unsqueeze(-1)).squeeze(-1)
        if self.scales is not None:
            out = out * self.scales
        return list((self.rhs + out).unbind(0))


# -- Gauss–Seidel -----------------------------------------------------------------------------
@register("gauss_seidel", BlockBidiagonalSystem)
def gauss_seidel(system: BlockBidiagonalSystem, trace, *, order: str = "dependency",
                 tol: float | None = None, max_sweeps: int | None = None,
                 reference: Sequence[torch.Tensor] | None = None, on_failure: str = "warn"
                 ) -> list[torch.Tensor]:
    """Gauss–Seidel: update the rows one after another, each reading the newest values.

    Args:
        system: upper or lower :class:`~trilib.systems.BlockBidiagonalSystem`.
        trace: one step per sweep; ``trace.info["steps_per_sweep"]`` = k (rows in sequence).
        order: ``"dependency"`` (bottom-up for upper, top-down for lower: a sweep is
            substitution, exact after one sweep) or ``"reverse"`` (every row reads a value of
            the previous sweep: Jacobi, exact after k sweeps).
        tol, reference, on_failure: as for :func:`jacobi`.
        max_sweeps: sweep limit (default k).

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 4, 4, 2], seed=0, dtype=torch.float64)
        >>> U = trilib.backward_system(net, torch.randn(5, 3, dtype=torch.float64), lambda o: o.sum())
        >>> [trilib.solve(U, "gauss_seidel", order=o, return_trace=True)[1].steps
        ...  for o in ("dependency", "reverse")]
        [1, 3]
    """
    if order not in ("dependency", "reverse"):
        raise ValueError(f"order must be 'dependency' or 'reverse', got {order!r}")
    tol, max_sweeps, reference = _check_common(system, tol, max_sweeps, system.k, reference, on_failure)
    rows = _dependency_order(system, range(system.k))
    if order == "reverse":
        rows = rows[::-1]
    reads = _coupling_of_row(system)
    pairs = [(row, system.row_col(reads[row])[1]) for row in rows if row in reads]
    trace.info["steps_per_sweep"] = system.k
    u = [torch.zeros_like(r) for r in system.rhs]
    converged = False
    for _ in range(max_sweeps):
        u = list(u)
        for row in rows:                                # one row after another
            l = reads.get(row)
            if l is None:
                u[row] = system.rhs[row]
            else:
                u[row] = system.rhs[row] + system.apply_block(l, u[system.row_col(l)[1]])
        trace.add_step(pairs)
        nu = system.apply_offdiagonal(u)
        _record(trace, _relative_residual(nu, system.rhs, u), u, reference)
        if trace.residuals[-1] <= tol:
            converged = True
            break
    exact = ("one sweep in the dependency order" if order == "dependency"
             else f"k = {system.k} sweeps in reverse order")
    _finish(trace, converged, tol, max_sweeps, f"Gauss–Seidel is exact after {exact}", on_failure)
    return u


# -- Newton ----------------------------------------------------------------------------------------
def _linearize(system, u) -> BlockBidiagonalSystem:
    """The Newton system ``J(u) du = r - A(u)`` (for a linear system, A itself)."""
    if isinstance(system, NonlinearForwardSystem):
        return system.linearize(u)
    return system.with_rhs(system.residual(u))


def _newton_residual(system, u, minus_f) -> float:
    """``||F(u)|| / ||r||``, or ``/ ||N(u)||`` when ``r = 0``, from ``-F(u) = r - A(u)``."""
    res, scale = _norm(minus_f), _norm(system.rhs)
    if scale == 0:
        scale = _norm([a + b for a, b in zip(u, minus_f)])      # N(u) = u - F(u)
    return res / scale if scale > 0 else res


@register("newton", NonlinearForwardSystem, BlockBidiagonalSystem)
def newton(system, trace, *, linear_method: str = "recursive_doubling", linear_options: dict | None = None,
           tol: float | None = None, max_iterations: int | None = None,
           reference: Sequence[torch.Tensor] | None = None, initial: Sequence[torch.Tensor] | None = None,
           on_failure: str = "warn") -> list[torch.Tensor]:
    """Newton's method for ``F(z) = z - N(z) = 0``: ``z <- z + dz`` with ``J(z) dz = -F(z)``.

    ``J(z)`` is unit lower bi-diagonal with blocks ``D_l W_l`` (THEORY §1), so each iteration is
    one linear solve with a direct method (default: recursive doubling, ⌈log2 k⌉ steps). Row l
    is exact after l iterations, so at most k are needed; in practice far fewer. On a linear
    :class:`~trilib.systems.BlockBidiagonalSystem` one iteration is one direct solve.

    Args:
        system: a :class:`~trilib.fnn.NonlinearForwardSystem` (or a linear bi-diagonal system).
        trace: one step per iteration, with ``work`` = the linear solve's block products plus k
            layer evaluations; ``trace.info["linear_steps"]`` sums the inner solves' steps and
            ``trace.info["linear_traces"]`` keeps them.
        linear_method: the method for each linear solve (any name in :func:`trilib.methods`).
        linear_options: options for that method.
        tol: stop once the relative residual ``||F(z)|| / ||N(z)||`` is ``<= tol``
            (default :func:`default_tol`).
        max_iterations: iteration limit (default k).
        reference, initial, on_failure: as for :func:`jacobi`.

    Returns:
        ``k`` tensors ``(batch, n_l)``.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 8, 8, 8, 2], seed=0, dtype=torch.float64)
        >>> Z = trilib.forward_system(net, torch.randn(5, 3, dtype=torch.float64))
        >>> z, trace = trilib.solve(Z, "newton", linear_method="sequential", return_trace=True)
        >>> trace.steps <= Z.k
        True
    """
    check_method(linear_method)
    linear_options = dict(linear_options or {})
    tol, max_iterations, reference = _check_common(system, tol, max_iterations, system.k, reference,
                                                   on_failure, name="max_iterations")
    u = _check_blocks("initial", system, initial)
    if u is None:
        u = [torch.zeros_like(r) for r in system.rhs]
    pairs = _coupling_pairs(system)
    trace.info["linear_traces"] = []
    trace.info["linear_steps"] = 0
    jac = _linearize(system, u)                         # rhs = -F(u)
    converged = False
    for _ in range(max_iterations):
        du, inner = solve(jac, method=linear_method, return_trace=True, **linear_options)
        u = [a + b for a, b in zip(u, du)]
        trace.info["linear_traces"].append(inner)
        trace.info["linear_steps"] += inner.steps
        trace.add_step(pairs, work=inner.work + system.k)
        jac = _linearize(system, u)                     # the next Jacobian, and -F(u)
        _record(trace, _newton_residual(system, u, jac.rhs), u, reference)
        if trace.residuals[-1] <= tol:
            converged = True
            break
    _finish(trace, converged, tol, max_iterations,
            f"Newton is exact after at most k = {system.k} iterations in exact arithmetic",
            on_failure, unit="iterations", option="max_iterations")
    return u
