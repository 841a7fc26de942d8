"""Solvers for the 2-D backward system of a recurrent network (:class:`trilib.systems.GridSystem`:
``nn.GRU``/``nn.LSTM`` with dense blocks, and its factorised case :class:`trilib.systems.RNNSystem`
for ``nn.RNN``; docs/theory.md §2, §7). Each method has one code path for both: it reads the
system through the grid interface (``couple``, ``time_blocks``, ``depth_blocks``, ``r``).

* ``"sequential"``: back-propagation through time, one unknown ``v_{l,t}`` after another
  (k·τ steps).
* ``"wavefront"``: the level schedule of the grid: all ``v_{l,t}`` with the same
  ``(k-1-l) + (τ-1-t)`` at once (k + τ - 1 steps).
* ``"nested"``: cyclic reduction over layers whose block solves are recursive-doubling scans
  over time: O(log k · log τ) steps.

All three work on the ``(k, τ, batch, n)`` grid whatever the system's ordering and return the
blocks in that ordering. Combines are recorded as block-row indices of the system's ordering.
"""

from __future__ import annotations

import torch

from .._checks import check_memory
from .._numerics import ceil_log2
from ..systems import BlockVector, GridSystem
from ._affine import doubling, scan
from ._registry import register

__all__ = ["bptt", "wavefront", "nested", "time_scan"]


def _row(system: GridSystem, ls, ts, v: torch.Tensor) -> torch.Tensor:
    """``v_{l,t} = r_{l,t} + E_{l,t} v_{l+1,t} + P_{l,t} v_{l,t+1}`` for the rows ``(ls, ts)``
    (for an RNN ``E = D W_{l+1}^T``, ``P = D U_l^T``); ``v`` is the zero-padded grid."""
    return system.r[ls, ts] + system.couple(ls, ts, v[ls + 1, ts], v[ls, ts + 1])


@register("sequential", GridSystem, family=("substitution", "rnn"))
def bptt(system: GridSystem, trace) -> BlockVector:
    """Back-propagation through time: for t = τ..1, for l = k..1, solve ``v_{l,t}``.

    Steps: k·τ; work: one product per coupling (k·τ·2 - k - τ).

    Example:
        >>> import torch, trilib
        >>> rnn = torch.nn.RNN(2, 3, num_layers=2)
        >>> U = trilib.backward_system(rnn, torch.randn(4, 1, 2), lambda o: o[0].sum())
        >>> trilib.solve(U, "sequential", return_trace=True)[1].steps
        8
    """
    k, tau = system.grid_shape
    v = system.r.new_zeros(k + 1, tau + 1, *system.r.shape[2:])   # zero padding above and after
    for t in range(tau - 1, -1, -1):
        for l in range(k - 1, -1, -1):
            v[l, t] = _row(system, l, t, v)
            pairs = [(l, t, l + 1, t)] * (l + 1 < k) + [(l, t, l, t + 1)] * (t + 1 < tau)
            if trace is not None:
                trace.add_step([(system.index(a, b), system.index(c, e)) for a, b, c, e in pairs])
    return system.to_blocks(v[:k, :tau])


@register("wavefront", GridSystem, family="rnn")
def wavefront(system: GridSystem, trace) -> BlockVector:
    """Level scheduling on the grid: level ``s`` holds every ``v_{l,t}`` with
    ``(k-1-l) + (τ-1-t) = s`` (0-based), and all its unknowns are solved in one batched step.

    Steps: k + τ - 1 (the grid's longest path); work: as sequential.

    Example:
        >>> import torch, trilib
        >>> rnn = torch.nn.RNN(2, 3, num_layers=3)                       # k = 3, τ = 4
        >>> U = trilib.backward_system(rnn, torch.randn(4, 1, 2), lambda o: o[0].sum())
        >>> _, trace = trilib.solve(U, "wavefront", return_trace=True)
        >>> trace.steps == 3 + 4 - 1, trace.work == 3 * 4 * 2 - 3 - 4
        (True, True)
    """
    k, tau = system.grid_shape
    v = system.r.new_zeros(k + 1, tau + 1, *system.r.shape[2:])
    dev = system.device
    for s in range(k + tau - 1):
        ls = torch.arange(max(0, k - 1 - s), min(k, k + tau - 1 - s), device=dev)
        ts = (k - 1 - ls) + (tau - 1) - s
        v[ls, ts] = _row(system, ls, ts, v)
        pairs = [(system.index(l, t), system.index(l + 1, t)) for l, t in zip(ls.tolist(), ts.tolist())
                 if l + 1 < k]
        pairs += [(system.index(l, t), system.index(l, t + 1)) for l, t in zip(ls.tolist(), ts.tolist())
                  if t + 1 < tau]
        if trace is not None:
            trace.add_step(pairs)
    return system.to_blocks(v[:k, :tau])


