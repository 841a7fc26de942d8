"""Self-checking exercises: run a reader's own code on random problems and say what is wrong.

The notebooks ask the reader to write a scan, a level-set function or a schedule in plain
torch or Python. These functions run that code on many random problems (odd and even sizes,
``k = 1``, several widths and batches, float64) against an independent answer
(``torch.linalg.solve_triangular`` on the dense matrix, networkx's longest paths, the steps a
trilib solve records) and return a :class:`Verdict`: truthy when the code is right, and with a
``message`` a student can act on (the first wrong block, level or step, the size where it went
wrong, a wrong shape or dtype, an exception and the line that raised it).

Example:
    >>> import torch
    >>> from trilib import selfcheck
    >>> def substitution(B, r):               # v[i] = r[i] + B[i] v[i + 1], last row first
    ...     v = [r[-1]]
    ...     for i in range(len(B) - 1, -1, -1):
    ...         v.insert(0, r[i] + (B[i] @ v[0].unsqueeze(-1)).squeeze(-1))
    ...     return torch.stack(v)
    >>> verdict = selfcheck.solver(substitution)
    >>> bool(verdict), verdict.message
    (True, 'correct on 200 systems (k = 1 to 64, widths 1 to 4, batches 1 to 3)')
"""

from __future__ import annotations

import itertools
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import torch

from .solvers import methods, solve
from .systems import BlockBidiagonalSystem

__all__ = ["Verdict", "solver", "level_sets", "schedule", "random_system"]

_KS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 31, 32, 33, 64)


@dataclass
class Verdict:
    """The outcome of a check: truthy when the reader's code passed.

    Attributes:
        passed: whether every problem was solved correctly.
        message: what passed, or what went wrong first and where, in words.
        case: the failing problem and the two answers (empty when passed), e.g. for
            :func:`solver` the keys ``B``, ``r``, ``expected``, ``got``, to rerun it by hand.
    """

    passed: bool
    message: str
    case: dict = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        """``PASS:``/``FAIL:`` and the message, wrapped at 100 characters to fit a notebook."""
        return textwrap.fill(("PASS: " if self.passed else "FAIL: ") + self.message, width=100,
                             subsequent_indent="      ", break_long_words=False, break_on_hyphens=False)

    def _repr_pretty_(self, printer, cycle) -> None:       # IPython shows the sentence
        printer.text(str(self))


def _check_callable(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"selfcheck.{name}(fn): fn must be a function, got {type(fn).__name__}")


def _raised(fn, exc: BaseException, where: str) -> Verdict:
    """A verdict naming the exception and the line of the reader's code that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename != __file__] or frames
    line = f" at line {own[-1].lineno}: `{own[-1].line}`" if own and own[-1].line else ""
    name = getattr(fn, "__name__", "fn")
    return Verdict(False, f"{name} raised {type(exc).__name__}: {exc}{line}, {where}")


def random_system(k: int, batch: int, n: int, *, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random upper system ``U v = r``, ``U = I - N``, in the exercises' layout (float64).

    Returns:
        ``B`` of shape ``(k - 1, batch, n, n)``, ``B[i]`` the block at block row ``i``, column
        ``i + 1`` (counted from 0), and ``r`` of shape ``(k, batch, n)``. Each block is a
        product of two random reflections (orthogonal, not symmetric) with its rows scaled by
        factors of size 0.8 to 1 and random sign, so products of blocks neither explode nor
        vanish and every block of the answer matters, even 63 rows away.
    """
    if k < 1 or batch < 1 or n < 1:
        raise ValueError(f"random_system needs k, batch, n >= 1, got k={k}, batch={batch}, n={n}")
    kw = {"generator": generator, "dtype": torch.float64}
    shape = (max(k - 1, 0), batch, n)
    B = torch.eye(n, dtype=torch.float64).expand(*shape, n)
    for _ in range(2):                        # B <- B (I - 2 w w^T / w^T w)
        w = torch.randn(*shape, 1, **kw)
        B = B - 2 * (B @ w) @ w.mT / (w.mT @ w)
    size = 0.8 + 0.2 * torch.rand(*shape, 1, **kw)
    sign = 2 * torch.randint(0, 2, (*shape, 1), generator=generator, dtype=torch.float64) - 1
    B = B * size * sign
    return B, torch.randn(k, batch, n, **kw)


