"""Model-parallel schedules (issue 4): simulated counts against closed forms, and the timelines
checked for validity (one task per device at a time, dependencies, messages before use)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import trilib  # noqa: E402
from trilib.schedule import METHODS, closed_form, simulate  # noqa: E402
from trilib.viz import convergence, gantt, gantt_grid  # noqa: E402

GRID = [(k, P, m) for k in (1, 2, 4, 6, 7, 8, 12) for P in range(1, k + 1) for m in (1, 2, 5)]


@pytest.mark.parametrize("method", METHODS)
def test_counts_match_closed_forms(method):
    for k, P, m in GRID:
        s = simulate(method, k, P, m)
        got = {key: s.summary()[key] for key in ("steps", "messages", "idle", "work")}
        assert got == closed_form(method, k, P, m), (method, k, P, m)
        assert s.idle == sum(s.steps - b for b in s.busy())


def test_seven_layers_on_three_devices_worked_by_hand():
    """Slabs 3/2/2 (the larger first). Block Jacobi, one micro-batch: device 0 works at 0-2,
    device 1 at 3-4, device 2 at 6-7 (each turn lasts the largest slab, 3 units): 8 steps, 2
    messages. The tree: 3 units of slab scans, rounds at 3 (1 <- 0, 2 <- 1) and 4 (2 <- 0),
    then devices 1 and 2 apply at 5-6: 7 steps, 3 messages."""
    block = simulate("block_jacobi", 7, 3)
    assert sorted((t.device, t.start, t.layer) for t in block.tasks) == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 3, 3), (1, 4, 4), (2, 6, 5), (2, 7, 6)]
    assert (block.steps, len(block.messages)) == (8, 2)
    tree = simulate("tree", 7, 3)
    assert sorted((m.src, m.dst, m.time) for m in tree.messages) == [(0, 1, 3), (0, 2, 4), (1, 2, 3)]
    assert (tree.steps, tree.work) == (7, 7 + 3 + 4)


def test_special_cases_agree():
    for k, m in [(6, 1), (8, 3)]:
        # one layer per device: point and block Jacobi are the same pipeline, k + m - 1 steps
        assert simulate("jacobi", k, k, m).steps == simulate("block_jacobi", k, k, m).steps == k + m - 1
        # one device: every schedule but point Jacobi is substitution, m k steps
        for method in ("sequential", "block_jacobi", "tree"):
            assert simulate(method, k, 1, m).steps == m * k
    assert simulate("tree", 8, 8, 1).rounds == 3                  # ⌈log2 P⌉ communication rounds
    assert simulate("block_jacobi", 8, 8, 1).rounds == 7          # P - 1 for a pipeline


@pytest.mark.parametrize("method", METHODS)
def test_timelines_are_valid(method):
    for k, P, m in GRID:
        s = simulate(method, k, P, m)
        slots = [(t.device, t.start) for t in s.tasks]
        assert len(slots) == len(set(slots)), "a device does two things at once"
        owner = [d for d, part in enumerate(np.array_split(np.arange(k), P)) for _ in part]
        assert all(t.device == owner[t.layer] for t in s.tasks), "a device works on a layer it does not own"
        if method == "tree":
            continue
        done = {(t.micro_batch, t.layer): t.start for t in s.tasks}
        assert len(done) == len(s.tasks) == m * k, "every (micro-batch, layer) exactly once"
        for (j, l), start in done.items():
            if l:
                assert done[(j, l - 1)] + 1 <= start, (method, j, l)
        for msg in s.messages:
            nxt = [t for t in s.tasks if t.micro_batch == msg.micro_batch and t.device == msg.dst]
            assert min(t.start for t in nxt) >= msg.time


def test_tree_phases_follow_rounds():
    s = simulate("tree", 8, 4, 2)
    by_kind = defaultdict(list)
    for t in s.tasks:
        by_kind[t.kind].append(t)
    assert max(t.start for t in by_kind["layer"]) < min(t.start for t in by_kind["combine"])
    assert max(t.start for t in by_kind["combine"]) < min(t.start for t in by_kind["apply"])
    assert {t.device for t in by_kind["apply"]} == {1, 2, 3}
    assert sorted({(m.src, m.dst) for m in s.messages}) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("args,match", [
    (("pipeline", 4, 2, 1), "unknown schedule 'pipeline'"),
    (("jacobi", 4, 8, 1), "P must be an int from 1 to k = 4"),
    (("jacobi", 4, 2, 0), "m must be an int >= 1, got 0"),
    (("jacobi", 0, 1, 1), "k must be an int >= 1"),
    (("jacobi", 4, 2.0, 1), "P must be an int >= 1"),
])
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        simulate(*args)
    with pytest.raises(ValueError, match=match):
        closed_form(*args)


def test_gantt_draws_every_task():
    s = simulate("block_jacobi", 8, 4, 3)
    ax = gantt(s)
    assert len(ax.collections) == len(s.tasks)
    assert "steps 12" in ax.get_title()
    fig = gantt_grid(8, 4, 2)
    assert len(fig.axes) == len(METHODS)
    matplotlib.pyplot.close("all")


def test_convergence_plot():
    import torch

    net = trilib.nets.mlp([3, 5, 5, 5, 2], seed=0, dtype=torch.float64)
    U = trilib.backward_system(net, torch.randn(2, 3, dtype=torch.float64), lambda o: o.sum())
    traces = [trilib.solve(U, m, return_trace=True)[1] for m in ("jacobi", "gauss_seidel")]
    ax = convergence(traces)
    assert len(ax.get_lines()) >= 2 and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="kind must be"):
        convergence(traces, kind="loss")
    matplotlib.pyplot.close("all")
