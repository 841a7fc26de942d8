"""From ``nn.RNN``/``nn.GRU``/``nn.LSTM`` to systems: input checks, the forward system over time,
and the backward system of a gated network (docs/theory.md §7)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._autograd import loss_gradients
from .._checks import UnsupportedLayerError, check_finite, check_matches, recurrent_input
from ..systems import BackwardProblem, GridSystem, RecurrentForwardSystem
from .cells import GRUCell, LSTMCell, RNNCell

__all__ = ["RECURRENT", "GATED", "GatedRecord", "cells", "layer_cell", "check_module", "split_input",
           "forward_system",
           "record_forward", "backward_system_from_record", "parameter_gradients", "backward_problem"]

#: The modules with a forward system over time; the gated ones have a :class:`GridSystem` backward.
RECURRENT = (nn.RNN, nn.GRU, nn.LSTM)
GATED = (nn.GRU, nn.LSTM)


def check_module(module: nn.Module) -> None:
    """Raise unless ``module`` is a unidirectional ``nn.RNN``/``nn.GRU``/``nn.LSTM`` trilib can express."""
    if not isinstance(module, RECURRENT):
        raise TypeError(f"expected a torch.nn.RNN, GRU or LSTM, got {type(module).__name__}")
    name = type(module).__name__
    if module.bidirectional:
        raise UnsupportedLayerError(f"{name} with bidirectional=True has no forward system here: it is two "
                                    "chains running in opposite time directions (its backward system, "
                                    "for one layer, is trilib.gated.bidirectional_problem); use "
                                    "bidirectional=False")
    if getattr(module, "proj_size", 0) > 0:
        raise UnsupportedLayerError(f"{name} with proj_size={module.proj_size} is not supported: the "
                                    "projected state changes the cell; use proj_size=0")
    if module.dropout > 0 and module.training and module.num_layers > 1:
        raise UnsupportedLayerError(f"{name} with dropout={module.dropout} in training mode is random "
                                    "between layers; call module.eval() or use dropout=0")


def cells(module: nn.Module) -> list:
    """One cell per layer, holding the module's (detached) weights."""
    check_module(module)
    return [layer_cell(module, f"l{l}") for l in range(module.num_layers)]


def layer_cell(module: nn.Module, suffix: str):
    """The cell of one layer and direction, e.g. ``suffix="l0"`` or ``"l0_reverse"`` (the
    module's parameter names), holding its detached weights."""
    w = [getattr(module, f"{p}_{suffix}", None) for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    w = [None if t is None else t.detach() for t in w]
    if isinstance(module, nn.GRU):
        return GRUCell(*w)
    if isinstance(module, nn.LSTM):
        return LSTMCell(*w)
    return RNNCell(*w, nonlinearity=module.nonlinearity)


def _check_state(name: str, h: object, expected: tuple, ref: torch.Tensor) -> torch.Tensor:
    check_matches(name, h, ref.dtype, ref.device)
    if tuple(h.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(h.shape)}, expected {expected} "
                         "(num_layers · directions, batch, hidden_size)")
    check_finite(name, h)
    return h.detach()


def split_input(module: nn.Module, inputs) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``x``, ``(x, h0)`` or, for an LSTM, ``(x, (h0, c0))`` -> time-major batched ``x``, the
    initial states ``s0`` as ``(k, batch, m)`` and whether ``x`` was unbatched."""
    x, h0, unbatched = recurrent_input(module, inputs)
    ref, batch = module.weight_ih_l0, x.shape[1]
    for pname, p in module.named_parameters():
        check_matches(pname, p, ref.dtype, ref.device, owner="weight_ih_l0")
        check_finite(f"parameter {pname}", p)
    k, n = module.num_layers * (2 if module.bidirectional else 1), module.hidden_size
    expected = (k, n) if unbatched else (k, batch, n)
    lstm = isinstance(module, nn.LSTM)
    if h0 is None:
        states = [x.new_zeros(expected)] * (2 if lstm else 1)
    elif lstm:
        if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
            raise TypeError(f"an LSTM's initial state must be a pair (h0, c0), got {type(h0).__name__}")
        states = [_check_state(s, h, expected, ref) for s, h in zip(("h0", "c0"), h0)]
    else:
        states = [_check_state("h0", h0, expected, ref)]
    s0 = torch.cat(states, -1)
    return x, (s0.unsqueeze(1) if unbatched else s0), unbatched


def _packer(module: nn.Module, unbatched: bool) -> Callable[[torch.Tensor], tuple]:
    """``grid -> (output, h_n)`` or ``(output, (h_n, c_n))`` in the module's layout."""
    n, lstm = module.hidden_size, isinstance(module, nn.LSTM)

    def pack(grid: torch.Tensor):
        last = grid[:, -1]                                     # (k, batch, m)
        out, h_n, c_n = grid[-1, ..., :n], last[..., :n], last[..., n:]
        if unbatched:
            out, h_n, c_n = out[:, 0], h_n[:, 0], c_n[:, 0]
        elif module.batch_first:
            out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if lstm else (out, h_n)

    return pack


def forward_system(module: nn.Module, inputs) -> RecurrentForwardSystem:
    """The lower system ``F(s) = 0`` of ``module(inputs)`` over time (docs/theory.md §7);
    ``system.output(solution)`` is what the module returns."""
    layer_cells = cells(module)
    x, s0, unbatched = split_input(module, inputs)
    return RecurrentForwardSystem(layer_cells, x, s0, output=_packer(module, unbatched))


