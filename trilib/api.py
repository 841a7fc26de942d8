"""The public entry points: systems from models, gradients and forward passes from solves.

This is the one place that knows every model builder: :func:`backward_problem` dispatches on
the model's type (an FNN ``nn.Sequential``, an ``nn.RNN``, an ``RNNClassifier``, else any
module that ``torch.export`` can capture), so builders and solvers never import each other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from . import fnn, gated, graph, rnn
from ._checks import UnsupportedLayerError, check_finite_named, module_tensors
from ._features import CHANGES_BACKWARD, CHANGES_FORWARD, module_features, refuse_features
from ._numerics import rel_error
from .solvers import check_method, methods, solve
from .systems import BackwardProblem, RecurrentForwardSystem, TriangularSystem

__all__ = ["backward_problem", "backward_system", "compare_to_autograd", "forward", "forward_system",
           "gradients"]


def backward_problem(model: nn.Module, x, loss_fn: Callable) -> BackwardProblem:
    """The backward system of ``model`` on ``x`` with its loss and parameter-gradient map.

    Dispatch on the model type: ``nn.RNN`` and :class:`trilib.rnn.RNNClassifier` go to the RNN
    builder; ``nn.GRU``, ``nn.LSTM`` and :class:`trilib.gated.GatedClassifier` to the gated one;
    an ``nn.Sequential`` of ``nn.Linear`` and element-wise activations to the FNN
    builder; any other module (a Sequential with other layers too, or one whose hooks, patched
    ``forward`` or subclass change what it computes) to the graph builder, which captures it with
    ``torch.export``.

    Every parameter and buffer that enters the system is checked to be finite before the
    forward pass (the error names it): by the FNN builder on its stacked weights, for any other
    model every parameter and buffer of the module. Terms of the
    loss that read parameters directly, not through the output (weight decay written inside
    ``loss_fn``), are differentiated by autograd with the output held fixed and added to the
    parameter gradients, so :func:`gradients` returns the full ``dE/dp``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output -> scalar loss), got {type(loss_fn).__name__}")
    loss_fn, direct = _with_direct_terms(model, loss_fn)
    problem = _dispatch(model, x, loss_fn)
    if not direct:
        return problem
    grads = problem.parameter_gradients

    def parameter_gradients(v):
        out = grads(v)
        for name, g in direct.items():
            out[name] = out[name] + g
        return out

    return BackwardProblem(problem.system, problem.loss, parameter_gradients, problem.named_parameters)


def _dispatch(model: nn.Module, x, loss_fn: Callable) -> BackwardProblem:
    """The builder for ``model``, after the checks that no builder computes something else than
    ``model(x)`` and autograd would (:func:`trilib._features.module_features`): the FNN parse
    refuses modules with hooks or a patched forward (they go to the graph builder, which runs
    the real module calls), the recurrent builders refuse every such feature, and a backward
    hook (which changes autograd's own gradients) is refused for every model."""
    if isinstance(model, nn.Sequential):
        try:
            layers = fnn.parse_sequential(model)
        except UnsupportedLayerError:
            layers = None      # not an FNN (e.g. LayerNorm inside, a hook): the graph path takes it
        if layers is not None:
            return fnn.backward_problem(model, layers, x, loss_fn)     # checks its own weights
    features = module_features(model)
    refuse_features(model, [f for f in features if f.feature in CHANGES_BACKWARD],
                    "it changes the gradients autograd computes (or, in training mode, the function "
                    "itself on every call), and trilib's systems differentiate the forward pass "
                    "alone. Remove it (handle.remove(), model.eval()) or compute dE/dp with "
                    "torch.autograd")
    check_finite_named(module_tensors(model))
    if isinstance(model, gated.RECURRENT):
        _refuse_recurrent(model, features)
        if model.bidirectional:
            return gated.bidirectional_problem(model, x, loss_fn)
        builder = rnn.backward_problem if isinstance(model, nn.RNN) else gated.backward_problem
        return builder(model, x, loss_fn)
    if isinstance(model, (rnn.RNNClassifier, gated.GatedClassifier)):
        _refuse_recurrent(model, features)
        try:
            if model.rnn.bidirectional:
                return gated.bidirectional_classifier_problem(model, x, loss_fn)
            if isinstance(model, rnn.RNNClassifier):
                return rnn.classifier_problem(model, x, loss_fn)
            return gated.classifier_problem(model, x, loss_fn, solve=solve)   # forward_method may solve
        except UnsupportedLayerError as e:                  # say which submodule
            raise UnsupportedLayerError(f"submodule 'rnn' ({type(model.rnn).__name__}) of the "
                                        f"{type(model).__name__}: {e}") from e
    return _graph_problem(model, x, loss_fn, features)


