"""trilib.viz.compare: spy plots side by side, and benchmark results as speed-ups over autograd.

Oracles: the systems' own dense matrices (``to_dense``) for the spy plots, and speed-ups
recomputed here from the medians (autograd time / method time) for plots, tables and reports.
"""

import matplotlib
import pytest
import torch

import trilib
from trilib import bench
from trilib.viz.compare import (
    SPEEDUP,
    crossover_report,
    groups,
    method_colors,
    plot_speedups,
    speedup_table,
    speedups,
    spy_side_by_side,
)

matplotlib.use("Agg")
DT = torch.float64


def _systems():
    x = torch.randn(2, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    loss = lambda out: out.square().sum()
    mlp = trilib.backward_system(trilib.nets.mlp([3, 3, 3, 3], seed=0, dtype=DT), x, loss)
    res = trilib.backward_system(trilib.graph.resnet_mlp(3, 2, seed=0, dtype=DT), x, loss)
    return mlp, res


def test_spy_side_by_side_draws_each_pattern():
    systems = _systems()
    fig = spy_side_by_side(systems, ["MLP", "ResNet"])
    assert [ax.get_title() for ax in fig.axes] == ["MLP", "ResNet"]
    for ax, system in zip(fig.axes, systems):
        drawn = (ax.images[0].get_array()[..., :3] != 1).any(-1)    # coloured = non-zero
        assert (drawn == (system.to_dense(0) != 0).numpy()).all()
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("systems, titles, match", [([], None, "systems"), (None, ["one"], "titles")])
def test_spy_side_by_side_errors(systems, titles, match):
    with pytest.raises(ValueError, match=match):
        spy_side_by_side(_systems() if systems is None else systems, titles)


def test_method_colors_distinct_and_stable():
    names = ["autograd", *trilib.methods(), bench.SCAN]
    colours = method_colors(names)
    assert len(set(colours.values())) == len(colours) == len(set(names))
    assert colours["autograd"] == "black"
    assert method_colors(["nested"])["nested"] == colours["nested"]    # same colour in every plot
    with pytest.raises(ValueError, match="methods"):
        method_colors([f"m{i}" for i in range(30)])


def _result():
    # two sizes, three methods; autograd 2 s and 8 s; speed-ups 0.5/2.0 and 4.0/0.25
    pts = [(4, "autograd", 2.0), (4, "parallel_cyclic_reduction", 4.0), (4, "jacobi", 0.5),
           (64, "autograd", 8.0), (64, "parallel_cyclic_reduction", 4.0), (64, "jacobi", 32.0)]
    rows = [dict(suite="mlp", sweep="k", metric="backward", k=k, n=4, batch=2, tau=0, method=m,
                 median_s=t) for k, m, t in pts]
    return {"machine": {"name": "test", "device": "cpu", "threads": 1, "torch": torch.__version__},
            "rows": rows, "crossover": {"mlp_k": bench.crossover(rows)}}


def test_plot_speedups_values_and_colours():
    result = _result()
    fig = plot_speedups(result)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines["parallel_cyclic_reduction"].get_ydata()) == [0.5, 2.0]
    assert list(lines["jacobi"].get_ydata()) == [4.0, 0.25]
    assert lines["parallel_cyclic_reduction"].get_color() != lines["jacobi"].get_color()
    assert "speed-up over autograd" in ax.get_ylabel()
    matplotlib.pyplot.close(fig)


def test_speedup_table_full_names_and_values():
    text = speedup_table(_result())
    assert text.splitlines()[0] == f"backward {SPEEDUP}, by k"
    row = next(line for line in text.splitlines() if line.startswith("parallel_cyclic_reduction "))
    assert row.split()[1:] == ["0.50", "2.00"]
    assert "8000.000" in text                      # autograd's own time, in ms


def test_crossover_report_cases():
    result = _result()
    text = crossover_report(result, "mlp_k")
    assert "k=4: parallel_cyclic_reduction 0.50" in text and "k=64: parallel_cyclic_reduction 2.00" in text
    assert "rests on that one point" in text       # the crossover is the largest k measured
    result["crossover"]["mlp_k"]["best_ratio"] = {4: ("blelloch", 2.0), 64: ("blelloch", 1.5)}
    result["crossover"]["mlp_k"]["crossover"] = None
    assert "none up to the largest k measured (64)" in crossover_report(result, "mlp_k")
    result["crossover"]["mlp_k"]["crossover"] = 4
    assert "faster at every larger k measured (up to 64)" in crossover_report(result, "mlp_k")


def test_speedups_per_method_and_metric():
    result = _result()
    assert bench.crossover(result["rows"])["crossover"] == 64
    assert speedups(result) == {"autograd": {4: 1.0, 64: 1.0}, "parallel_cyclic_reduction": {4: 0.5, 64: 2.0},
                                "jacobi": {4: 4.0, 64: 0.25}}
    assert speedups(result, metric="step") == {}


def test_a_sweep_at_two_widths_is_two_series_never_mixed():
    # the same depths at n = 4 and n = 8: autograd 2 s / 8 s at n = 4, 1 s / 1 s at n = 8
    result = _result()
    result["rows"] += [dict(r, n=8, median_s=1.0) for r in _result()["rows"]]
    assert groups(result) == [{"n": 4, "batch": 2}, {"n": 8, "batch": 2}]
    with pytest.raises(ValueError, match=r"several fixed sizes .*fixed=\{'n': 4, 'batch': 2\}"):
        speedups(result)
    assert speedups(result, fixed={"n": 4})["parallel_cyclic_reduction"] == {4: 0.5, 64: 2.0}
    assert speedups(result, fixed={"n": 8})["parallel_cyclic_reduction"] == {4: 1.0, 64: 1.0}
    assert speedup_table(result, fixed={"n": 8}).splitlines()[0].endswith("by k (n=8)")
    fig = plot_speedups(result)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:2] == ["MLP, n=4, batch=2", "MLP, n=8, batch=2"]
    matplotlib.pyplot.close(fig)


def test_solve_speedups_are_against_autograds_backward():
    result = _result()
    result["rows"] += [dict(r, metric="solve", median_s=1.0) for r in result["rows"]
                       if r["method"] != "autograd"]
    assert speedups(result, metric="solve")["parallel_cyclic_reduction"] == {4: 2.0, 64: 8.0}
    assert "8000.000" in speedup_table(result, metric="solve")