@dataclass
class GatedRecord:
    """A forward pass kept for the backward system: the forward ``system`` and its solved
    ``states`` ``(k, τ, batch, m)`` (``m = n``, or ``2n`` for an LSTM's ``(h, c)``)."""

    module: nn.Module
    system: RecurrentForwardSystem
    states: torch.Tensor

    def module_output(self) -> tuple:
        """What ``module(x, ...)`` returns, detached."""
        return self.system._output(self.states)

    def outputs(self) -> list[torch.Tensor]:
        """The module's output tensors, flat: ``[output, h_n]`` (and ``c_n`` for an LSTM)."""
        out, hidden = self.module_output()
        return [out, *hidden] if isinstance(hidden, tuple) else [out, hidden]

    def to_grid(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """``g_{l,t} = dE/ds_{l,t}`` (the direct part) from the gradients of :meth:`outputs`."""
        n = self.module.hidden_size
        unbatched = self.outputs()[0].dim() == 2                 # output (τ, n): x was unbatched
        g = torch.zeros_like(self.states)
        g_out, g_hn, g_cn = (list(grads) + [None])[:3]
        if g_out is not None:
            g_out = g_out.unsqueeze(1) if unbatched else (g_out.transpose(0, 1) if self.module.batch_first
                                                          else g_out)
            g[-1, ..., :n] += g_out
        for part, grad in ((slice(None, n), g_hn), (slice(n, None), g_cn)):
            if grad is not None:
                g[:, -1, ..., part] += grad.unsqueeze(1) if unbatched else grad
        return g


def record_forward(module: nn.Module, inputs, solve_states: Callable | None = None) -> GatedRecord:
    """Check the inputs and keep every state ``s_{l,t}``: computed by the ordinary recurrence, or
    by ``solve_states(forward_system) -> (k, τ, batch, m)`` (e.g. a Newton forward pass)."""
    system = forward_system(module, inputs)
    states = system.recurrence() if solve_states is None else solve_states(system)
    if tuple(states.shape) != (*system.grid_shape, *system.s0.shape[1:]):
        raise ValueError(f"states has shape {tuple(states.shape)}, expected "
                         f"{(*system.grid_shape, *system.s0.shape[1:])}")
    return GatedRecord(module, system, states.detach())


def backward_system_from_record(rec: GatedRecord, g: torch.Tensor, order: str = "layer") -> GridSystem:
    """The :class:`GridSystem` with ``P_{l,t} = (∂s_{l,t+1}/∂s_{l,t})^T`` and
    ``E_{l,t} = (∂s_{l+1,t}/∂s_{l,t})^T`` (an LSTM's depth coupling goes through ``h`` only)."""
    system, grid = rec.system, rec.states
    (k, tau), (batch, m) = system.grid_shape, grid.shape[2:]
    time = grid.new_empty(k, tau - 1, batch, m, m)
    depth = grid.new_zeros(k - 1, tau, batch, m, m)
    with torch.no_grad():
        for l, cell in enumerate(system.cells):
            xp, prev = cell.project(system.layer_input(l, grid)), system.previous(l, grid[l])
            time[l] = cell.state_jacobian(xp[1:], prev[1:]).transpose(-1, -2)
            if l:
                jx = cell.input_jacobian(xp, prev)                    # (τ, batch, m, n)
                depth[l - 1, ..., : jx.shape[-1], :] = jx.transpose(-1, -2)
    return GridSystem(time, depth, g, order=order)


def parameter_gradients(rec: GatedRecord, v: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """``dE/dθ_l = Σ_{t,b} (∂s_{l,t}/∂θ_l)^T v_{l,t}``: one vector-Jacobian product per layer, over
    all its time steps at once (the layers are independent). ``v`` is the ``(k, τ, batch, m)`` grid."""
    system, grid, grads = rec.system, rec.states, {}
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    for l, cell in enumerate(system.cells):
        present = [nm for nm, w in zip(names, (cell.w_ih, cell.w_hh, cell.b_ih, cell.b_hh)) if w is not None]
        with torch.enable_grad():
            leaves = [w.detach().requires_grad_(True) for w in cell.weights()]
            live = copy.copy(cell)
            live.w_ih, live.w_hh, live.b_ih, live.b_hh = (leaves + [None, None])[:4]
            out = live.step(live.project(system.layer_input(l, grid)), system.previous(l, grid[l]))
            values = torch.autograd.grad(out, leaves, grad_outputs=v[l])
        grads.update({f"{prefix}{nm}_l{l}": val for nm, val in zip(present, values)})
    return grads


def backward_problem(module: nn.Module, inputs, loss_fn: Callable, solve_states: Callable | None = None
                     ) -> BackwardProblem:
    """The :class:`~trilib.systems.BackwardProblem` of an ``nn.GRU``/``nn.LSTM``: unknowns
    ``v_{l,t} = dE/ds_{l,t}``. ``inputs`` is ``x``, ``(x, h0)`` or ``(x, (h0, c0))``; ``loss_fn``
    receives what the module returns. ``solve_states`` computes the forward states (see
    :func:`record_forward`; default: the ordinary recurrence)."""
    if not isinstance(module, GATED):
        raise TypeError(f"expected a torch.nn.GRU or LSTM, got {type(module).__name__}")
    rec = record_forward(module, inputs, solve_states)
    pack = (lambda o, h, c: (o, (h, c))) if isinstance(module, nn.LSTM) else (lambda o, h: (o, h))
    loss, grads = loss_gradients(rec.outputs(), loss_fn, pack)
    system = backward_system_from_record(rec, rec.to_grid(grads))
    return BackwardProblem(system, loss, lambda v: parameter_gradients(rec, system.to_grid(v)))