def _refuse_recurrent(model: nn.Module, features) -> None:
    """The recurrent builders read weights by name and run no module call: every feature that
    changes a module's computation (in-place activations aside) is refused."""
    refuse_features(model, [f for f in features if f.feature != "inplace=True"],
                    f"the recurrent builder reads the {type(model).__name__}'s weights by name and "
                    "runs no module call, so it would compute the plain module. Remove it "
                    "(handle.remove(), del module.forward, "
                    "torch.nn.utils.parametrize.remove_parametrizations, prune.remove), or "
                    "compute dE/dp with torch.autograd")


def _graph_problem(model: nn.Module, x, loss_fn: Callable, features) -> BackwardProblem:
    """The graph builder's problem. A refusal says why in the user's terms: integer ids fed to
    an embedding are data (never "convert to float"), and ``inplace=False`` computes the same
    function when the model has in-place modules."""
    changed = [f for f in features if f.feature in CHANGES_FORWARD]
    if changed:
        loss_fn, seen = _spy(loss_fn)
    try:
        problem = graph.backward_problem(model, x, loss_fn)
        if changed:
            _check_captured(model, x, seen, changed)
        return problem
    except UnsupportedLayerError as e:
        inplace = [f.module for f in features if f.feature == "inplace=True"]
        if not inplace:
            raise
        names = ", ".join(repr(n) for n in inplace[:3]) + (" ..." if len(inplace) > 3 else "")
        raise UnsupportedLayerError(
            f"{e}. Note: module(s) {names} compute in place (inplace=True); the same modules with "
            "inplace=False compute the same function and the graph builder may accept them "
            "(set m.inplace = False on every module m of model.modules() that has it)") from e
    except TypeError as e:
        ids = [n for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        if not ids or not isinstance(x, torch.Tensor) or x.is_floating_point():
            raise
        kind = type(model.get_submodule(ids[0])).__name__
        raise UnsupportedLayerError(
            f"x holds {x.dtype} ids for the embedding {ids[0]!r} ({kind}): "
            "they are data, not unknowns, and converting them to floats would break the embedding. "
            f"The graph builder refused them: {e}. Feed the embedded vectors instead (the "
            "embedding's output as x of the rest of the model) or compute dE/dp with "
            "torch.autograd") from e


def _spy(loss_fn: Callable) -> tuple[Callable, list]:
    """``loss_fn`` that also keeps (detached) what it was called with."""
    seen: list = []

    def spy(out, *args, **kwargs):
        seen.append(tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, out))
        return loss_fn(out, *args, **kwargs)

    return spy, seen


