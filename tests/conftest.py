"""Shared oracles and builders for the test suite.

Every test compares trilib with an independent oracle: ``torch.autograd`` for gradients,
``torch.linalg.solve_triangular`` on the dense matrix for solutions, both in float64. Test
modules import these helpers with ``from conftest import ...`` (this folder is put on
``sys.path`` below), so each is written once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import trilib

sys.path.insert(0, str(Path(__file__).parent))

F64 = torch.float64

#: The accuracy every method promises against torch.autograd, norm-wise relative over all
#: parameter gradients (README "Guarantees"): the one place the test suite states it.
TOL = {torch.float64: 1e-12, torch.float32: 1e-4}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error ``||a - b|| / ||b||`` in float64 (``||a - b||`` when b = 0)."""
    diff, scale = float((a - b).double().norm()), float(b.double().norm())
    return diff / scale if scale > 0 else diff


def autograd_grads(model: torch.nn.Module, inputs, loss_fn) -> dict[str, torch.Tensor]:
    """``dE/dp`` for every parameter by ``torch.autograd.grad`` (``p.grad`` is not touched);
    ``inputs`` is one tensor or a tuple of the model's arguments."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss_fn(model(*args)), [p for _, p in named], allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)}


def grad_error(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Norm-wise relative error of a gradient dict against a reference dict, all parameters
    flattened into one vector (per-parameter ratios would magnify vanished gradients)."""
    assert set(ours) == set(ref), (sorted(ours), sorted(ref))
    names = sorted(ref)
    flat = lambda grads: torch.cat([grads[n].reshape(-1) for n in names])  # noqa: E731
    return rel(flat(ours), flat(ref))


def deep_tanh_float32():
    """``(net, x, loss_fn)`` of issue 12: a float32 tanh MLP of depth 20 (weight scale 0.6, no
    bias) whose backward system is so ill-conditioned that an iterative method stopped at a
    relative residual of 2.6e-6 still has a gradient error of 0.1."""
    net = trilib.nets.mlp([8] * 21, activation="tanh", seed=4, weight_scale=0.6, bias=False)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    return net, x, (lambda o: o[:, 0].square().sum())


def linear_stack(act: type | None, widths, seed: int = 0, dtype=F64, last: bool = False
                 ) -> torch.nn.Sequential:
    """``nn.Linear`` layers of ``widths``, each followed by ``act()`` (none after the last unless
    ``last``; ``act=None``: a linear stack), seeded."""
    torch.manual_seed(seed)
    mods = []
    for l, (a, b) in enumerate(zip(widths, widths[1:])):
        mods.append(torch.nn.Linear(a, b, dtype=dtype))
        if act is not None and (l < len(widths) - 2 or last):
            mods.append(act())
    return torch.nn.Sequential(*mods)


def random_system(sizes, upper: bool, batch: int = 3, dtype=F64, device="cpu", shared: bool = True,
                  scaled: bool = True, seed: int = 0) -> trilib.BlockBidiagonalSystem:
    """A random block bi-diagonal system with widths ``sizes`` (blocks scaled to stay O(1)):
    matrices shared by the batch (``shared``) or per sample, row scalings in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    mats, scales = [], []
    for l in range(len(sizes) - 1):
        rows, cols = (sizes[l], sizes[l + 1]) if upper else (sizes[l + 1], sizes[l])
        shape = (rows, cols) if shared else (batch, rows, cols)
        mats.append((torch.randn(shape, generator=gen, dtype=F64) / cols**0.5).to(device, dtype))
        scales.append((torch.rand(batch, rows, generator=gen, dtype=F64) + 0.5).to(device, dtype)
                      if scaled else None)
    rhs = [torch.randn(batch, n, generator=gen, dtype=F64).to(device, dtype) for n in sizes]
    return trilib.BlockBidiagonalSystem(mats, scales, rhs, upper=upper)


def dense_solution(system: trilib.TriangularSystem, sample: int | None = None) -> torch.Tensor:
    """The solution by ``torch.linalg.solve_triangular`` on the dense matrix: of one sample
    ``(N,)``, or of every sample stacked ``(batch, N)`` when ``sample`` is None."""
    if sample is None:
        return torch.stack([dense_solution(system, s) for s in range(system.batch_size)])
    a, r = system.to_dense(sample), system.rhs_dense(sample).unsqueeze(-1)
    return torch.linalg.solve_triangular(a, r, upper=system.upper, unitriangular=True).squeeze(-1)


def cat_blocks(u) -> torch.Tensor:
    """A solution's blocks ``(batch, n_l)`` side by side: ``(batch, N)``."""
    return torch.cat(list(u), dim=1)


def make_recurrent(kind: str = "RNN", k=2, tau=5, n_in=3, n=4, batch=2, batch_first=False, bias=True,
                   with_h0=False, seed=0, scale=1.0, nonlinearity="tanh", dtype=F64):
    """A seeded ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (weights times ``scale``) and its input:
    ``x`` (time-major unless ``batch_first``), or ``(x, h0)`` (``(x, (h0, c0))`` for an LSTM)."""
    torch.manual_seed(seed)
    extra = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
    module = getattr(torch.nn, kind)(n_in, n, num_layers=k, bias=bias, batch_first=batch_first,
                                     dtype=dtype, **extra)
    if scale != 1.0:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)
    x = torch.randn(*((batch, tau) if batch_first else (tau, batch)), n_in, dtype=dtype)
    if not with_h0:
        return module, x
    h0 = torch.randn(k, batch, n, dtype=dtype)
    return module, (x, (h0, torch.randn_like(h0)) if kind == "LSTM" else h0)


def recurrent_loss(out):
    """A loss on everything a recurrent module returns, ``(output, h_n)`` or
    ``(output, (h_n, c_n))``, reaching every state."""
    output, hidden = out
    if isinstance(hidden, tuple):                       # LSTM: (h_n, c_n)
        return output.sin().sum() + 0.5 * hidden[0].square().sum() + hidden[1].cos().sum()
    return output.sin().sum() + 0.5 * hidden.square().sum()


def module_outputs(out) -> list[torch.Tensor]:
    """A recurrent module's outputs as a flat list ``[output, h_n (, c_n)]``."""
    output, hidden = out
    return [output, *hidden] if isinstance(hidden, tuple) else [output, hidden]
