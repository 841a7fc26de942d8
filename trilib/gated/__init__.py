"""The gated builder: ``nn.GRU`` and ``nn.LSTM`` as triangular systems, and the forward pass of
``nn.RNN``/``nn.GRU``/``nn.LSTM`` as a lower system over time (docs/theory.md §7).

**Backward.** With the state ``s_{l,t}`` of layer ``l`` at time ``t`` (``h`` for a GRU, ``(h, c)``
for an LSTM) and the unknowns ``v_{l,t} = dE/ds_{l,t}``::

    v_{l,t} = (∂s_{l,t+1}/∂s_{l,t})^T v_{l,t+1} + (∂s_{l+1,t}/∂s_{l,t})^T v_{l+1,t} + g_{l,t}

where ``g_{l,t}`` is the loss gradient reaching ``s_{l,t}`` directly (from ``output`` for the top
layer, from ``h_n``/``c_n`` at ``t = τ``). This is the same k x τ grid as ``nn.RNN``'s
(:class:`~trilib.systems.GridSystem`), with the transposed state Jacobians as its blocks; an
LSTM's depth coupling goes through ``h`` only. Parameter gradients are one vector-Jacobian product
per layer, over all its time steps at once.

**Forward.** ``s_{l,t} - cell_l(x_{l,t}, s_{l,t-1}) = 0`` is a lower triangular system
(:class:`~trilib.systems.RecurrentForwardSystem`); Newton's method solves each layer's chain over
time with one parallel scan per iteration.

Input convention (mirrors the modules): ``x``, ``(x, h0)``, or for an LSTM ``(x, (h0, c0))``;
``loss_fn`` receives what the module returns, ``(output, h_n)`` or ``(output, (h_n, c_n))``.
A one-layer ``bidirectional=True`` module is two grids, forward in time and reversed, stacked
along the batch into one system (:mod:`trilib.gated.bidirectional`); several bidirectional
layers and an LSTM's ``proj_size > 0`` are rejected with :class:`~trilib.UnsupportedLayerError`.

Example:
    >>> import torch, trilib
    >>> lstm = torch.nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    >>> x = torch.randn(6, 2, 3, dtype=torch.float64)                 # (τ, batch, features)
    >>> loss_fn = lambda out: out[0].square().sum() + out[1][1].sum()  # output and c_n
    >>> U = trilib.backward_system(lstm, x, loss_fn)
    >>> U.grid_shape, U.state_size                                   # m = 2n for (h, c)
    ((2, 6), 8)
    >>> trilib.compare_to_autograd(lstm, x, loss_fn, method="nested") < 1e-12
    True
"""

from .bidirectional import backward_problem as bidirectional_problem
from .bidirectional import check_bidirectional
from .bidirectional import classifier_problem as bidirectional_classifier_problem
from .build import (
    GATED,
    RECURRENT,
    GatedRecord,
    backward_problem,
    backward_system_from_record,
    cells,
    check_module,
    forward_system,
    parameter_gradients,
    record_forward,
    split_input,
)
from .cells import GRUCell, LSTMCell, RNNCell
from .classifier import GatedClassifier, classifier_problem

__all__ = ["GATED", "RECURRENT", "GRUCell", "GatedClassifier", "GatedRecord", "LSTMCell", "RNNCell",
           "backward_problem", "backward_system_from_record", "bidirectional_classifier_problem",
           "bidirectional_problem", "cells",
           "check_bidirectional", "check_module", "classifier_problem",
           "forward_system", "parameter_gradients", "record_forward", "split_input"]
