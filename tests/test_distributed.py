"""trilib.distributed: real processes (gloo on localhost) give autograd's gradients with every
schedule, record timelines on every rank, fail fast and clean, and run under torchrun.

Spawning is slow (each process imports torch), so one set of processes runs all three schedules
for a P, and the cases are cached and shared between tests.
"""

import functools
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trilib
import trilib.distributed as td
from trilib.distributed import __main__ as cli
from trilib.nets import ACTIVATIONS, mlp
from trilib.schedule import simulate

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
M = 3                                   # micro-batches of the pipeline


def _children() -> set[int]:
    """Our child processes, read from /proc (Linux), except a multiprocessing resource tracker
    that other code in this process may have started (it lives as long as this process)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue                                  # gone meanwhile
        if int(fields[1]) == os.getpid() and b"resource_tracker" not in cmdline:
            found.add(int(stat.parent.name))
    return found


def _module_loss(out, target):
    """A loss at the top level of an importable module (tests are importable by path only, so
    the tests pass ``functools.partial(F.mse_loss, ...)`` instead; this one is for the checks)."""
    return F.mse_loss(out, target)


@functools.cache
def case(P: int):
    """A random float64 MLP whose depth k is not divisible by P (P > 1), random widths, random
    activation; all three schedules run on one set of P processes. Returns (net, x, E, results)."""
    rng = random.Random(1000 + P)
    k = rng.choice([k for k in range(P + 1, 3 * P + 3) if P == 1 or k % P])
    widths = [rng.randint(2, 9) for _ in range(k + 1)]
    activation = rng.choice([a for a in ACTIVATIONS if a != "identity"])
    net = mlp(widths, activation=activation, seed=P, dtype=torch.float64)
    gen = torch.Generator().manual_seed(P)
    x = torch.randn(10, widths[0], generator=gen, dtype=torch.float64)
    if P % 2:                           # a callable loss (picklable partial) ...
        target = torch.randn(10, widths[-1], generator=gen, dtype=torch.float64)
        loss = functools.partial(F.mse_loss, target=target)
        results = td.run(net, x, loss, P, schedule=list(td.SCHEDULES), microbatches=M, timeout_s=150)
    else:                               # ... and a named one with targets
        target = torch.randint(0, widths[-1], (10,), generator=gen)
        loss = functools.partial(F.cross_entropy, target=target)
        results = td.run(net, x, "cross_entropy", P, schedule=list(td.SCHEDULES), microbatches=M,
                         targets=target, timeout_s=150)
    return net, x, loss, results


def autograd(net, x, loss):
    net.zero_grad()
    value = loss(net(x))
    value.backward()
    return float(value.detach()), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.timeout(200)
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_every_schedule_gives_autograds_gradients(P):
    net, x, loss, results = case(P)
    k = sum(type(m) is nn.Linear for m in net)
    assert P == 1 or k % P, f"depth {k} should not be divisible by P={P}"
    ref_loss, ref = autograd(net, x, loss)
    assert set(results) == set(td.SCHEDULES)
    for name, res in results.items():
        assert list(res.gradients) == list(ref), name
        for n, g in ref.items():
            rel = float((res.gradients[n] - g).norm() / g.norm())
            assert rel <= 1e-10, f"{name}, P={P}, {n}: relative error {rel:.2e}"
        assert math.isclose(res.loss, ref_loss, rel_tol=1e-12), (name, res.loss, ref_loss)
        assert (res.schedule, res.world_size) == (name, P)
        assert res.microbatches == (M if name == "pipeline" else 1)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_timelines_have_every_rank_and_the_simulators_message_counts(P):
    net, _, _, results = case(P)
    k = sum(type(m) is nn.Linear for m in net)
    for name, res in results.items():
        # slabs: contiguous, balanced, covering 1..k
        assert sum(res.slabs, ()) == tuple(range(1, k + 1))
        assert max(map(len, res.slabs)) - min(map(len, res.slabs)) <= 1
        assert {e.rank for e in res.timeline} == set(range(P)), name
        for e in res.timeline:
            assert e.kind in td.KINDS and e.phase in td.PHASES and 0 <= e.start <= e.end, e
            if e.kind == "compute" and e.phase not in ("loss",):
                assert e.layers == res.slabs[e.rank], e
        computed = {(e.rank, e.microbatch) for e in res.timeline
                    if e.kind == "compute" and e.phase == "forward"}
        batches = range(res.microbatches) if name == "pipeline" else [None]
        assert computed == {(r, j) for r in range(P) for j in batches}
        # the simulator splits the k layers (k not divisible by P) over the ranks as the processes
        # did, and lays out as many backward messages as the processes sent
        sim = simulate(td.SIMULATED[name], k=k, P=P, m=res.microbatches)
        owned = [tuple(sorted({t.layer + 1 for t in sim.tasks if t.device == d})) for d in range(P)]
        assert tuple(owned) == res.slabs, (name, k, P, owned, res.slabs)
        sends = [e for e in res.timeline if e.kind == "send" and e.phase != "forward"]
        assert len(sends) == len(sim.messages), (name, k, P, len(sends), len(sim.messages))
        summary = res.summary()
        assert [r["rank"] for r in summary] == list(range(P))
        assert all(r["compute"] > 0 for r in summary)


@pytest.mark.timeout(200)
def test_gantt_and_comparison_draw_every_rank():
    _, _, _, results = case(2)
    ax = td.gantt(results["pipeline"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1"]
    assert len(ax.collections) == len(results["pipeline"].timeline)
    fig = td.compare(results)                            # P = 2 does not divide k: no prediction
    assert len(fig.axes) == 6
    assert "the simulator needs P | k" in fig.axes[3].texts[0].get_text()
    fig = td.compare(case(1)[3])                         # P = 1 divides every k
    # each prediction names the measured schedule it pairs with, and numbers ranks like the measurement
    assert [ax.get_title().split(" (")[0] for ax in fig.axes[1::2]] == \
        ["sequential", "pipeline = block_jacobi", "tree"]
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["rank 0"]
    matplotlib.pyplot.close("all")


def test_slab_map_is_the_transposed_jacobian_of_the_slab():
    """In-process check of the tree's building block: ``u_{d-1} = A_d u_d`` with A_d = (dz_hi/dz_lo)^T,
    and back-substitution's outgoing value equals ``A_d u_d``."""
    net = mlp([3, 5, 4, 6, 2], activation="gelu", seed=0, dtype=torch.float64)
    slab = td.model.Slab(td.parse_mlp(net), 1, 3)          # layers 2..3 = net[2:6]
    z = torch.randn(4, 5, dtype=torch.float64)
    out, cache = slab.forward(z)
    torch.testing.assert_close(out, net[2:6](z).detach(), rtol=1e-14, atol=0)
    a = slab.slab_map(cache)
    u = torch.randn(4, 6, dtype=torch.float64)
    for s in range(4):
        jac = torch.autograd.functional.jacobian(net[2:6], z[s])   # (6, 5)
        torch.testing.assert_close(a[s], jac.T, rtol=1e-12, atol=1e-14)
    _, outgoing = slab.back_substitute(u, cache)
    torch.testing.assert_close(outgoing, (a @ u.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=1e-14)


# --- faults ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_raising_worker_ends_the_run_naming_the_rank(monkeypatch):
    net = mlp([4] * 7, seed=0, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    before = _children()
    monkeypatch.setenv(td.FAULT_ENV, "1:backward:raise")
    start = time.monotonic()
    with pytest.raises(td.DistributedError) as info:
        td.run(net, x, "sum_squares", 3, schedule="sequential", timeout_s=60)
    elapsed = time.monotonic() - start
    err = info.value
    assert isinstance(err, RuntimeError)
    assert str(err).startswith("rank 1 failed during backward compute (layers 3-4): InjectedFault"), str(err)
    assert (err.rank, err.activity) == (1, "backward compute (layers 3-4)")
    assert elapsed < 60
    assert "InjectedFault" in err.tracebacks[1]
    assert _children() <= before, "a worker process was left behind"


@pytest.mark.timeout(120)
def test_a_peer_that_never_answers_ends_the_run_within_timeout_s(monkeypatch):
    net = mlp([4] * 5, seed=0, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    before = _children()
    monkeypatch.setenv(td.FAULT_ENV, "1:backward:hang")
    timeout_s = 12.0
    start = time.monotonic()
    with pytest.raises(td.DistributedError) as info:
        td.run(net, x, "sum_squares", 2, schedule="pipeline", microbatches=2, timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"did not finish within timeout_s={timeout_s:g} s" in message
    assert "rank 1 stopped answering during backward compute (layers 3-4) (micro-batch 1)" in message
    assert "rank 0 was in backward wait on rank 1" in message
    assert info.value.rank == 1
    assert "check_fault" in info.value.tracebacks[1], info.value.tracebacks   # its stack, dumped
    assert timeout_s - 1.5 <= elapsed <= timeout_s + 0.5, elapsed
    assert _children() <= before, "a worker process was left behind"


def test_a_rank_that_dies_without_a_report_is_named_with_its_last_output(tmp_path):
    """E.g. killed by the OOM killer, or failing to import: exit status and log tail."""
    class Dead:
        def __init__(self, code):
            self.code = code

        def poll(self):
            return self.code

    (tmp_path / "rank-1.log").write_text("Traceback (most recent call last):\nModuleNotFoundError: boom\n")
    err = td.processes._failure([], [Dead(None), Dead(1), Dead(-9)], ["forward compute", "setup",
                                                                     "backward recv from rank 1"], tmp_path)
    assert str(err).startswith("rank 1 exited with exit code 1 during setup; its last output:")
    assert "ModuleNotFoundError: boom" in str(err)
    assert "then: rank 2 exited with signal 9 during backward recv from rank 1" in str(err)
    assert (err.rank, err.activity) == (1, "setup")


# --- bad input: clear errors before any process starts -------------------------------------------


def _no_spawn(*args, **kwargs):
    raise AssertionError("run() started processes for bad input")


def _local_loss():
    def loss(out):
        return out.sum()
    return loss


def _notebook_loss(out):
    return out.sum()


_notebook_loss.__module__ = "__main__"       # as if defined in a notebook cell

NET = mlp([3, 4, 4, 4, 2], seed=0, dtype=torch.float64)
X = torch.randn(5, 3, dtype=torch.float64)
BAD = [
    ("lambda loss", dict(loss_fn=lambda out: out.sum()), TypeError, "lambda"),
    ("local function", dict(loss_fn=_local_loss()), TypeError, "local function"),
    ("notebook function", dict(loss_fn=_notebook_loss), TypeError, "defined in __main__"),
    ("not callable", dict(loss_fn=3), TypeError, "loss name"),
    ("unknown loss", dict(loss_fn="hinge"), ValueError, "unknown loss 'hinge'"),
    ("missing targets", dict(loss_fn="cross_entropy"), ValueError, "needs targets"),
    ("world_size 0", dict(world_size=0), ValueError, "world_size must be an int from 1 to"),
    ("world_size > k", dict(world_size=5), ValueError, r"number of layers k=4 .*got 5"),
    ("world_size bool", dict(world_size=True), ValueError, "world_size"),
    ("unknown schedule", dict(schedule="ring"), ValueError, "unknown schedule 'ring'"),
    ("schedule twice", dict(schedule=["tree", "tree"]), ValueError, "twice"),
    ("no schedule", dict(schedule=[]), ValueError, "at least one"),
    ("unknown backend", dict(backend="mpi"), ValueError, "unknown backend 'mpi'"),
    ("microbatches > batch", dict(schedule="pipeline", microbatches=6), ValueError, "batch size 5"),
    ("microbatches without pipeline", dict(microbatches=2), ValueError, "'pipeline' schedule only"),
    ("timeout", dict(timeout_s=0), ValueError, "timeout_s must be a positive"),
    ("x width", dict(x=torch.randn(5, 4, dtype=torch.float64)), ValueError, "expects 3"),
    ("x dtype", dict(x=torch.randn(5, 3)), TypeError, "dtype torch.float32"),
    ("not Sequential", dict(model=nn.Linear(3, 3)), TypeError, "nn.Sequential"),
    ("unsupported layer", dict(model=nn.Sequential(nn.Linear(3, 3), nn.Dropout(), nn.Linear(3, 2))),
     trilib.UnsupportedLayerError, r"1 \(Dropout\) is not supported"),
    ("activation first", dict(model=nn.Sequential(nn.Tanh(), nn.Linear(3, 2))),
     trilib.UnsupportedLayerError, "before the first nn.Linear"),
    ("widths do not chain", dict(model=nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))), ValueError,
     "expects 5 input features"),
]


@pytest.mark.parametrize("label, change, error, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_before_spawning(monkeypatch, label, change, error, match):
    monkeypatch.setattr(td.launch, "launch", _no_spawn)
    args = dict(model=NET, x=X, loss_fn="sum_squares", world_size=2) | change
    with pytest.raises(error, match=match):
        td.run(**args)


def test_nccl_needs_cuda(monkeypatch):
    monkeypatch.setattr(td.launch, "launch", _no_spawn)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="nccl' needs CUDA"):
        td.run(NET, X, "sum_squares", 2, backend="nccl")


def test_picklable_losses_pass_the_checks():
    td.model.check_loss(_module_loss, torch.zeros(1))            # top-level function
    td.model.check_loss(functools.partial(F.mse_loss, target=torch.zeros(1)), None)
    td.model.check_loss("sum_squares", None)


# --- the command line --------------------------------------------------------------------------------


def test_help_explains_the_cli(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("torchrun --standalone --nproc-per-node", "sequential", "pipeline", "tree",
                   "gradient", "--microbatches", "--dtype", "--width"):
        assert needle in text, needle
    assert cli.parse_args(["--n", "5", "--k", "3"]).n == 5


@pytest.mark.timeout(200)
def test_cli_under_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop(td.FAULT_ENV, None)
    # --width, not --n: torch 2.13's torchrun rejects "--n" as an ambiguous abbreviation of its own
    # options before our module starts (pytorch/pytorch#120601); -n and --width are aliases.
    cmd = launcher + ["--standalone", "--nproc-per-node", "2", "-m", "trilib.distributed",
                      "--k", "16", "--width", "8", "--schedule", "tree"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    found = re.search(r"relative gradient error against autograd \(max over parameters\): (\S+)", out)
    assert found, out
    assert float(found.group(1)) <= 1e-10
    assert "schedule 'tree' on 2 rank(s) (gloo, torchrun), k=16 layers" in out
    assert "rank 0 owns layers 1-8, rank 1 owns layers 9-16" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[01]\s+\d+-\d+\s", line)]
    assert [r[:2] for r in rows] == [["0", "1-8"], ["1", "9-16"]], out