def _check_captured(model: nn.Module, x, seen: list, changed) -> None:
    """The output the graph builder computed must be what ``model(x)`` returns: a hook or patch
    that its capture did not run (one on the model itself, on a container it traced through)
    would otherwise give wrong gradients with every method. One forward pass, only for models
    with such features."""
    args = x if isinstance(x, (tuple, list)) else (x,)
    with torch.no_grad():
        real = [t for t in tree_leaves(model(*args)) if isinstance(t, torch.Tensor)]
    got = [t for t in tree_leaves(seen[:1]) if isinstance(t, torch.Tensor)]
    same = len(got) == len(real) and all(_close(a, b) for a, b in zip(got, real))
    if not same:
        refuse_features(model, changed, "the graph builder's capture computes an output that differs "
                        "from model(x), so it does not run this (a hook or patch on the model itself "
                        "or on a container it traces through), and its gradients would be wrong. "
                        "Move the computation into a module's forward, or compute dE/dp with "
                        "torch.autograd")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding (relative to ``b``'s largest entry), or exactly for integers."""
    if a.shape != b.shape or a.dtype != b.dtype or not b.is_floating_point() or not b.numel():
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return torch.allclose(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def _with_direct_terms(model: nn.Module, loss_fn: Callable) -> tuple[Callable, dict[str, torch.Tensor]]:
    """``loss_fn`` wrapped so that, when a builder evaluates it on the (detached) output, the
    gradient of the loss w.r.t. the parameters it reads directly is recorded in ``direct``
    (``{name: dE/dp}``, only the non-zero ones): the output is a leaf there, so these are exactly
    the terms that do not pass through the model. When the loss's graph reaches no leaf but the
    output (the usual case, found by a walk over its few nodes) nothing else is done; otherwise
    one extra backward pass through the loss alone."""
    direct: dict[str, torch.Tensor] = {}

    def wrapped(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad
                and torch.is_grad_enabled()):
            return loss
        outputs = {id(t) for t in _tensors(args)}
        if not _leaves(loss) - outputs:
            return loss
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if named:
            grads = torch.autograd.grad(loss.reshape(()), [p for _, p in named], retain_graph=True,
                                        allow_unused=True)
            direct.clear()
            direct.update({n: g.detach() for (n, _), g in zip(named, grads) if g is not None})
        return loss

    return wrapped, direct


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple or list, e.g. the RNN's ``(output, h_n)``."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _leaves(loss: torch.Tensor) -> set[int]:
    """``id`` s of the leaf tensors the autograd graph of ``loss`` reaches."""
    stack, seen, found = [loss.grad_fn], set(), set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):                       # AccumulateGrad of a leaf
            found.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    return found


def backward_system(model: nn.Module, x: torch.Tensor, loss_fn: Callable) -> TriangularSystem:
    """The upper triangular system ``U v = r`` of backward propagation (docs/theory.md §1-4).

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` layers, each followed by zero or more
            element-wise activations (``trilib.fnn.ELEMENTWISE``): the FNN of docs/theory.md §1;
            an ``nn.RNN`` (docs/theory.md §2, see :mod:`trilib.rnn`); or any other module that
            ``torch.export`` can capture (docs/theory.md §3-4, see :mod:`trilib.graph`).
        x: the input batch, ``(batch, n_0)`` for an FNN, same dtype and device as the model.
        loss_fn: ``loss_fn(model(x))`` returns the scalar loss E; ``g = dE/dz_k`` comes from
            autograd on the loss alone.

    Returns:
        For an FNN a :class:`~trilib.systems.BlockBidiagonalSystem` with ``upper=True``, whose
        solution is ``v_l = dE/dy_l`` for l = 1..k; for an RNN or a graph the system of that
        pattern.

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 8, 3], activation="tanh", seed=0)
        >>> trilib.backward_system(net, torch.randn(2, 4), lambda out: out.square().sum())
        BlockBidiagonalSystem(upper, k=3, block_sizes=(8, 8, 3), batch=2, dtype=torch.float32, device=cpu)
    """
    return backward_problem(model, x, loss_fn).system


def forward_system(model: nn.Module, x: torch.Tensor) -> TriangularSystem:
    """The lower triangular system of forward propagation (docs/theory.md §1).

    With identity activations (a stack of ``nn.Linear``) it is linear and explicit: a
    :class:`~trilib.systems.BlockBidiagonalSystem` with ``upper=False``, sub-diagonal blocks
    ``W_l`` and right-hand side ``(W_1 x + b_1, b_2, ..., b_k)``. Otherwise it is the nonlinear
    :class:`~trilib.systems.NonlinearForwardSystem` ``F(z) = 0``. Either way
    ``trilib.solve(system)[-1]`` equals ``model(x)``. For an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM``
    (``x`` as the module takes it) it is the :class:`~trilib.systems.RecurrentForwardSystem` over
    time (docs/theory.md §7); ``system.output(trilib.solve(system))`` equals ``model(x)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_finite_named(module_tensors(model))
    if isinstance(model, gated.RECURRENT):
        _refuse_recurrent(model, module_features(model))
        return gated.forward_system(model, x)
    return fnn.forward_system(model, x)


def forward(model: nn.Module, x: torch.Tensor, method: str = "sequential", return_trace: bool = False,
            **options):
    """``model(x)`` computed by solving the forward system with ``method``.

    Args:
        model: an ``nn.Sequential`` of ``nn.Linear`` and element-wise activations, or an
            ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (then ``"newton"`` is Newton in time,
            :func:`trilib.solvers.newton_in_time.newton_in_time`).
        x: the input batch ``(batch, n_0)``, same dtype and device as the model (for a recurrent
            module ``x``, ``(x, h0)`` or ``(x, (h0, c0))``).
        method: ``"sequential"`` (forward substitution = ordinary forward propagation),
            ``"jacobi"`` (nonlinear Jacobi, options ``tol``, ``max_sweeps``, ``reference``,
            ``on_failure``) or ``"newton"`` (options ``linear_method``, default
            ``"recursive_doubling"``, ``linear_options``, ``tol``, ``max_iterations``, ...); any
            other method that applies to the forward system also works.
        return_trace: also return the :class:`~trilib.trace.Trace` (iterations, residuals).
        **options: passed to the method.

    Returns:
        The output ``z_k``, shaped like ``model(x)`` (for a recurrent module what it returns,
        ``(output, h_n)`` or ``(output, (h_n, c_n))``; no autograd graph); with
        ``return_trace=True`` the pair ``(output, trace)``. Iterative methods run to the exact
        answer by default (``tol=None``, see :mod:`trilib.solvers._sweeps`); only a
        ``max_sweeps``/``max_iterations`` below their exact count can stop them short, which
        warns with :class:`ConvergenceWarning` (or raises :class:`ConvergenceError` with
        ``on_failure="raise"``).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([3, 8, 8, 2], seed=0, dtype=torch.float64)
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> out, trace = trilib.forward(net, x, "jacobi", return_trace=True)
        >>> torch.allclose(out, net(x)), trace.steps <= 3
        (True, True)
    """
    check_method(method)
    system = forward_system(model, x)
    if method not in methods(system):
        raise ValueError(f"method {method!r} does not apply to the forward system "
                         f"({type(system).__name__}); methods for it: {', '.join(methods(system))}")
    result = solve(system, method=method, return_trace=return_trace, **options)
    z, trace = result if return_trace else (result, None)
    out = system.output(z) if isinstance(system, RecurrentForwardSystem) else z[-1]
    return (out, trace) if return_trace else out


def gradients(model: nn.Module, x: torch.Tensor, loss_fn: Callable, method: str = "sequential",
              **options) -> dict[str, torch.Tensor]:
    """``dE/dp`` for every parameter, by solving the backward system with ``method``.

    Args:
        model, x, loss_fn: as for :func:`backward_system`.
        method: a name from :func:`trilib.methods`.
        **options: passed to the solver.

    Returns:
        A dict keyed like ``model.named_parameters()``, each value shaped like its parameter:
        the full ``dE/dp``, including loss terms that read parameters directly (weight decay
        written inside ``loss_fn``).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 3], activation="relu", seed=0)
        >>> grads = trilib.gradients(net, torch.randn(2, 4), lambda out: out.sum())
        >>> list(grads)
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    check_method(method)
    problem = backward_problem(model, x, loss_fn)
    v = solve(problem.system, method=method, **options)
    return problem.parameter_gradients(v)


