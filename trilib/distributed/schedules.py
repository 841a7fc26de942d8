"""The three schedules, as each rank runs them (docs/theory.md §6 and §8).

Rank ``d`` of P owns the slab of layers ``lo_d + 1 .. hi_d``. Forward, it receives
``z_{lo_d}`` from rank d - 1 and sends ``z_{hi_d}`` to rank d + 1. Backward, what crosses the
boundary between ranks d and d + 1 is ``u_d = dE/dz_{hi_d} = W_{lo_{d+1}+1}^T v_{lo_{d+1}+1}``
(computed by rank d + 1, which owns that W); the last rank starts from ``u_{P-1} = g = dE/dz_k``.
Inside the slab, ``v_{hi} = D_{hi} u_d`` and ``v_l = B_l v_{l+1}`` with ``B_l = D_l W_{l+1}^T``.

* ``"sequential"``: the error travels down the ranks, one blocking message per boundary: rank d
  waits for ``u_d``, back-substitutes, sends ``u_{d-1}``; P - 1 messages, no overlap.
* ``"pipeline"``: the batch is cut into m micro-batches (GPipe, i.e. pipelined block Jacobi):
  non-blocking sends and pre-posted receives let rank d work on micro-batch j while its
  neighbour works on another; backward runs the micro-batches last-in first-out.
* ``"tree"``: the slab as one linear map ``u_{d-1} = A_d u_d`` with
  ``A_d = W_{lo+1}^T D_{lo+1} W_{lo+2}^T ... W_{hi}^T D_{hi}`` (per sample); the last rank's map is
  the constant ``u_{P-2}``. An exclusive suffix scan by recursive doubling over the ranks, with
  trilib's one affine combine and schedule (:mod:`trilib.solvers._affine`),
  ``(B, r) ∘ (B', r') = (B B', r + B r')``: in round r = 0 .. ⌈log2 P⌉ - 1 rank d sends its
  running composition to rank d - 2^r and composes what rank d + 2^r sends; afterwards every rank
  holds the constant ``u_d`` and back-substitutes its slab.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..solvers._affine import combine, doubling
from .model import Layer, Slab, slab_bounds

__all__ = ["SCHEDULES", "SIMULATED", "Context", "sequential", "pipeline", "tree"]

#: The schedule of :func:`trilib.schedule.simulate` that each one realises.
SIMULATED = {"sequential": "sequential", "pipeline": "block_jacobi", "tree": "tree"}

_TAG_FORWARD, _TAG_BACKWARD, _TAG_ROUND = 0, 1 << 16, 2 << 16


class Context:
    """What a rank knows: its slab, the boundary widths, the loss (last rank), its recorder."""

    def __init__(self, rank: int, world: int, layers: list[Layer], recorder, device, loss=None,
                 sizes: list[int] | None = None):
        self.rank, self.world, self.rec, self.device, self.loss = rank, world, recorder, device, loss
        bounds = slab_bounds(len(layers), world)
        self.slab = Slab([layer.to(device) for layer in layers], *bounds[rank])
        self.width = [layers[hi - 1].n_out for _, hi in bounds]     # width of z_{hi_d} and u_d
        self.dtype = layers[0].weight.dtype
        self.sizes = sizes or []

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1

    def _buf(self, shape):
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def compute(self, phase: str, microbatch=None):
        return self.rec.span("compute", phase, self.slab.numbers, microbatch)

    def send(self, tensor, dst, phase, tag, microbatch=None) -> None:
        with self.rec.span("send", phase, (), microbatch, dst):
            dist.send(tensor.contiguous(), dst, tag=tag)

    def recv(self, shape, src, phase, tag, microbatch=None) -> torch.Tensor:
        buf = self._buf(shape)
        with self.rec.span("recv", phase, (), microbatch, src):
            dist.recv(buf, src, tag=tag)
        return buf

    def isend(self, tensor, dst, phase, tag, microbatch=None):
        tensor = tensor.contiguous()
        with self.rec.span("send", phase, (), microbatch, dst):
            req = dist.isend(tensor, dst, tag=tag)
        return req, tensor, dst, phase, microbatch

    def irecv(self, shape, src, phase, tag, microbatch=None):
        buf = self._buf(shape)
        with self.rec.span("recv", phase, (), microbatch, src):
            req = dist.irecv(buf, src, tag=tag)
        return req, buf, src, phase, microbatch

    def wait(self, pending) -> torch.Tensor:
        """Complete an :meth:`isend` or :meth:`irecv`; returns its tensor."""
        req, tensor, peer, phase, microbatch = pending
        with self.rec.span("wait", phase, (), microbatch, peer):
            req.wait()
        return tensor

    def loss_and_g(self, out: torch.Tensor) -> tuple[float, torch.Tensor]:
        """E and ``g = dE/dz_k`` by autograd on the loss alone (last rank)."""
        with self.rec.span("compute", "loss", (self.slab.hi,)):
            with torch.enable_grad():
                leaf = out.detach().requires_grad_(True)
                value = self.loss(leaf)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise ValueError(f"loss_fn must return a scalar tensor, got {value!r:.80}")
                (g,) = torch.autograd.grad(value.reshape(()), leaf)
        return float(value.detach()), g


def _forward_blocking(ctx: Context, x: torch.Tensor):
    """Forward substitution down the ranks with blocking messages (sequential and tree)."""
    d = ctx.rank
    z = x if d == 0 else ctx.recv((x.shape[0], ctx.width[d - 1]), d - 1, "forward", _TAG_FORWARD)
    with ctx.compute("forward"):
        out, cache = ctx.slab.forward(z)
    if not ctx.last:
        ctx.send(out, d + 1, "forward", _TAG_FORWARD)
    return out, cache


def sequential(ctx: Context, x: torch.Tensor):
    """Backprop across ranks: returns ``(gradients of the slab, loss or None)``."""
    d = ctx.rank
    out, cache = _forward_blocking(ctx, x)
    loss = None
    if ctx.last:
        loss, u = ctx.loss_and_g(out)
    else:
        u = ctx.recv((x.shape[0], ctx.width[d]), d + 1, "backward", _TAG_BACKWARD)
    with ctx.compute("backward"):
        v, u_out = ctx.slab.back_substitute(u, cache, outgoing=d > 0)
    if d > 0:
        ctx.send(u_out, d - 1, "backward", _TAG_BACKWARD)
    with ctx.compute("gradients"):
        grads = ctx.slab.gradients(v, cache)
    return grads, loss


def pipeline(ctx: Context, x: torch.Tensor):
    """GPipe: m micro-batches forward, then backward last-in first-out, non-blocking messages."""
    d, sizes = ctx.rank, ctx.sizes or [x.shape[0]]
    m = len(sizes)
    incoming = [ctx.irecv((sizes[j], ctx.width[d - 1]), d - 1, "forward", _TAG_FORWARD + j, j)
                for j in range(m)] if d > 0 else []
    inputs = x.split(sizes) if d == 0 else None
    outs, caches, sends = [], [], []
    for j in range(m):
        z = inputs[j] if d == 0 else ctx.wait(incoming[j])
        with ctx.compute("forward", j):
            out, cache = ctx.slab.forward(z)
        outs.append(out)
        caches.append(cache)
        if not ctx.last:
            sends.append(ctx.isend(out, d + 1, "forward", _TAG_FORWARD + j, j))
    loss = None
    if ctx.last:
        loss, g = ctx.loss_and_g(torch.cat(outs))
        errors = list(g.split(sizes))
    else:
        errors = [ctx.irecv((sizes[j], ctx.width[d]), d + 1, "backward", _TAG_BACKWARD + j, j)
                  for j in reversed(range(m))][::-1]
    grads = None
    for j in reversed(range(m)):
        u = errors[j] if ctx.last else ctx.wait(errors[j])
        with ctx.compute("backward", j):
            v, u_out = ctx.slab.back_substitute(u, caches[j], outgoing=d > 0)
        if d > 0:
            sends.append(ctx.isend(u_out, d - 1, "backward", _TAG_BACKWARD + j, j))
        with ctx.compute("gradients", j):
            part = ctx.slab.gradients(v, caches[j])
            grads = part if grads is None else {name: grads[name] + part[name] for name in grads}
    for pending in sends:
        ctx.wait(pending)
    return grads, loss


def _compose(f, g):
    """``f ∘ g`` for the maps ``(B, r)`` of the scan over ranks: a slab's linear map ``(A_d, None)``
    or the last rank's constant ``(None, u)`` (``u`` a column): trilib's one affine combine."""
    return combine(*f, *g)


def _payload(f) -> torch.Tensor:
    """The tensor a map travels as: its matrix, or the constant of a constant map."""
    return f[1] if f[0] is None else f[0]


def tree(ctx: Context, x: torch.Tensor):
    """A direct solver across ranks: slab maps, ⌈log2 P⌉ rounds of recursive doubling, apply."""
    d, P, batch = ctx.rank, ctx.world, x.shape[0]
    out, cache = _forward_blocking(ctx, x)
    loss, own = None, None
    if ctx.last:
        loss, g = ctx.loss_and_g(out)
        with ctx.compute("backward"):
            v, u_out = ctx.slab.back_substitute(g, cache, outgoing=P > 1)
        own = None if P == 1 else (None, u_out.unsqueeze(-1))   # u_{P-2}: a constant map
    elif d > 0:                                           # rank 0's map is never needed
        with ctx.compute("scan"):
            own = (ctx.slab.slab_map(cache), None)
    running, incoming = own, None                         # X_d and E_d of the scan
    for r, level in enumerate(doubling(P)):               # the rounds of recursive doubling
        step = level.dist
        pending = ctx.isend(_payload(running), d - step, "combine", _TAG_ROUND + r) if d >= step else None
        src = d + step
        if src < P:
            constant = src + step - 1 >= P - 1            # the sender's composition reaches rank P-1
            shape = (batch, ctx.width[src - 1], 1 if constant else ctx.width[src + step - 1])
            got = ctx.recv(shape, src, "combine", _TAG_ROUND + r)
            got = (None, got) if constant else (got, None)
            with ctx.compute("combine"):
                incoming = got if incoming is None else _compose(incoming, got)
                if d >= 2 * step:                         # running is sent again next round
                    running = _compose(running, got)
        if pending is not None:
            ctx.wait(pending)
    if not ctx.last:
        with ctx.compute("apply"):
            v, _ = ctx.slab.back_substitute(incoming[1].squeeze(-1), cache, outgoing=False)
    with ctx.compute("gradients"):
        grads = ctx.slab.gradients(v, cache)
    return grads, loss


#: The schedules by name.
SCHEDULES = {"sequential": sequential, "pipeline": pipeline, "tree": tree}
