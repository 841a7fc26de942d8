"""trilib.schedule.brent: greedy list scheduling of a solve's combine DAG (docs/theory.md §10),
checked against a DAG built here with networkx from the trace's pairs and against the
limits every schedule must respect (work / P and the depth from below, Brent's bound above)."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trilib
from trilib import selfcheck
from trilib.schedule import brent

METHODS = ("sequential", *trilib.methods(trilib.BlockBidiagonalSystem, family="direct"))


def trace_of(method: str, k: int):
    B, r = selfcheck.random_system(k, 1, 1, generator=torch.Generator().manual_seed(k))
    system = trilib.BlockBidiagonalSystem(list(B), [None] * (k - 1), list(r), upper=True)
    return trilib.solve(system, method, return_trace=True)[1]


def combine_dag(trace) -> nx.DiGraph:
    """The combines as nodes ``(step, target, source)``; an edge from the combine that last
    wrote a row (in an earlier step) to every later combine that reads it."""
    dag, writer = nx.DiGraph(), {}
    for s, pairs in enumerate(trace.combines):
        for t, src in pairs:
            dag.add_node((s, t, src))
            dag.add_edges_from((writer[row], (s, t, src)) for row in (t, src) if row in writer)
        writer.update({t: (s, t, src) for t, src in pairs})
    return dag


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 64, 100])
def test_limits_against_an_independent_dag(method, k):
    trace = trace_of(method, k)
    dag = combine_dag(trace)
    work = dag.number_of_nodes()
    depth = nx.dag_longest_path_length(dag) + 1 if work else 0
    assert work == trace.work                       # one combine = one block product (§5)
    one = brent(trace, 1)
    assert (one.work, one.depth, one.steps) == (work, depth, work)
    width = max(map(len, nx.topological_generations(dag)), default=0)
    assert brent(trace, max(width, 1)).steps == depth == brent(trace, 10 ** 6).steps
    nonempty = sum(1 for pairs in trace.combines if pairs)
    if method in ("sequential", "recursive_doubling", "parallel_cyclic_reduction"):
        assert depth == nonempty
        assert width == max(map(len, trace.combines), default=0)
    else:                                           # last reduction ‖ first back-substitution
        assert nonempty - 2 <= depth <= nonempty


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(METHODS), k=st.integers(1, 200), P=st.integers(1, 300))
def test_greedy_steps_lie_between_the_lower_bounds_and_brents_bound(method, k, P):
    trace = trace_of(method, k)
    sched = brent(trace, P)
    assert sched.bound == math.ceil(sched.work / P) + sched.depth
    assert max(math.ceil(sched.work / P), sched.depth) <= sched.steps <= sched.bound
    assert sum(sched.busy) == sched.work and max(sched.busy, default=0) <= P


def test_widest_trace_step_reaches_the_depth_except_small_cyclic_reduction():
    misses = {(m, k) for m in METHODS for k in range(1, 130)
              if (t := trace_of(m, k)) and brent(t, max(1, max(map(len, t.combines), default=1))).steps
              != brent(t, 10 ** 6).steps}
    assert misses == {("cyclic_reduction", 3), ("cyclic_reduction", 5)}


def test_bad_arguments():
    trace = trace_of("blelloch", 4)
    for P in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="P must be an int >= 1"):
            brent(trace, P)
    with pytest.raises(TypeError, match="must be a trilib Trace"):
        brent([[(0, 1)]], 2)
