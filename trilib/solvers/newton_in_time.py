"""The forward pass of a recurrent network, parallel in time (docs/theory.md §7).

Each layer's states solve the lower system ``F_t(s) = s_t - cell(x_t, s_{t-1}) = 0`` over
``t = 0..τ-1``. Its Jacobian is unit lower block bi-diagonal with the blocks
``A_t = ∂cell/∂s (x_t, s_{t-1})``, so a Newton step is one linear recurrence
``δ_t = A_t δ_{t-1} + (c_t - s_t)`` (``c_t = cell(x_t, s_{t-1})``), solved by a parallel scan
in ``⌈log2 τ⌉`` steps. This is DEER (Lim et al., ICLR 2024) and ParaRNN (Danieli et al., 2025);
with only the diagonal of ``A_t`` it is quasi-DEER (Gonzalez et al., NeurIPS 2024), whose scan
needs only element-wise products.

* ``"sequential"``: the ordinary recurrence, k·τ steps.
* ``"newton"``: Newton's method in time, layer by layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .._checks import check_int
from .._numerics import ceil_log2
from ..systems import BlockBidiagonalSystem, BlockVector, RecurrentForwardSystem
from ..trace import Trace
from ._affine import doubling, scan
from ._registry import check_method, methods, register, solve
from ._sweeps import (
    ConvergenceError,
    ConvergenceWarning,
    Stopper,
    check_blocks,
    check_on_failure,
    check_tol,
    own_trace,
)
from .newton import ROUNDING

__all__ = ["diagonal_scan", "newton_in_time", "recurrence"]

JACOBIANS = ("full", "diagonal")
FALLBACKS = ("jacobi", "sequential")


def _time_pairs(system, l: int, first: int) -> list[tuple[int, int]]:
    tau = system.grid_shape[1]
    return [(system.index(l, t), system.index(l, t - 1)) for t in range(max(first, 1), tau)]


@register("sequential", RecurrentForwardSystem, family=("substitution", "matrix-free"))
def recurrence(system: RecurrentForwardSystem, trace) -> BlockVector:
    """The ordinary recurrence ``s_{l,t} = cell_l(x_{l,t}, s_{l,t-1})``: forward substitution,
    k·τ steps (one per state; the input projection ``W_ih x`` of a layer is one product over all t).

    Example:
        >>> import torch, trilib
        >>> gru = torch.nn.GRU(2, 3, num_layers=2)
        >>> out, trace = trilib.forward(gru, torch.randn(5, 1, 2), "sequential", return_trace=True)
        >>> trace.steps
        10
    """
    grid = system.recurrence()
    if trace is not None:
        k, tau = system.grid_shape
        for l in range(k):
            for t in range(tau):
                pairs = [(system.index(l, t), system.index(l, t - 1))] if t else []
                trace.add_step(pairs + ([(system.index(l, t), system.index(l - 1, t))] if l else []))
    return system.to_blocks(grid)


def diagonal_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``δ_t = a_t ⊙ δ_{t-1} + b_t`` (``δ_{-1} = 0``, so ``a_0`` is ignored) for
    ``t = 0..L-1``: trilib's affine scan (:func:`~trilib.solvers._affine.scan`, recursive
    doubling) on element-wise maps, ``⌈log2 L⌉`` steps of element-wise products.

    Example:
        >>> a, b = torch.full((4, 1), 2.0), torch.ones(4, 1)
        >>> diagonal_scan(a, b).flatten().tolist()      # 1, 2·1 + 1, 2·3 + 1, 2·7 + 1
        [1.0, 3.0, 7.0, 15.0]
    """
    a = a.clone()
    a[0] = 0
    return scan(a, b.clone(), doubling(b.shape[0]), diagonal=True)


def _solved_rows(s: torch.Tensor, c: torch.Tensor) -> int:
    """How many leading rows satisfy ``s_t = cell(x_t, s_{t-1})`` exactly (the solved front)."""
    unsolved = (s != c).reshape(s.shape[0], -1).any(1)
    return int(unsolved.long().argmax()) if unsolved.any() else s.shape[0]