def _dense_solution(B: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``U^{-1} r`` by ``torch.linalg.solve_triangular`` on the dense ``U = I - N``."""
    k, batch, n = r.shape
    U = torch.eye(k * n, dtype=r.dtype).repeat(batch, 1, 1)
    for i in range(k - 1):
        U[:, i * n:(i + 1) * n, (i + 1) * n:(i + 2) * n] = -B[i]
    rhs = r.permute(1, 0, 2).reshape(batch, k * n, 1)
    v = torch.linalg.solve_triangular(U, rhs, upper=True, unitriangular=True)
    return v.reshape(batch, k, n).permute(1, 0, 2)


def _hint(B, r, got, i) -> str:
    """A guess at the mistake behind a wrong block ``got[i]`` whose successor is right."""
    if i == len(r) - 1:
        return " The last block has nothing to absorb: v[k-1] = r[k-1]."
    succ = got[i + 1].unsqueeze(-1)
    guesses = {"B[i] transposed (use B[i] @ v[i+1], not B[i].mT @ v[i+1])":
               r[i] + (B[i].mT @ succ).squeeze(-1),
               "the sign of B: U = I - N, so v[i] = r[i] + B[i] v[i+1], a plus":
               r[i] - (B[i] @ succ).squeeze(-1),
               "v[i] = r[i], as if row i never absorbed its successor": r[i]}
    for text, value in guesses.items():
        if torch.allclose(got[i], value, rtol=1e-9, atol=1e-12):
            return f" It looks like {text}."
    return ""


def solver(fn: Callable, *, systems: int = 200, seed: int = 0) -> Verdict:
    """Check a reader's solver ``fn(B, r) -> v`` of the upper system ``U v = r``, ``U = I - N``.

    ``B`` has shape ``(k - 1, batch, n, n)``: ``B[i]`` is the block at block row ``i``, column
    ``i + 1`` (counted from 0), so that ``v[i] = r[i] + B[i] v[i + 1]`` (docs/theory.md §1,
    §5); ``r`` has shape ``(k, batch, n)``; ``fn`` returns ``v`` of shape ``(k, batch, n)``.

    Args:
        fn: the reader's function; it receives copies, so changing them in place is harmless.
        systems: how many random systems to try, smallest first (default 200: every
            ``k`` in 1..64 of a fixed list, odd and even, with widths 1..4 and batches 1..3).
        seed: the seed of the random systems.

    Returns:
        A :class:`Verdict`. On the first wrong system it names ``k``, the shapes, and the first
        wrong block in the order substitution solves them (``v[k-1]`` first), with the
        relative error and a guess at the mistake; ``verdict.case`` holds that system.
    """
    _check_callable(fn, "solver")
    if systems < 1:
        raise ValueError(f"selfcheck.solver: systems must be >= 1, got {systems}")
    gen = torch.Generator().manual_seed(seed)
    sizes = list(itertools.product(_KS, (1, 2, 3, 4), (1, 2, 3)))
    sizes.sort(key=lambda s: (s[0] * s[1] * s[2], s))
    sizes = list(itertools.islice(itertools.cycle(sizes), systems))
    for k, n, batch in sizes:
        B, r = random_system(k, batch, n, generator=gen)
        where = f"on a system with k = {k}, width n = {n}, batch {batch} " \
                f"(B {tuple(B.shape)}, r {tuple(r.shape)})"
        try:
            got = fn(B.clone(), r.clone())
        except Exception as exc:      # the reader's bug, reported rather than raised
            return _raised(fn, exc, where)
        if not isinstance(got, torch.Tensor):
            extra = " (a list of blocks? return torch.stack(v))" if isinstance(got, (list, tuple)) else ""
            return Verdict(False, f"returned a {type(got).__name__}, expected a tensor{extra}, {where}")
        if got.shape != r.shape:
            return Verdict(False, f"returned shape {tuple(got.shape)}, expected {tuple(r.shape)} "
                                  f"(k, batch, n), {where}")
        if got.dtype != torch.float64:
            return Verdict(False, f"returned {got.dtype}, expected torch.float64 (keep r's dtype), {where}")
        want = _dense_solution(B, r)
        bad = [i for i in range(k) if not torch.allclose(got[i], want[i], rtol=1e-9, atol=1e-10)]
        if bad:
            i = max(bad)
            err = float((got[i] - want[i]).norm() / want[i].norm().clamp_min(1e-300))
            return Verdict(False, f"wrong {where}: the first wrong block in solve order is v[{i}] "
                                  f"(relative error {err:.1e}); wrong blocks: {bad}."
                                  + _hint(B, r, got, i),
                           {"B": B, "r": r, "expected": want, "got": got, "block": i})
    ks = sorted({s[0] for s in sizes})
    return Verdict(True, f"correct on {systems} systems (k = {ks[0]} to {ks[-1]}, widths "
                         f"{min(s[1] for s in sizes)} to {max(s[1] for s in sizes)}, batches "
                         f"{min(s[2] for s in sizes)} to {max(s[2] for s in sizes)})")


def _random_dag(nodes: int, gen: torch.Generator) -> list[list[int]]:
    """``children[i]``: the nodes reading node ``i``, all ``> i``; every edge with probability
    ``2 / nodes`` plus an edge to the next node with probability 1/2 (chains and fans)."""
    children = [[] for _ in range(nodes)]
    for i in range(nodes - 1):
        draws = torch.rand(nodes - i - 1, generator=gen)
        children[i] = [i + 1 + j for j, u in enumerate(draws.tolist())
                       if u < 2 / nodes or (j == 0 and u < 0.5)]
    return children


def level_sets(fn: Callable, *, graphs: int = 200, seed: int = 0) -> Verdict:
    """Check a reader's level sets ``fn(children) -> levels`` on random DAGs (docs/theory.md §3).

    ``children[i]`` lists the nodes that read node ``i`` (edges ``i -> j``, ``j > i``; nodes in
    topological order). ``levels[s]`` must hold the nodes whose longest path to a node without
    children has ``s`` edges (any order inside a level): ``levels[0]`` the sinks, one level per
    step of level scheduling. The answer is networkx's longest path from each node.

    Args:
        fn: the reader's function.
        graphs: how many random DAGs (1 to 40 nodes, smallest first).
        seed: the seed of the random graphs.
    """
    _check_callable(fn, "level_sets")
    gen = torch.Generator().manual_seed(seed)
    for g in range(graphs):
        nodes = 1 + g * 40 // graphs
        children = _random_dag(nodes, gen)
        dag = nx.DiGraph([(i, j) for i in range(nodes) for j in children[i]])
        dag.add_nodes_from(range(nodes))
        level = {i: nx.dag_longest_path_length(dag.subgraph(nx.descendants(dag, i) | {i}))
                 for i in range(nodes)}
        want = [sorted(i for i in range(nodes) if level[i] == s) for s in range(max(level.values()) + 1)]
        where = f"on a DAG with {nodes} nodes, children = {children}"
        try:
            got = fn([list(c) for c in children])
            got = [sorted(int(i) for i in lev) for lev in got]
        except Exception as exc:
            return _raised(fn, exc, where)
        placed = {i: s for s, lev in enumerate(got) for i in lev}
        for i in sorted(range(nodes), key=lambda i: (level[i], i)):
            if placed.get(i) != level[i]:
                kids = ", ".join(f"{j} (level {level[j]})" for j in children[i]) or "none"
                said = "in no level" if i not in placed else f"in level {placed[i]}"
                return Verdict(False, f"node {i} is {said}, expected level {level[i]} {where}: its "
                                      f"children are {kids}; a node's level is one more than its "
                                      f"highest child's, 0 without children.",
                               {"children": children, "expected": want, "got": got})
        if len(got) != len(want) or sum(map(len, got)) != nodes:
            return Verdict(False, f"{len(got)} levels holding {sum(map(len, got))} nodes, expected "
                                  f"{len(want)} levels holding each of the {nodes} nodes once, {where}",
                           {"children": children, "expected": want, "got": got})
    return Verdict(True, f"correct on {graphs} random DAGs (1 to {nodes} nodes)")


def schedule(fn: Callable, method: str, *, ks=range(1, 65)) -> Verdict:
    """Check a reader's schedule of a scan against the steps a trilib solve records.

    ``fn(k)`` returns either the number of parallel steps of ``method`` on ``k`` block rows
    (an ``int``), or the steps themselves: a list with one list of ``(target, source)`` pairs
    per step, rows ``i`` counted from 0 of the upper (backward) system, ``target`` absorbing
    ``source`` (order inside a step is free). The answer is the trace of
    ``trilib.solve(U, method, return_trace=True)`` on a random upper system of ``k`` rows.

    Args:
        fn: the reader's function.
        method: a block bi-diagonal method, e.g. ``"recursive_doubling"``, ``"blelloch"``,
            ``"cyclic_reduction"``, ``"parallel_cyclic_reduction"``, ``"sequential"``.
        ks: the sizes to try.
    """
    _check_callable(fn, "schedule")
    if method not in methods(BlockBidiagonalSystem):
        raise ValueError(f"selfcheck.schedule: method must be one of "
                         f"{methods(BlockBidiagonalSystem)}, got {method!r}")
    gen = torch.Generator().manual_seed(0)
    for k in ks:
        B, r = random_system(k, 1, 1, generator=gen)
        system = BlockBidiagonalSystem(list(B), [None] * (k - 1), list(r), upper=True)
        trace = solve(system, method, return_trace=True)[1]
        try:
            got = fn(k)
        except Exception as exc:
            return _raised(fn, exc, f"for k = {k}")
        if isinstance(got, int):
            if got != trace.steps:
                return Verdict(False, f"k = {k}: you counted {got} steps, {method} takes {trace.steps}",
                               {"k": k, "expected": trace.steps, "got": got})
            continue
        got = [sorted((int(t), int(s)) for t, s in step) for step in got]
        want = [sorted(step) for step in trace.combines]
        for s, (mine, theirs) in enumerate(itertools.zip_longest(got, want)):
            if mine != theirs:
                what = "no such step" if theirs is None else theirs
                return Verdict(False, f"k = {k}: step {s} should be {what}, you gave "
                                      f"{'no step' if mine is None else mine}",
                               {"k": k, "expected": want, "got": got, "step": s})
    return Verdict(True, f"{method}: correct for k = {min(ks)} to {max(ks)}")
