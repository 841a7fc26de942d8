"""``torch.export`` as trilib's capture: the model's real ``__call__`` (hooks, pre-hooks, patched
forwards, parametrizations, pruning masks inlined), functionalised ATen operations (in-place
ops become out-of-place), parameters as graph inputs (a shared weight is one input, used twice).

Errors name the operation and the user's source line (from the node's or the exception's stack
trace) and say what to do.
"""

from __future__ import annotations

import os
import traceback
import warnings

import torch
from torch import nn

from .._checks import UnsupportedLayerError
from .layout import op_kind

__all__ = ["export_program", "op_name", "source_line"]

_TRAIN_ONLY = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
_TORCH_DIR = os.path.dirname(torch.__file__)


def _user_frame(frames) -> str | None:
    """``file:line (code)`` of the innermost frame outside torch and trilib."""
    here = os.path.dirname(os.path.dirname(__file__))
    for f in reversed(frames):
        if not f.filename.startswith((_TORCH_DIR, here)) and "<" not in f.filename:
            return f"{f.filename}:{f.lineno} ({(f.line or '').strip()})"
    return None


def source_line(node) -> str:
    """The user's source line that created a graph node (from its recorded stack trace)."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File ") and _TORCH_DIR not in lines[i]:
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            where = lines[i][5:].replace('"', "").replace(", line ", ":").split(", in ")[0]
            return f"{where} ({code})" if code else where
    return "unknown source line"


def op_name(node) -> str:
    """A readable name of a node's operation: the ATen name and the module it ran in."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f"{op_kind(node)} in {path}" if path else op_kind(node)


def _failing(module: nn.Module, e: Exception) -> str:
    """``in module NAME (Type)``: the innermost submodule whose forward raised ``e``."""
    names = {id(m): n for n, m in module.named_modules()}
    where = f"in {type(module).__name__}"
    for frame, _ in traceback.walk_tb(e.__traceback__):
        sub = frame.f_locals.get("self")
        if id(sub) in names and names[id(sub)]:
            where = f"in module {names[id(sub)]} ({type(sub).__name__})"
    return where


def _hint(e: Exception) -> str:
    text = str(e)
    if "data-dependent" in text or "DataDependent" in type(e).__name__ or "GuardOnData" in text:
        return ("Python control flow reads a tensor's value there; use torch.where / torch.cond, "
                "or move that part out of the model")
    if "pytree" in text or "not a known type" in text:
        return ("the model returns an object torch.export cannot flatten; return tensors, tuples "
                "or dataclasses (for Hugging Face models pass use_cache=False in the config)")
    return "compute dE/dp with torch.autograd, or rewrite that line with torch operations"


def _check_custom_functions(module: nn.Module, out) -> None:
    """Refuse a custom ``torch.autograd.Function`` in the real forward's autograd graph: export
    records its forward only, so its own backward (a straight-through estimator, say) would be
    lost."""
    stack = [t.grad_fn for t in torch.utils._pytree.tree_leaves(out)
             if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            raise UnsupportedLayerError(
                f"{type(module).__name__} calls the custom torch.autograd.Function "
                f"{type(fn).__name__.removesuffix('Backward')}, whose own backward torch.export "
                "does not record; write it with differentiable torch operations, or compute "
                "dE/dp with torch.autograd")
        stack.extend(f for f, _ in fn.next_functions)


def export_program(module: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` on ``(x,)``, non-strict, functionalised.

    Raises:
        UnsupportedLayerError: a layer that mixes samples or is random in training mode, or
            export fails (the message names the error, the user's source line and what to do).
        ValueError: the module itself fails on ``x`` (its shape is checked first).
    """
    for name, sub in module.named_modules():
        if isinstance(sub, _TRAIN_ONLY) and sub.training:
            raise UnsupportedLayerError(
                f"layer {name or type(module).__name__} ({type(sub).__name__}) is in training mode, "
                "where it mixes samples or is random, so per-sample Jacobians do not describe it; "
                "call model.eval() first")
    for name, sub in module.named_modules():
        if sub._backward_hooks or sub._backward_pre_hooks:
            raise UnsupportedLayerError(
                f"module {name or type(module).__name__} ({type(sub).__name__}) has a backward hook, "
                "which changes gradients in a way no forward graph records; remove it, or compute "
                "dE/dp with torch.autograd")
    for name, p in module.named_parameters():
        if p._backward_hooks:
            raise UnsupportedLayerError(
                f"parameter {name} has a gradient hook (register_hook), which torch.export does not "
                "record; remove it, or compute dE/dp with torch.autograd")
    try:
        with torch.enable_grad():
            out = module(x)
    except Exception as e:
        raise ValueError(f"the model fails on x of shape {tuple(x.shape)} {_failing(module, e)}: "
                         f"{type(e).__name__}: {e}. Check x's shape (batch first) against what "
                         "the model expects") from e
    _check_custom_functions(module, out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)      # torch's own pytree deprecations
            program = torch.export.export(module, (x,), strict=False)
            return program.run_decompositions({})
    except Exception as e:
        where = _user_frame(traceback.extract_tb(e.__traceback__)) or "an unknown line"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnsupportedLayerError(
            f"torch.export cannot capture {type(module).__name__}: {type(e).__name__}: {first} "
            f"at {where}. {_hint(e)}") from e
