"""scripts/gpu_check.sh, the one command for a lent GPU, in its dry mode (--device cpu, tiny
sizes): it must write the files a GPU run writes, never into benchmarks/, and refuse clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_script(*args, python=sys.executable, timeout=420):
    env = {**os.environ, "PYTHON": str(python)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_dry_mode_writes_what_a_gpu_run_writes(tmp_path):
    before = sorted((ROOT / "benchmarks").rglob("*"))
    proc = run_script("--device", "cpu", "--out", str(tmp_path / "res"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    summary = next(name for name in files if name.endswith("-check.txt"))
    stem = summary.removesuffix("-check.txt")
    assert stem.startswith("cpu-")
    for suffix in (".json", ".csv", ".txt", "-deep.json", "-deep.csv", "-deep.txt"):
        assert f"{stem}{suffix}" in files
    assert {"bench_cpu.png", "bench_cpu_deep.png"} <= set(files)
    deep = json.loads((tmp_path / "res" / f"{stem}-deep.json").read_text())
    sizes = {(r["k"], r["n"], r["batch"]) for r in deep["rows"]}
    assert sizes == {(4, 4, 2), (4, 6, 2), (8, 4, 2), (8, 6, 2)}
    default = json.loads((tmp_path / "res" / f"{stem}.json").read_text())
    assert {r["tau"] for r in default["rows"] if r["suite"] == "rnn"} == {8, 16}
    # one method list for both suites: each method is timed where it applies, no "not available"
    assert {r["method"] for r in default["rows"] if r["suite"] == "rnn"} >= {"wavefront", "nested"}
    assert not any(r["method"] in ("wavefront", "nested") for r in default["rows"] if r["suite"] == "mlp")
    assert not any("not available" in r["note"] for r in default["rows"] + deep["rows"])
    text = (tmp_path / "res" / summary).read_text()
    assert "bench, deep MLPs: ok" in text and "bench, default sizes and RNNs: ok" in text
    assert "best direct solve" in text and "FAILED" not in text
    assert sorted((ROOT / "benchmarks").rglob("*")) == before             # benchmarks/ untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_refuses_cuda_without_a_gpu(tmp_path):
    proc = run_script("--device", "cuda", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 1 and "sees no CUDA GPU" in proc.stderr and "--device cpu" in proc.stderr


def test_bad_arguments_and_no_torch(tmp_path):
    proc = run_script("--device", "tpu", timeout=60)
    assert proc.returncode == 2 and "--device must be cuda or cpu, got 'tpu'" in proc.stderr
    proc = run_script("--fast", timeout=60)
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr
    fake = tmp_path / "python"                       # a python that cannot import torch
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    proc = run_script("--device", "cpu", "--out", str(tmp_path / "res"), python=fake, timeout=60)
    assert proc.returncode == 1 and "cannot import torch" in proc.stderr


def test_figures_skip_an_unrecorded_gpu_unless_named(tmp_path, monkeypatch, capsys):
    from trilib import figures

    monkeypatch.chdir(tmp_path)                        # no benchmarks/results here
    monkeypatch.setattr(figures, "FIGURES", {"bench_cuda": figures.bench_cuda})
    figures.main(["--out", str(tmp_path)])
    assert "skipped bench_cuda: no recorded cuda results" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no recorded cuda results"):
        figures.main(["bench_cuda", "--out", str(tmp_path)])


def test_the_script_selects_every_cuda_test():
    """gpu_check.sh runs `pytest -k cuda` over the test files that mention CUDA: every test that
    is marked cuda or skipped without a GPU must have "cuda" in its name to be selected."""
    import ast

    missed = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = " ".join(ast.get_source_segment(source, d) for d in node.decorator_list)
                if "cuda" in marks.lower() and "cuda" not in node.name.lower():
                    missed.append(f"{path.name}::{node.name}")
    assert not missed, f"name these tests ...cuda... so scripts/gpu_check.sh runs them: {missed}"
