"""The benchmark cases: deep narrow MLPs and RNNs, every trilib method against torch autograd
(and PyTorch's own ``associative_scan``) on the same model, measured side by side."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import nets
from .._numerics import rel_error
from ..api import backward_problem
from ..solvers import methods as registered_methods
from ..solvers import solve
from ..systems import BlockBidiagonalSystem
from .timing import measure

__all__ = ["AUTOGRAD", "SCAN", "associative_scan_solve", "run_mlp", "run_rnn", "rnn_supported"]

AUTOGRAD = "autograd"
SCAN = "associative_scan"


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
    from torch._higher_order_ops import associative_scan

    if not isinstance(system, BlockBidiagonalSystem) or not system.upper:
        raise TypeError(f"system must be an upper BlockBidiagonalSystem, got {system!r}")
    if len(set(system.block_sizes)) != 1:
        raise ValueError(f"associative_scan needs equal block widths, got {system.block_sizes}")
    n, k = system.block_sizes[0], system.k
    last = torch.zeros(system.batch_size, n, n, dtype=system.dtype, device=system.device)
    a = torch.stack([*system.blocks(), last])           # (k, batch, n, n); B_k = 0
    c = torch.stack(system.rhs)                         # (k, batch, n)

    def combine(later, earlier):
        # In a reverse scan the first argument is the row further down (larger l).
        a2, c2 = later
        a1, c1 = earlier
        return a1 @ a2, c1 + (a1 @ c2.unsqueeze(-1)).squeeze(-1)

    _, v = associative_scan(combine, (a, c), dim=0, reverse=True, combine_mode="generic")
    return list(v.unbind(0)) if k else []


def _case(model: nn.Module, x: torch.Tensor, loss_fn: Callable, methods: Sequence[str] | None,
          repeats: int, warmup: int, params: dict, step: bool) -> list[dict]:
    """Time autograd and the trilib methods on one model; rows for the result table."""
    device = x.device
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plist = [p for _, p in model.named_parameters() if p.requires_grad]
    out = loss_fn(model(x))
    ref = torch.autograd.grad(out, plist, retain_graph=True)
    problem = backward_problem(model, x, loss_fn)
    available = list(registered_methods(problem.system))
    if methods is None:
        scan_applies = (isinstance(problem.system, BlockBidiagonalSystem) and problem.system.upper
                        and len(set(problem.system.block_sizes)) == 1)
        chosen = available + ([SCAN] if scan_applies else [])
    else:
        chosen = [m for m in methods if m != AUTOGRAD]
    fns: dict[str, Callable] = {AUTOGRAD: lambda: torch.autograd.grad(out, plist, retain_graph=True)}
    notes: dict[str, str] = {}
    errors: dict[str, float] = {}
    steps: dict[str, int] = {AUTOGRAD: problem.system.k * max(params["tau"], 1)}
    for m in chosen:
        if m == SCAN:
            fn = (lambda: problem.parameter_gradients(associative_scan_solve(problem.system)))
        elif m in available:
            fn = (lambda m=m: problem.parameter_gradients(solve(problem.system, method=m)))
        else:
            notes[m] = f"not available for {type(problem.system).__name__}"
            continue
        try:                                   # skip what cannot run here, say why
            grads = fn()
            errors[m] = rel_error([grads[n] for n in names], ref)
            if m != SCAN:
                steps[m] = solve(problem.system, method=m, return_trace=True)[1].steps
        except Exception as exc:               # noqa: BLE001 -- reported in the table
            notes[m] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        fns[m] = fn
    times = measure(fns, device, repeats, warmup)
    rows = []
    base = statistics.median(times[AUTOGRAD])
    for m, t in times.items():
        med = statistics.median(t)
        rows.append(dict(params, metric="backward", method=m, median_s=med, min_s=min(t),
                         ratio=med / base, speedup=base / med, rel_error=errors.get(m, 0.0),
                         steps=steps.get(m, -1), note=""))
    for m, note in notes.items():
        rows.append(dict(params, metric="backward", method=m, median_s=float("nan"),
                         min_s=float("nan"), ratio=float("nan"), speedup=float("nan"),
                         rel_error=float("nan"), steps=-1, note=note))
    if step:
        from ..training import backward as trilib_backward

        def autograd_step():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x)).backward()

        def trilib_step():
            model.zero_grad(set_to_none=True)
            trilib_backward(model, x, loss_fn, method="sequential")

        st = measure({AUTOGRAD: autograd_step, "sequential": trilib_step}, device, repeats, warmup)
        sbase = statistics.median(st[AUTOGRAD])
        for m, t in st.items():
            med = statistics.median(t)
            rows.append(dict(params, metric="step", method=m, median_s=med, min_s=min(t),
                             ratio=med / sbase, speedup=sbase / med, rel_error=0.0,
                             steps=-1, note=""))
        model.zero_grad(set_to_none=True)
    return rows


def _loss(out: torch.Tensor) -> torch.Tensor:
    return out.square().mean()


def run_mlp(ks: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "k", step: bool = True,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of deep narrow tanh MLPs ``[n] * (k + 1)`` for every ``(k, n, batch)`` given.

    Args:
        ks, ns, batches: the sizes; every combination is run.
        methods: trilib method names (and/or ``"associative_scan"``); ``None`` = every method
            ``trilib.methods(system)`` reports, plus ``"associative_scan"``.
        device, dtype: where and in what precision.
        repeats, warmup: timed and untimed rounds (see :func:`measure`).
        sweep: a label stored in each row (which size this series varies).
        step: also time the whole training step of autograd and trilib sequential.
        progress: called with a line of text before each case.

    Returns:
        Rows (dicts) with ``suite, sweep, k, n, batch, metric, method, median_s, min_s, ratio,
        speedup, rel_error, note``; ``ratio`` is the method's median over autograd's, both
        measured in this run.
    """
    device = torch.device(device)
    rows = []
    for k in ks:
        for n in ns:
            for b in batches:
                if progress:
                    progress(f"mlp k={k} n={n} batch={b}")
                model = nets.mlp([n] * (k + 1), activation="tanh", seed=0, dtype=dtype, device=device)
                x = torch.randn(b, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
                params = dict(suite="mlp", sweep=sweep, k=k, n=n, batch=b, tau=0)
                rows += _case(model, x, _loss, methods, repeats, warmup, params, step)
    return rows


def rnn_supported() -> bool:
    """Whether trilib can build the backward system of an ``nn.RNN`` (RNN support landed)."""
    try:
        backward_problem(nn.RNN(2, 2, batch_first=True), torch.randn(1, 2, 2),
                         lambda out: out[0].sum() if isinstance(out, tuple) else out.sum())
        return True
    except (TypeError, NotImplementedError):
        return False


def _rnn_loss(out) -> torch.Tensor:
    out = out[0] if isinstance(out, tuple) else out
    return out.square().mean()


def run_rnn(taus: Sequence[int], ns: Sequence[int], batches: Sequence[int], *,
            methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, repeats: int = 7, warmup: int = 2,
            sweep: str = "tau", step: bool = False,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Backward of a single-layer tanh ``nn.RNN(n, n, batch_first=True)`` over τ time steps.

    Same arguments and rows as :func:`run_mlp` (``tau`` set, ``k = 1``). Returns no rows when
    trilib cannot build RNN systems (see :func:`rnn_supported`).
    """
    device = torch.device(device)
    if not rnn_supported():
        return []
    rows = []
    for tau in taus:
        for n in ns:
            for b in batches:
                if progress:
                    progress(f"rnn tau={tau} n={n} batch={b}")
                torch.manual_seed(0)
                model = nn.RNN(n, n, batch_first=True).to(device=device, dtype=dtype)
                x = torch.randn(b, tau, n, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
                params = dict(suite="rnn", sweep=sweep, k=1, n=n, batch=b, tau=tau)
                rows += _case(model, x, _rnn_loss, methods, repeats, warmup, params, step)
    return rows