def _check(system, jacobian, linear_method, tol, max_iterations, fallback, on_failure):
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    check_method(linear_method)
    if jacobian == "full" and linear_method not in methods(BlockBidiagonalSystem):
        raise ValueError(f"linear_method {linear_method!r} does not solve a BlockBidiagonalSystem; "
                         f"choose from {', '.join(methods(BlockBidiagonalSystem))}")
    if jacobian == "diagonal" and linear_method not in ("recursive_doubling", "sequential"):
        raise ValueError(f"with jacobian='diagonal' the scan is element-wise: linear_method must be "
                         f"'recursive_doubling' or 'sequential', got {linear_method!r}")
    tol = check_tol(tol)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    check_on_failure(on_failure)
    tau = system.grid_shape[1]
    limit = tau if max_iterations is None else min(check_int("max_iterations", max_iterations, 1), tau)
    return tol, limit


def _linear_solve(a, b, jacobian, linear_method, linear_options, record):
    """``δ`` of ``δ_t = A_t δ_{t-1} + b_t`` on the active rows, and the inner trace."""
    L = b.shape[0]
    if jacobian == "diagonal":
        inner = Trace(f"elementwise_{linear_method}")
        if linear_method == "sequential":
            delta = b.clone()
            for t in range(1, L):
                delta[t] += a[t] * delta[t - 1]
            steps = L
        else:
            delta, steps = diagonal_scan(a, b), ceil_log2(L)
        inner.steps, inner.work = steps, L * max(steps, 1)
        return delta, inner
    jac = BlockBidiagonalSystem(list(a[1:]), [None] * (L - 1), list(b), upper=False, symbol="δ")
    out = solve(jac, method=linear_method, return_trace=record, **linear_options)
    delta, inner = out if record else (out, None)
    return delta.stacked(), inner