def time_scan(p: torch.Tensor, x: torch.Tensor, trace=None, pairs_of=None) -> torch.Tensor:
    """Solve ``X_t = x_t + P_t X_{t+1}`` (t = τ-1..0, ``X_τ = 0``) for a batch of rows at once
    by trilib's affine scan (:func:`~trilib.solvers._affine.scan`, recursive doubling, a suffix
    scan over time; docs/theory.md §5).

    Args:
        p: ``(L, τ, batch, n, n)`` couplings ``P_t`` (``P_{τ-1}`` is ignored).
        x: ``(L, τ, batch, n, m)`` right-hand sides (m columns: m = 1 for a vector).
        trace: optional :class:`~trilib.trace.Trace`; one step per doubling.
        pairs_of: ``pairs_of(t, s)`` -> the combines ``(target, source)`` of a doubling with
            stride ``s`` for the targets ``t`` (a list of ints), for the trace.

    Returns:
        ``X``, shaped like ``x``. Steps: ``ceil(log2 τ)``.

    Example:
        >>> p = torch.full((1, 3, 1, 1, 1), 2.0); x = torch.ones(1, 3, 1, 1, 1)
        >>> time_scan(p, x).flatten().tolist()      # X_2 = 1, X_1 = 1 + 2, X_0 = 1 + 2·3
        [7.0, 3.0, 1.0]
    """
    tau = x.shape[1]
    # in scan order the last time step comes first: position q is t = τ-1-q, its source t + 1
    B, r = p.flip(1).movedim(1, 0), x.flip(1).movedim(1, 0)     # copies, in scan order
    B[0] = 0

    def record(step):
        pairs = pairs_of(list(range(tau - step.dist)), step.dist) if pairs_of else []
        trace.add_step(pairs, work=2 * len(pairs))

    X = scan(B, r, doubling(tau), record=None if trace is None else record)
    return X.movedim(0, 1).flip(1)


def _dense(e: torch.Tensor) -> torch.Tensor:
    """Block-diagonal-over-time ``(L, τ, b, n, n)`` -> dense operator ``(L, τ, b, n, τ·n)``."""
    L, tau, b, n, _ = e.shape
    check_memory(L * tau * b * n * tau * n * e.element_size(), "a dense coupling operator over time",
                 "Use method='wavefront' or 'sequential' for this size.")
    out = e.new_zeros(L, tau, b, n, tau, n)
    idx = torch.arange(tau, device=e.device)
    out[:, idx, :, :, idx, :] = e.transpose(0, 1)
    return out.reshape(L, tau, b, n, tau * n)


def _apply(e: torch.Tensor, kind: str, y: torch.Tensor) -> torch.Tensor:
    """``E y`` for stacked operators ``e`` and stacked ``(L, τ, b, n, m)`` right-hand sides."""
    if kind == "diag":
        return e @ y
    L, tau, b, n, m = y.shape
    flat = y.permute(0, 2, 1, 3, 4).reshape(L, b, tau * n, m)
    return torch.einsum("ltbiq,lbqm->ltbim", e, flat)


