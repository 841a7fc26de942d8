"""The real-model benchmark (python -m trilib.bench --suite models) at a tiny size: one
subprocess per method, times and peak memory against autograd, gradients checked."""

from trilib.bench.models import models_table, run_models


def test_run_models_tiny():
    rows = run_models(vocab=5, width=4, layers=1, tokens=3, batch=2, repeats=1,
                      methods=["level_schedule", "no_such_method"])
    assert [r["method"] for r in rows] == ["autograd", "level_schedule", "no_such_method"]
    for r in rows[:2]:
        assert r["note"] == "" and r["seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["rel_error"] <= 1e-10                         # against autograd, float64
    assert rows[0]["ratio"] == 1.0 and rows[0]["rss_ratio"] == 1.0
    bad = rows[2]                                             # a failing method is noted, not raised
    assert bad["seconds"] is None and bad["ratio"] is None and "no_such_method" in bad["note"]
    table = models_table(rows)
    assert "level_schedule" in table and "x autograd" in table
