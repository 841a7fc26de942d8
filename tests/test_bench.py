"""The benchmark CLI (tiny sizes), its timer, the scans it compares with and the crossover."""

import csv
import importlib.util
import json
import math

import pytest
import torch
from conftest import rel

import trilib
from trilib import bench
from trilib.viz import bench as vizbench

TINY = ["--k", "2,4", "--n", "3", "--batch", "2", "--tau", "3", "--fixed-k", "3", "--fixed-n", "3",
        "--fixed-batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "0"]


def test_cli_writes_results_and_figure(tmp_path, capsys):
    result = bench.main(TINY + ["--out", str(tmp_path / "res"), "--figures", str(tmp_path / "fig"),
                                "--device", "cpu"])
    out = capsys.readouterr().out
    stem = result["machine"]["stem"]
    assert stem.startswith("cpu-")
    data = json.loads((tmp_path / "res" / f"{stem}.json").read_text())
    assert data["machine"]["name"] == bench.device_name("cpu")
    with open(tmp_path / "res" / f"{stem}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["rows"]) > 0
    assert (tmp_path / "fig" / "bench_cpu.png").stat().st_size > 1000
    # every method trilib reports for an MLP system is measured, plus autograd and the scan
    net = trilib.nets.mlp([3, 3, 3], seed=0)
    expected = set(trilib.methods(trilib.backward_system(net, torch.randn(2, 3), lambda o: o.sum())))
    measured = {r["method"] for r in data["rows"] if r["suite"] == "mlp" and r["metric"] == "backward"}
    assert expected | {"autograd", "associative_scan"} == measured
    solved = {r["method"] for r in data["rows"] if r["suite"] == "mlp" and r["metric"] == "solve"}
    direct = set(trilib.methods(trilib.BlockBidiagonalSystem, family="direct"))
    assert direct | {"sequential", "associative_scan", *bench.JAX_METHODS} == solved
    for r in data["rows"]:
        if r["method"] == "autograd" and r["metric"] == "backward":
            assert r["ratio"] == 1.0
        if not r["note"] and r["metric"] in ("backward", "solve"):
            assert r["rel_error"] < 1e-3 and r["median_s"] > 0
    assert "backward time / autograd time" in out and "crossover (mlp_k" in out
    assert "solve time / autograd time" in out and "best direct solve" in out
    assert {r["metric"] for r in data["rows"]} == {"backward", "solve", "step"}
    for k in (2, 4):                      # per case: autograd, sequential and the fastest direct
        steps = {r["method"] for r in data["rows"] if r["metric"] == "step" and r["k"] == k}
        assert {"autograd", "sequential"} < steps and len(steps & direct) == 1
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["threads"] >= 1
    assert data["machine"]["recorded"] and data["command"].startswith("python -m trilib.bench")
    assert any(r["suite"] == "rnn" for r in data["rows"])


def test_sizes_mean_what_they_say(monkeypatch, tmp_path):
    """--k 64,256 --n 8 runs k = 64, 256 at n = 8 (not at --fixed-n); the default suite keeps its
    three sweeps; the RNN suite takes the --n given."""
    from trilib.bench import __main__ as cli

    calls = []
    record = lambda sizes, sweep: calls.append((*sizes, sweep)) or []  # noqa: E731
    monkeypatch.setattr(cli, "run_mlp", lambda ks, ns, bs, **kw: record((ks, ns, bs), kw["sweep"]))
    monkeypatch.setattr(cli, "run_rnn", lambda taus, ns, bs, **kw: record((taus, ns, bs), "tau"))
    quiet = ["--out", str(tmp_path), "--figures", ""]
    cli.main(["--k", "64,256", "--n", "8"] + quiet)
    assert calls == [([64, 256], [8], [4], "k"), ([16, 64, 256], [8], [4], "tau")]
    calls.clear()
    cli.main(["--suite", "mlp", "--k", "256,1024,4096", "--n", "8,16", "--batch", "4"] + quiet)
    assert calls == [([256, 1024, 4096], [8, 16], [4], "k")]
    calls.clear()
    cli.main(["--suite", "mlp", "--n", "8,16", "--fixed-k", "32"] + quiet)
    assert calls == [([32], [8, 16], [4], "n")]
    calls.clear()
    cli.main(["--suite", "mlp", "--fixed-n", "8"] + quiet)             # the default suite
    assert calls == [([4, 16, 64, 256], [8], [4], "k"), ([64], [8, 16, 64], [4], "n"),
                     ([64], [8], [1, 4, 32], "batch")]
    help_text = cli.parser().format_help()
    assert "--k 64,256 --n 8" in help_text and "every combination" in help_text


def test_run_writes_only_where_told(tmp_path, monkeypatch):
    """--out DIR puts the JSON, CSV and figure in DIR and nowhere else (no figures/ folder)."""
    monkeypatch.chdir(tmp_path)
    bench.main(TINY + ["--suite", "mlp", "--methods", "sequential", "--no-step", "--out", "res"])
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 3 and written[0] == "res/bench_cpu.png"
    assert [p.rsplit(".", 1)[1] for p in written[1:]] == ["csv", "json"]
    assert all(p.startswith("res/") for p in written) and not (tmp_path / "figures").exists()


def test_jax_absent_is_reported(tmp_path, monkeypatch, capsys):
    from trilib.bench import __main__ as cli
    from trilib.bench import suites

    reason = "jax not installed (jax): pip install trilib[bench]"
    monkeypatch.setattr(suites, "jax_info", lambda: {"jax": None, "reason": reason})
    monkeypatch.setattr(cli, "jax_info", lambda: {"jax": None, "reason": reason})
    result = bench.main(TINY + ["--suite", "mlp", "--no-step", "--out", str(tmp_path), "--figures", ""])
    jax_rows = [r for r in result["rows"] if r["method"] in bench.JAX_METHODS]
    assert jax_rows and all(r["note"] == reason and math.isnan(r["median_s"]) for r in jax_rows)
    assert result["machine"]["jax"] is None and reason in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax (pip install trilib[bench])")
def test_jax_peers_solve_the_same_system():
    import numpy as np

    from trilib.bench.peers import jax_solvers

    net = trilib.nets.mlp([4] * 9, activation="tanh", seed=0)
    U = trilib.backward_system(net, torch.randn(3, 4), lambda o: o.square().sum())
    ref = trilib.solve(U).stacked()
    for name, fn in jax_solvers(U).items():
        assert rel(torch.from_numpy(np.array(fn())), ref) < 1e-5, name


def test_a_method_that_applies_nowhere_is_noted(tmp_path, capsys):
    result = bench.main(TINY + ["--suite", "mlp", "--methods", "sequential,wavefront", "--no-step",
                                "--out", str(tmp_path), "--figures", ""])
    assert "wavefront" not in {r["method"] for r in result["rows"]}
    asked = [n for n in result["notes"] if n.startswith("--methods")]     # (and jax's, when absent)
    assert asked == ["--methods wavefront: applies to none of the systems measured"]
    assert "note: --methods wavefront" in capsys.readouterr().out


def test_cli_method_subset_and_no_step(tmp_path):
    result = bench.main(TINY + ["--suite", "mlp", "--methods", "sequential,associative_scan",
                                "--no-step", "--out", str(tmp_path), "--figures", ""])
    assert {r["method"] for r in result["rows"]} == {"autograd", "sequential", "associative_scan"}
    assert {r["metric"] for r in result["rows"]} == {"backward", "solve"}
    assert not list(tmp_path.glob("*.png"))


def test_module_runs_as_script(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "trilib.bench", "--help"], capture_output=True,
                          text=True, check=True)
    assert "--methods" in proc.stdout and "--device" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--suite", "cnn"], "unknown suite"),
    (["--methods", "magic"], "unknown \\['magic'\\]"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_cli_errors(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        bench.main(TINY + args + ["--out", str(tmp_path)])


def test_cli_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--k", "0,2"])
    assert "expected positive integers" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_cuda_without_gpu(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.main(TINY + ["--device", "cuda", "--out", str(tmp_path)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_timer():
    a = torch.randn(64, 64, device="cuda")
    times = bench.measure({"mm": lambda: a @ a}, "cuda", repeats=3, warmup=1)
    assert len(times["mm"]) == 3 and min(times["mm"]) > 0


def test_associative_scan_matches_triangular_solve():
    torch.manual_seed(0)
    net = trilib.nets.mlp([5] * 8, activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    U = trilib.backward_system(net, x, lambda o: o.square().sum())
    v = bench.associative_scan_solve(U)
    for s in range(3):
        dense = torch.linalg.solve_triangular(U.to_dense(s), U.rhs_dense(s).unsqueeze(-1), upper=True)
        assert torch.allclose(torch.cat([vl[s] for vl in v]), dense.squeeze(-1), atol=1e-12)


def test_associative_scan_errors():
    net = trilib.nets.mlp([3, 4, 5], seed=0)
    U = trilib.backward_system(net, torch.randn(2, 3), lambda o: o.sum())
    with pytest.raises(ValueError, match="equal block widths, got \\(4, 5\\)"):
        bench.associative_scan_solve(U)
    with pytest.raises(TypeError, match="upper BlockBidiagonalSystem"):
        bench.associative_scan_solve(trilib.forward_system(trilib.nets.mlp([2, 2, 2], "identity"),
                                                           torch.randn(1, 2)))


def test_measure_interleaves_and_checks():
    calls = []
    times = bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          repeats=4, warmup=1, hot=False)
    assert [len(t) for t in times.values()] == [4, 4]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]   # rotating order
    calls.clear()
    bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=0)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"]          # hot: untimed call first
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        bench.measure({"a": lambda: None}, repeats=0)


def _rows(points):
    return [dict(suite="mlp", sweep="k", metric="backward", k=k, method=m, median_s=t, steps=s)
            for k, m, t, s in points]


def test_crossover_reports_honestly():
    rows = _rows([(4, "autograd", 1, 4), (4, "sequential", 1, 4), (4, "recursive_doubling", 3, 2),
                  (16, "autograd", 2, 16), (16, "sequential", 2, 16), (16, "recursive_doubling", 1, 4),
                  (64, "autograd", 4, 64), (64, "sequential", 4, 64), (64, "blelloch", 2, 6)])
    c = bench.crossover(rows)
    assert c["crossover"] == 16 and c["largest"] == 64
    assert c["best_ratio"][4] == ("recursive_doubling", 3.0) and c["best_ratio"][64] == ("blelloch", 0.5)
    # losing again at the largest size means no crossover within the sweep
    rows += _rows([(256, "autograd", 1, 256), (256, "recursive_doubling", 5, 8)])
    assert bench.crossover(rows)["crossover"] is None
    # only direct parallel methods count: Gauss-Seidel and Jacobi do not
    slow = _rows([(4, "autograd", 2, 4), (4, "sequential", 2, 4), (4, "gauss_seidel", 1, 1),
                  (4, "jacobi", 1, 4)])
    assert bench.crossover(slow)["best_ratio"] == {}


def test_table_and_plot_from_recorded_rows(tmp_path):
    rows = bench.run_mlp([2, 3], [3], [1], repeats=1, warmup=0, methods=["sequential"], step=True)
    text = bench.table(rows)
    assert "mlp k=2 n=3 b=1" in text and "sequential" in text
    assert "step time" in bench.table(rows, "step")
    result = {"machine": {"name": "test", "device": "cpu", "torch": torch.__version__, "stem": "cpu-test"},
              "rows": rows}
    jpath, _ = bench.save_results(result, tmp_path)
    fig = vizbench.plot_results(bench.load_results(jpath), tmp_path / "f.png")
    assert (tmp_path / "f.png").exists() and len(fig.axes) == 2       # solve above solve + grads
    assert [ax.get_title().split(",")[0] for ax in fig.axes] == ["MLP solve", "MLP backward"]
    assert all("speed-up over autograd" in ax.get_ylabel() and "> 1 faster" in ax.get_ylabel()
               for ax in fig.axes)
    assert all(math.isfinite(r["median_s"]) for r in rows)


def test_recorded_figure(tmp_path):
    with pytest.raises(FileNotFoundError, match="no recorded cuda results"):
        vizbench.recorded_figure("cuda", tmp_path)
    rows = bench.run_mlp([2], [3], [1], repeats=1, warmup=0, methods=["sequential"], step=False)
    bench.save_results({"machine": {"name": "t", "device": "cpu", "torch": "x", "stem": "cpu-t"},
                        "rows": rows}, tmp_path)
    assert "t (cpu)" in vizbench.recorded_figure("cpu", tmp_path)._suptitle.get_text()
    with pytest.raises(FileNotFoundError, match="no recorded cpu results tagged 'deep'"):
        vizbench.recorded_figure("cpu", tmp_path, tag="deep")
    for name, when in (("old", "2020-01-01T00:00:00+00:00"), ("new", "2026-01-01T00:00:00+00:00"),
                       ("a-older", "2019-01-01T00:00:00+00:00")):
        bench.save_results({"machine": {"name": name, "device": "cpu", "torch": "x", "recorded": when,
                                        "stem": f"cpu-{name}-deep"}, "rows": rows}, tmp_path)
    # several machines recorded: the newest recording is drawn, and its title names the machine
    assert vizbench.recorded_figure("cpu", tmp_path, tag="deep")._suptitle.get_text().startswith("new (cpu")


def test_text_table_aligns_and_checks():
    from trilib.bench.tables import cell, text_table

    text = text_table(["case", "autograd", "a_long_method_name"],
                      [["mlp k=4", cell(1.5, ".3f", suffix=" ms"), cell(0.25)],
                       ["mlp k=4096", cell(12.0, ".3f", suffix=" ms"), cell(float("nan"))]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and len({len(line) for line in lines[1:]}) == 1      # one width per line
    assert lines[2].split() == ["mlp", "k=4", "1.500", "ms", "0.25"] and lines[3].endswith(" -")
    assert lines[1].startswith("case ") and lines[2].startswith("mlp k=4 ")     # labels left-aligned
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        text_table(["a", "b"], [["x"]])


def test_every_table_is_aligned_by_the_one_formatter():
    """The bench's, the gated suite's, viz.compare's and the distributed timeline's tables all come
    out of text_table: every line under the title is equally wide (right-aligned last column)."""
    from trilib.bench.gated import gated_table
    from trilib.distributed.launch import DistributedResult
    from trilib.distributed.timeline import Event
    from trilib.viz.compare import speedup_table

    rows = bench.run_mlp([2, 3], [3], [1], repeats=1, warmup=0, methods=["sequential"], step=False)
    gated = [dict(suite="gru", sweep="tau", k=1, n=2, batch=1, tau=t, metric="forward", method=m,
                  median_s=s, ratio=s / 2.0, note="")
             for t in (8, 1024) for m, s in (("torch", 2.0), ("newton", 3.0))]
    timeline = DistributedResult({}, 0.0, [Event(0, "compute", 0.0, 0.5), Event(1, "send", 0.1, 12.25)],
                                 "tree", 2, ((1, 2), (3,)))
    for text, titled in ((bench.table(rows), True), (gated_table(gated).strip(), True),
                         (speedup_table(rows), True), (timeline.table(), False)):
        lines = text.splitlines()[1 if titled else 0:]
        assert len(lines) >= 3 and len({len(line) for line in lines}) == 1, text
    assert timeline.table().splitlines()[2].split() == ["1", "3", "0.0000", "12.1500", "0.0000",
                                                        "0.0000", "1"]


def test_cuda_graphs_need_a_gpu(tmp_path):
    from trilib.bench.timing import cuda_graph

    with pytest.raises(SystemExit, match="--cuda-graphs: CUDA graphs exist only on a CUDA GPU"):
        bench.main(TINY + ["--device", "cpu", "--cuda-graphs", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        bench.run_mlp([2], [2], [1], device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        cuda_graph(lambda: None, "cpu")
    assert not list(tmp_path.iterdir())                   # refused before anything ran


def test_text_option_writes_the_report(tmp_path, capsys):
    result = bench.main(TINY + ["--suite", "mlp", "--methods", "sequential", "--no-step", "--text",
                                "--out", str(tmp_path), "--figures", "", "--device", "cpu"])
    text = (tmp_path / f"{result['machine']['stem']}.txt").read_text()
    assert text.startswith("machine: ") and "backward time / autograd time" in text
    assert text.strip() in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax (pip install trilib[bench])")
def test_jax_runs_where_torch_runs():
    import jax

    from trilib.bench.peers import jax_device

    assert jax_device("cpu").platform == "cpu"
    if any(d.platform == "gpu" for d in jax.devices()):
        assert jax_device("cuda").platform == "gpu"
    else:
        with pytest.raises(RuntimeError, match="JAX sees no GPU"):
            jax_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_every_direct_solve():
    """A captured direct solve, replayed after the right-hand side changed in place, gives the
    new system's solution (torch.linalg.solve_triangular on the dense matrix, float64)."""
    from conftest import dense_solution

    from trilib.bench.timing import cuda_graph

    net = trilib.nets.mlp([4] * 17, activation="tanh", seed=0, dtype=torch.float64, device="cuda")
    U = trilib.backward_system(net, torch.randn(3, 4, dtype=torch.float64, device="cuda"),
                               lambda o: o.square().sum())
    for method in trilib.methods(U, family="direct"):
        replay = cuda_graph(lambda method=method: trilib.solve(U, method=method), "cuda")
        assert rel(torch.cat(list(replay()), -1), dense_solution(U)) <= 1e-10, method
        for run in U.row_runs:
            run.rhs.mul_(-2.0)
        assert rel(torch.cat(list(replay()), -1), dense_solution(U)) <= 1e-10, method


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cli_cuda_graph_rows(tmp_path):
    result = bench.main(TINY + ["--suite", "mlp", "--no-step", "--device", "cuda", "--cuda-graphs",
                                "--out", str(tmp_path), "--figures", ""])
    graphed = [r for r in result["rows"] if r["method"].endswith(bench.CUDA_GRAPH)]
    direct = set(trilib.methods(trilib.BlockBidiagonalSystem, family="direct"))
    assert {r["method"].removesuffix(bench.CUDA_GRAPH) for r in graphed} == direct
    assert all(not r["note"] and r["rel_error"] < 1e-3 and r["median_s"] > 0 for r in graphed), graphed