@register("nested", GridSystem, family=("rnn", "direct"))
def nested(system: GridSystem, trace) -> BlockVector:
    """Cyclic reduction over layers whose block solves are recursive-doubling scans over time.

    In the layer ordering the system is ``A_l V_l - E_l V_{l+1} = R_l`` (l = 1..k), where
    ``V_l = (v_{l,1..τ})``, ``A_l = I - shift ⊗ P_l`` is upper bi-diagonal over time and
    ``E_l = diag_t(E_{l,t})`` (for an RNN ``P_{l,t} = D_{l,t} U_l^T``, ``E_{l,t} = D_{l,t} W_{l+1}^T``;
    for a gated cell the transposed state Jacobians). One level of cyclic reduction keeps the even rows:

    1. odd rows, all at once: ``[Y_o | Z_o] = A_o^{-1} [R_o | E_o]`` (one time scan:
       ``ceil(log2 τ)`` steps);
    2. even rows: ``R_e += E_e Y_{e+1}``, ``E_e ← E_e Z_{e+1}`` (1 step; the new couplings are
       dense upper triangular over time);
    3. recurse on the even rows (the diagonal blocks ``A_e`` never change);
    4. odd rows: ``V_o = Y_o + Z_o V_{o+1}`` (1 step).

    A single row is one time scan. With one step to form the blocks ``D U^T`` and ``D W^T`` (a
    factorised :class:`~trilib.systems.RNNSystem`; a gated cell's blocks come formed, one step less):
    ``steps <= 1 + ceil(log2 k)·(ceil(log2 τ) + 2) + ceil(log2 τ)
    <= c·(ceil(log2 k) + 1)·(ceil(log2 τ) + 1)`` with **c = 3** (a level with two rows skips
    step 4). For k = 1 it is the time scan
    alone (recursive doubling along time). Memory: per-sample ``n x n`` blocks for every
    grid point, and once k >= 3 dense couplings of ``batch·τ²·n²`` numbers per row; the total
    (:func:`nested_bytes`) is checked against ``trilib.config.memory_limit_bytes`` before
    anything is allocated, for every k.

    Example:
        >>> import torch, trilib
        >>> rnn = torch.nn.RNN(2, 3, num_layers=4)
        >>> U = trilib.backward_system(rnn, torch.randn(8, 1, 2), lambda o: o[0].sum())
        >>> trilib.solve(U, "nested", return_trace=True)[1].steps   # 1 + (3 + 2) + (3 + 1) + 3
        13
    """
    k, tau = system.grid_shape
    batch, n = system.r.shape[2:]
    check_memory(nested_bytes(k, tau, batch, n, system.r.element_size()),
                 f"method 'nested' on a k={k} x τ={tau} grid (per-sample {n}x{n} blocks, batch {batch})",
                 "Use method='wavefront' or 'sequential', which never form n x n blocks.")
    # Step 0 (factorised blocks only): every block at once, P_{l,t} = D_{l,t} U_l^T (time) and
    # E_{l,t} = D_{l,t} W_{l+1}^T (depth).
    p, e = system.time_blocks(), system.depth_blocks()[:-1]
    if trace is not None and system.factorised:
        trace.add_step(work=k * tau + (k - 1) * tau)
    v = _Nested(system, trace, p).reduce(list(range(k)), system.r.unsqueeze(-1), e, "diag")
    return system.to_blocks(v.squeeze(-1))