@register("newton", RecurrentForwardSystem, family="iterative")
def newton_in_time(system: RecurrentForwardSystem, trace, *, jacobian: str = "full",
                   linear_method: str = "recursive_doubling", linear_options: dict | None = None,
                   tol: float | None = None, max_iterations: int | None = None, initial=None,
                   fallback: str = "jacobi", on_failure: str = "warn") -> BlockVector:
    """Newton's method over time, layer by layer: the forward pass in O(iterations · log τ) steps.

    Iteration ``i`` on a layer, at the iterate ``s`` with ``c_t = cell(x_t, s_{t-1})`` and
    ``A_t = ∂cell/∂s (x_t, s_{t-1})``: solve ``δ_t = A_t δ_{t-1} + (c_t - s_t)`` with one parallel
    scan, then ``s_t ← c_t + A_t δ_{t-1}`` (the Newton iterate, written so that a row whose
    predecessors have stopped changing becomes exactly ``c_t``). The scan covers only the rows from
    the first one with a non-zero residual: the rows before it are solved.

    **Exact after at most τ iterations.** Row 0 is ``c_0 = cell(x_0, s0)`` after one iteration;
    if rows ``0..t-1`` are solved, ``δ_{t-1} = 0`` and row ``t`` becomes ``cell(x_t, s_{t-1})``,
    its solution. So row ``t`` is solved after ``t + 1`` iterations whatever the start and whatever
    ``A`` (also with the diagonal of ``A`` only), in floating point too: at most τ iterations, each
    ``⌈log2 τ⌉`` scan steps. Close to the solution Newton converges quadratically, so on
    well-behaved (contracting) recurrences a handful of iterations suffice.

    **When it diverges.** On strongly expanding recurrences (large weight scales, ``‖A_t‖ > 1``
    over long stretches) the linearisation is poor far from the solution: the scan's products
    ``A_t ⋯ A_j`` grow without bound, iterates leave the range of the cell, and in float32 they
    overflow. The front of solved rows still advances by at least one row per iteration, so the
    result is exact after τ iterations, but then Newton is no faster than the recurrence.
    ``fallback="jacobi"`` replaces non-finite entries of an iterate by ``c_t`` (a fixed-point
    step, bounded for tanh/sigmoid cells); ``fallback="sequential"`` finishes the layer with the
    ordinary recurrence from the first unsolved row as soon as an iterate is not finite.

    Args:
        system: a :class:`~trilib.systems.RecurrentForwardSystem` (``trilib.forward_system`` of an
            ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM``).
        trace: one step per iteration (all layers); ``trace.residuals`` the relative residual
            ``‖s - c(s)‖ / ‖c(s)‖`` after each; ``trace.info``: ``"iterations"`` per layer,
            ``"solved_rows"`` after each iteration (leading rows with ``F_t(s) = 0`` exactly),
            ``"linear_steps"`` (the scans' steps, summed), ``"linear_traces"``, ``"fallbacks"``
            (iterates that were not finite) and ``"sequential_steps"`` (recurrence steps of
            ``fallback="sequential"``).
        jacobian: ``"full"`` (Newton: ``m x m`` blocks, O(m³) per combine) or ``"diagonal"``
            (quasi-Newton: element-wise scan, O(m) per combine; more iterations).
        linear_method: the direct method of each scan (default ``"recursive_doubling"``, any
            method for a :class:`~trilib.systems.BlockBidiagonalSystem`; with
            ``jacobian="diagonal"`` ``"recursive_doubling"`` or ``"sequential"``).
        linear_options: options for that method.
        tol: ``None`` (default): stop when the iterate no longer changes bit for bit, or when
            every time step of every sample equals its own update up to
            :data:`~trilib.solvers.newton.ROUNDING` units of rounding (as accurate as the
            recurrence), or after τ iterations (exact) — the rule of every iterative method in
            trilib. A number: stop once the relative residual is ``<= tol`` (an explicit early
            stop: it bounds the residual, not the error); ``tol=0`` only at an unchanged iterate.
        max_iterations: iteration limit per layer (default τ: enough, see above).
        initial: the starting guess, ``k·τ`` blocks ``(batch, m)`` (default zeros).
        fallback: ``"jacobi"`` or ``"sequential"`` (see above).
        on_failure: ``"warn"`` (:class:`ConvergenceWarning`) or ``"raise"`` when a layer does not
            converge within ``max_iterations``.

    Returns:
        The k·τ states ``s_{l,t}`` (``(batch, m)`` each), layer by layer.

    Example:
        >>> import torch, trilib
        >>> gru = torch.nn.GRU(3, 8, num_layers=2, dtype=torch.float64)
        >>> x = torch.randn(64, 4, 3, dtype=torch.float64)
        >>> (out, h_n), trace = trilib.forward(gru, x, "newton", return_trace=True)
        >>> torch.allclose(out, gru(x)[0], rtol=0, atol=1e-12), max(trace.info["iterations"]) < 64
        (True, True)
    """
    asked = trace is not None
    trace, _ = own_trace(trace, "newton")
    tol, limit = _check(system, jacobian, linear_method, tol, max_iterations, fallback, on_failure)
    init = check_blocks("initial", system, initial)
    k, tau = system.grid_shape
    grid = system.x.new_zeros(k, tau, *system.s0.shape[1:]) if init is None else system.to_grid(init)
    trace.info.update(jacobian=jacobian, iterations=[], solved_rows=[], linear_steps=0, linear_traces=[],
                      fallbacks=0, sequential_steps=0)
    how = _Newton(jacobian, linear_method, dict(linear_options or {}), fallback, asked)
    # the stopping rule of every iterative method, on one layer's τ rows (relative to c(s))
    stopper = Stopper([grid[0, 0, 0].numel()] * tau, grid.dtype, grid.device, tol, "residual", ROUNDING)
    converged = [_solve_layer(system, l, grid, trace, stopper, limit, how) for l in range(k)]
    trace.info["converged"], trace.info["tol"] = all(converged), tol
    if not all(converged):
        _fail(trace, tol, limit, tau, on_failure)
    return system.to_blocks(grid)