def compare_to_autograd(model: nn.Module, x, loss_fn: Callable, method: str = "sequential",
                        **options) -> float:
    """Relative error of :func:`gradients` against ``torch.autograd``, norm-wise over all parameters.

    ``||g_trilib - g_autograd|| / ||g_autograd||`` with every parameter gradient flattened into one
    vector and the norms taken in float64 (per-parameter ratios would magnify gradients that have
    vanished to rounding level). ``model`` and ``x`` are not modified (``p.grad`` is untouched).

    Example:
        >>> import torch, trilib
        >>> net = trilib.nets.mlp([4, 8, 8, 3], seed=0, dtype=torch.float64)
        >>> err = trilib.compare_to_autograd(net, torch.randn(5, 4, dtype=torch.float64),
        ...                                  lambda out: out.square().sum(), method="blelloch")
        >>> err < 1e-12
        True
    """
    ours = gradients(model, x, loss_fn, method=method, **options)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    args = x if isinstance(x, (tuple, list)) else (x,)
    with torch.enable_grad():
        ref = torch.autograd.grad(loss_fn(model(*args)), [p for _, p in named], allow_unused=True)
    ref = [torch.zeros_like(p) if r is None else r for (_, p), r in zip(named, ref)]
    return rel_error([ours[n] for n, _ in named], ref)
