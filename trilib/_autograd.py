"""What the model builders take from autograd: the loss gradient at the model output, and the
element-wise activations whose derivative autograd gives as one vector-Jacobian product."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._checks import check_scalar_loss

__all__ = ["ELEMENTWISE", "loss_gradients"]

#: Activations trilib treats as element-wise ``z = f(y)`` (exact types; subclasses may not be).
#: Each has a dedicated autograd kernel for f'. Composite ones such as Tanhshrink (y - tanh y)
#: and Softsign are left out: autograd differentiates them through their parts, with
#: cancellation, so no separately computed f' can match it to 1e-12.
ELEMENTWISE: tuple[type, ...] = (
    nn.Identity, nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.Softplus, nn.ELU,
    nn.SiLU, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.CELU, nn.SELU, nn.LogSigmoid, nn.Hardsigmoid,
    nn.Hardswish,
)


def loss_gradients(outputs: Sequence[torch.Tensor], loss_fn: Callable,
                   pack: Callable | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``(E, [dE/d o for o in outputs])`` by autograd on the loss alone.

    Args:
        outputs: the model's output tensors (detached copies are differentiated).
        loss_fn: called as ``loss_fn(pack(*outputs))``; must return a finite scalar tensor.
        pack: rebuilds what the model returns from the outputs (default: the single output).

    Returns:
        The detached loss and one gradient per output (``None`` for an output the loss ignores).

    Raises:
        ValueError: the loss is not a finite scalar, or depends on none of the outputs.
    """
    leaves = [o.detach().requires_grad_(True) for o in outputs]
    pack = pack or (lambda out: out)
    with torch.enable_grad():
        loss = check_scalar_loss(loss_fn(pack(*leaves)))
        if not loss.requires_grad:
            raise ValueError("loss_fn's result does not depend on the model output, so there is "
                             "nothing to propagate backward")
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    if all(g is None for g in grads):
        raise ValueError("loss_fn's result does not depend on the model output")
    return loss.detach(), list(grads)