@dataclass(frozen=True)
class _Newton:
    """How each iteration solves and updates (the options of :func:`newton_in_time`)."""

    jacobian: str
    linear_method: str
    linear_options: dict
    fallback: str
    record: bool                 # pairs and inner traces wanted

    @property
    def diagonal(self) -> bool:
        return self.jacobian == "diagonal"


def _flat(t: torch.Tensor) -> torch.Tensor:
    """One layer's ``(τ, batch, ...)`` states as ``(batch, τ·m)``, rows in time order."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 1).reshape(t.shape[1], -1)


def _solve_layer(system, l: int, grid: torch.Tensor, trace, stopper: Stopper, limit: int,
                 how: _Newton) -> bool:
    """Newton's iterations on layer ``l`` (written into ``grid[l]``) until the stopping rule
    holds or ``limit`` iterations; True when the rule held."""
    cell = system.cells[l]
    xp = cell.project(system.layer_input(l, grid))

    def evaluate(s):
        prev = system.previous(l, s)
        return cell.step(xp, prev), cell.state_jacobian(xp, prev, diagonal=how.diagonal)

    s = grid[l]
    c, a = evaluate(s)
    stopped, its = stopper.check(None, s, _flat(s), _flat(c - s)), 0
    while not stopped and its < limit:
        s = _iteration(system, l, xp, s, c, a, trace, how)
        c, a = evaluate(s)
        its += 1
        trace.info["solved_rows"].append(_solved_rows(s, c))
        stopped = stopper.check(trace, s, _flat(s), _flat(c - s))
    grid[l] = s
    trace.info["iterations"].append(its)
    return stopped is not None


def _iteration(system, l: int, xp, s, c, a, trace, how: _Newton) -> torch.Tensor:
    """One Newton iteration on a layer at the iterate ``s`` (``c = cell(x, s_{t-1})``, ``a`` its
    Jacobian): the scan ``δ_t = A_t δ_{t-1} + (c_t - s_t)`` from the first unsolved row ``f``,
    then ``s_t ← c_t + A_t δ_{t-1}``, the fallback if that is not finite; recorded as one step."""
    tau = s.shape[0]
    b = c - s                                            # -F(s)
    f = int((b != 0).reshape(tau, -1).any(1).nonzero()[0])   # first unsolved row
    delta, inner = _linear_solve(a[f:], b[f:], how.jacobian, how.linear_method, how.linear_options,
                                 how.record)
    s = s.clone()
    s[f] = c[f]
    step = a[f + 1:] * delta[:-1] if how.diagonal else (a[f + 1:] @ delta[:-1].unsqueeze(-1)).squeeze(-1)
    s[f + 1:] = c[f + 1:] + step
    work = (inner.work if inner is not None else 0) + tau - f
    if not torch.isfinite(s).all():
        trace.info["fallbacks"] += 1
        if how.fallback == "jacobi":
            s = torch.where(torch.isfinite(s), s, c)
        else:                                            # the recurrence from row f on
            cell, prev = system.cells[l], (system.s0[l] if f == 0 else s[f - 1])
            for t in range(f, tau):
                prev = s[t] = cell.step(xp[t], prev)
            work += tau - f
            trace.info["sequential_steps"] += tau - f
    trace.add_step(_time_pairs(system, l, f) if how.record else [], work=work)
    if inner is not None:
        trace.info["linear_traces"].append(inner)
        trace.info["linear_steps"] += inner.steps
    elif not how.diagonal:
        trace.info["linear_steps"] += ceil_log2(tau - f)
    return s


def _fail(trace, tol: float | None, limit: int, tau: int, on_failure: str) -> None:
    target = f"residual <= {tol:.3e}" if tol is not None else "every time step at rounding level"
    msg = (f"newton did not converge: {target} not reached within max_iterations={limit} "
           f"(residual {trace.residuals[-1]:.3e}); Newton in time is exact after τ = {tau} iterations")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=4)