class _Nested:
    """The recursion of :func:`nested` over the layer rows ``rows`` (right-hand sides with the
    coupling columns appended, ``(L, τ, batch, n, m)``), with the time blocks ``p``."""

    def __init__(self, system: GridSystem, trace, p: torch.Tensor):
        self.system, self.trace, self.p, self.tau = system, trace, p, system.grid_shape[1]

    def scan(self, rows: list[int], rhs: torch.Tensor) -> torch.Tensor:
        """``A_l^{-1} rhs_l`` for the layer rows ``rows``: one time scan."""
        idx = self.system.index

        def pairs_of(ts, s):
            return [(idx(l, t), idx(l, t + s)) for l in rows for t in ts]
        return time_scan(self.p[rows], rhs, self.trace, pairs_of)

    def record(self, rows: list[int], targets: list[int], work: int) -> None:
        """A step in which each row ``targets[i]`` takes the row below it, at every time."""
        if self.trace is not None:
            idx = self.system.index
            self.trace.add_step([(idx(rows[t], s), idx(rows[t + 1], s)) for t in targets
                                 for s in range(self.tau)], work=work)

    def reduce(self, rows: list[int], r: torch.Tensor, e: torch.Tensor, kind: str) -> torch.Tensor:
        """One level of cyclic reduction (steps 1-4 of :func:`nested`), recursing on the evens."""
        L = len(rows)
        if L == 1:
            return self.scan(rows, r)
        odd, even = list(range(1, L, 2)), list(range(0, L, 2))
        with_e = [o for o in odd if o + 1 < L]         # odd rows that couple further down
        yz = self.scan([rows[o] for o in odd], self._odd_rhs(r[odd], e, with_e, len(odd), kind))
        r_even, e_even = self._absorb(rows, r, e, yz, kind)
        v_even = self.reduce([rows[i] for i in even], r_even, e_even, "dense")
        v_odd = yz[..., :1]
        if with_e:                                     # back-substitute the odd rows
            nxt = [even.index(o + 1) for o in with_e]
            v_odd = v_odd.clone()
            v_odd[: len(with_e)] += _apply(yz[: len(with_e), ..., 1:], "dense", v_even[nxt])
            self.record(rows, with_e, len(with_e) * self.tau * self.tau)
        out = torch.empty(L, *r.shape[1:], dtype=r.dtype, device=r.device)
        out[even], out[odd] = v_even, v_odd
        return out

    @staticmethod
    def _odd_rhs(r_odd, e, with_e: list[int], n_odd: int, kind: str) -> torch.Tensor:
        """``[R_o | E_o]``: the odd rows' right-hand sides and their couplings as columns."""
        if not with_e:
            return r_odd
        ez = _dense(e[with_e]) if kind == "diag" else e[with_e]
        if len(with_e) < n_odd:                        # the last row has no coupling: pad
            ez = torch.cat([ez, ez.new_zeros(1, *ez.shape[1:])])
        return torch.cat([r_odd, ez], dim=-1)

    def _absorb(self, rows, r, e, yz, kind):
        """Step 2: even rows take the odd row below them, ``R_e += E_e Y``, ``E_e <- E_e Z``."""
        L = len(rows)
        odd, even = list(range(1, L, 2)), list(range(0, L, 2))
        targets = [e_ for e_ in even if e_ + 1 < L]
        upd = _apply(e[targets], kind, yz[[odd.index(t + 1) for t in targets]])
        self.record(rows, targets, len(targets) * (self.tau if kind == "diag" else self.tau * self.tau))
        r_new = r[even].clone()
        r_new[: len(targets)] += upd[..., :1]
        return r_new, upd[[i for i, t in enumerate(targets) if t + 2 < L]][..., 1:]


def nested_bytes(k: int, tau: int, batch: int, n: int, itemsize: int) -> int:
    """Peak memory of :func:`nested`, estimated: ``3 k τ`` per-sample ``n x n`` blocks (the
    couplings, the scan's copy and its products) plus, for k >= 3, ``1.5 k τ² ⌈log2 k⌉`` of them
    for the dense couplings over time, their scans and products (fitted with some margin to
    measured peaks: k = 1..6, τ = 40..400)."""
    blocks = 3 * k * tau
    if k >= 3:
        blocks += (3 * k * tau * tau * ceil_log2(k)) // 2
    return blocks * batch * n * n * itemsize


def nested_step_bound(k: int, tau: int, c: int = 3) -> int:
    """The documented bound ``c·(ceil(log2 k) + 1)·(ceil(log2 τ) + 1)`` on nested's steps."""
    return c * (ceil_log2(k) + 1) * (ceil_log2(tau) + 1)
