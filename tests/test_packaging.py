"""Packaging and notebook hygiene: the install files agree with each other, and every notebook opens
in Colab (title, badge, guarded set-up cell with the one repository URL, an install that keeps the
runtime's torch), depends on no local path and is saved with outputs."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, the same parser (a declared test dependency there)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NB_IDS = [p.name for p in NOTEBOOKS]

CONDA_TO_PIP = {"pytorch": "torch", "pytorch-cpu": "torch"}  # conda names that differ from PyPI names
CONDA_ONLY = {"python", "pip", "cpuonly"}  # interpreter, installer, CPU variant selector


# The badge and the set-up cell are generated in one place, scripts/colab_header.py, from pyproject.
_spec = importlib.util.spec_from_file_location("colab_header", REPO / "scripts" / "colab_header.py")
colab_header = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab_header)


def repository_url() -> str:
    return PYPROJECT["project"]["urls"]["Repository"]


def pip_requirements() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + extras["lab"] + extras["test"]]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def conda_dependencies() -> tuple[dict[str, SpecifierSet], list]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    specs, pip_section = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section += dep.get("pip", [])
            continue
        name, spec = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", dep).groups()
        specs[name.lower()] = SpecifierSet(spec)
    return specs, pip_section


# --- install files ----------------------------------------------------------------------------


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    conda, _ = conda_dependencies()
    conda_names = {CONDA_TO_PIP.get(n, n) for n in conda} - CONDA_ONLY
    pip = pip_requirements()
    assert not set(pip) - conda_names, f"in pyproject.toml but not environment.yml: {set(pip) - conda_names}"
    assert not conda_names - set(pip), f"in environment.yml but not pyproject.toml: {conda_names - set(pip)}"


def test_environment_yml_uses_the_same_version_bounds_as_pyproject():
    conda, _ = conda_dependencies()
    pip = pip_requirements()
    for conda_name, spec in conda.items():
        name = CONDA_TO_PIP.get(conda_name, conda_name)
        if name in pip:
            assert spec == pip[name].specifier, (
                f"{conda_name}: environment.yml says {str(spec)!r}, pyproject.toml says "
                f"{str(pip[name].specifier)!r}")
    assert conda["python"] == SpecifierSet(PYPROJECT["project"]["requires-python"]), (
        f"python: environment.yml says {str(conda['python'])!r}, pyproject.toml requires-python says "
        f"{PYPROJECT['project']['requires-python']!r}")


def test_environment_yml_installs_trilib_itself_editable():
    _, pip_section = conda_dependencies()
    assert "-e ." in pip_section, f"environment.yml pip section should contain '-e .', got {pip_section}"


def test_constraints_pin_the_cpu_torch_wheel_inside_the_supported_range():
    pins = [Requirement(line) for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    torch_pins = [r for r in pins if r.name == "torch"]
    assert [str(r.specifier) for r in torch_pins] == ["==2.13.0"], f"constraints.txt torch pins: {torch_pins}"
    supported = pip_requirements()["torch"].specifier
    assert Version("2.13.0") in supported, f"pyproject's torch range {supported} excludes 2.13.0"


def test_makefile_installs_with_the_constraints():
    make = (REPO / "Makefile").read_text()
    installs = [line for line in make.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), (
        f"every pip install in the Makefile should use -c constraints.txt: {installs}")


def test_runtime_dependencies_state_lower_bounds_only():
    """Installing trilib into a runtime that already has newer packages (Colab's torch) must not
    downgrade them: pyproject states the oldest supported version, never an upper bound or a pin."""
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        ops = {spec.operator for spec in req.specifier}
        assert ops <= {">="}, f"{dep!r}: runtime dependencies take a lower bound only (>=), got {ops}"


# What a Colab runtime ships and must keep. Colab renders ipywidgets 7 only (its widget manager does
# not support 8, googlecolab/colabtools#4525), so requiring ipywidgets>=8 would break the sliders there.
COLAB_PREINSTALLED = {"ipywidgets": "7.7.1"}


def test_colab_preinstalled_versions_satisfy_pyproject():
    reqs = pip_requirements()
    for name, version in COLAB_PREINSTALLED.items():
        assert Version(version) in reqs[name].specifier, (
            f"pyproject's {name} requirement {reqs[name].specifier} would replace Colab's {name} {version}")


def test_pyproject_names_the_repository_url():
    url = repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), f"[project.urls] Repository: {url!r}"


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {REPO / 'notebooks'}"


# --- notebooks ----------------------------------------------------------------------------------


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _text_of_output(output) -> str:
    """The human-readable text of one output (images and widget state are left out)."""
    if output.output_type == "stream":
        return output.get("text", "")
    if output.output_type == "error":
        return "\n".join([output.ename, output.evalue, *output.traceback])
    data = output.get("data", {})
    return "\n".join(str(v) if isinstance(v, str) else json.dumps(v)
                     for k, v in data.items() if k.startswith("text/") or k.endswith("json"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_starts_with_a_title_and_one_line_on_what_it_shows(path):
    first = _read(path).cells[0]
    assert first.cell_type == "markdown", f"{path.name}: first cell is {first.cell_type}, not markdown"
    lines = [line for line in first.source.splitlines() if line.strip()]
    assert lines and re.match(r"# \S", lines[0]), f"{path.name}: first cell should open with '# Title'"
    assert len(lines) >= 2, f"{path.name}: first cell needs a line on what the notebook shows after the title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_title_cell_carries_its_colab_badge(path):
    first = _read(path).cells[0]
    lines = [line for line in first.source.splitlines() if line.strip()]
    expected = colab_header.badge(path.name)
    assert len(lines) >= 2 and lines[1] == expected, (
        f"{path.name}: the line after the title must be the Colab badge\n{expected}\n"
        f"(run `python scripts/colab_header.py {path.relative_to(REPO)}`)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_second_cell_is_the_colab_setup_cell(path):
    cells = _read(path).cells
    assert len(cells) >= 2, f"{path.name} has {len(cells)} cell(s)"
    second = cells[1]
    assert second.cell_type == "code", f"{path.name}: second cell is {second.cell_type}, not code"
    expected = colab_header.setup_cell()
    assert second.source.rstrip("\n") == expected, (
        f"{path.name}: second cell must be exactly\n{expected}\n--- but is ---\n{second.source}\n"
        f"(run `python scripts/colab_header.py {path.relative_to(REPO)}`)")
    assert not second.outputs, f"{path.name}: the Colab set-up cell printed something outside Colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_repository_url_appears_only_in_the_colab_header(path):
    url = repository_url()
    needle = url.split("://", 1)[1].lower()  # github.com/owner/name, with or without scheme or git+
    owner_name = needle.split("/", 1)[1]
    for i, cell in enumerate(_read(path).cells):
        texts = [cell.source] + [_text_of_output(o) for o in cell.get("outputs", [])]
        if i == 0:   # the badge links to colab.research.google.com/github/<owner/name>/...
            texts[0] = texts[0].replace(colab_header.badge(path.name), "")
        if i == 1:
            texts = texts[1:]
        assert not any(needle in t.lower() or f"github/{owner_name}" in t.lower() for t in texts), (
            f"{path.name}: cell {i} mentions {needle}; the repository URL lives only in the Colab header "
            f"(built by scripts/colab_header.py from pyproject.toml's [project.urls] Repository)")


def test_readme_colab_badge_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    expected = colab_header.badge("01_triangular_systems.ipynb")
    assert expected in readme, f"README.md should open the course in Colab with\n{expected}"


# --- the Colab set-up cell, run as Colab would run it ----------------------------------------------

_CELL_RUNNER = """
import json, subprocess, sys, types
source, extra, log = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
calls, real_run = [], subprocess.run

def run(argv, *args, **kwargs):          # record what the cell asks pip to do, then do it
    calls.append(list(argv))
    return real_run(list(argv) + extra, *args, **kwargs)

subprocess.run = run
sys.modules["google.colab"] = types.ModuleType("google.colab")   # what Colab has imported
exec(compile(open(source).read(), "colab-set-up-cell", "exec"), {"__name__": "__main__"})
open(log, "w").write(json.dumps(calls))
"""


def _run_setup_cell(tmp_path: Path, source_tree: Path, extra: list[str], tag: str) -> list[list[str]]:
    """Run the set-up cell in a fresh interpreter that believes it is in Colab, with
    TRILIB_INSTALL_URL pointing at ``source_tree``; pip gets ``extra`` appended. Returns the
    commands the cell ran."""
    cell, runner, log = tmp_path / f"cell_{tag}.py", tmp_path / "runner.py", tmp_path / f"calls_{tag}.json"
    cell.write_text(colab_header.setup_cell())
    runner.write_text(_CELL_RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(TRILIB_INSTALL_URL=str(source_tree), PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    done = subprocess.run([sys.executable, str(runner), str(cell), json.dumps(extra), str(log)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the set-up cell failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(log.read_text())


def test_colab_setup_cell_installs_trilib_and_leaves_torch_alone(tmp_path):
    """Run the set-up cell as Colab would (``google.colab`` imported), installing from a copy of this
    checkout instead of GitHub, with no network (``--no-index``).

    1. pip's resolver, on the cell's exact command plus ``--dry-run --report``, must plan to install
       trilib and nothing else: the torch (and every other package) already installed here satisfies
       trilib's requirements, so a Colab runtime keeps its own. A pin or an upgrade of torch would
       need a package from the index and fail here, or show up in the plan.
    2. The same command plus ``--no-deps --target DIR`` must install a trilib that imports from DIR.
    """
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "trilib", source / "trilib", ignore=shutil.ignore_patterns("__pycache__"))
    offline = ["--no-index", "--no-build-isolation"]

    report = tmp_path / "report.json"
    calls = _run_setup_cell(tmp_path, source, offline + ["--dry-run", "--report", str(report)], "plan")
    assert len(calls) == 1, f"the set-up cell should run pip once, ran {calls}"
    argv = calls[0]
    assert argv[:4] == [sys.executable, "-m", "pip", "install"], f"not a pip install: {argv}"
    assert str(source) in argv, f"the cell ignored TRILIB_INSTALL_URL: {argv}"
    forbidden = {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed", "--upgrade-strategy"}
    assert not forbidden & set(argv), f"the cell must not upgrade or reinstall packages: {argv}"
    assert not [a for a in argv if "torch" in a.lower()], f"the cell must not name torch: {argv}"
    planned = [(item["metadata"]["name"], item["metadata"]["version"])
               for item in json.loads(report.read_text())["install"]]
    assert planned == [("trilib", PYPROJECT["project"]["version"])], (
        f"installing trilib would also install or replace {planned}; expected trilib alone")

    target = tmp_path / "site"
    _run_setup_cell(tmp_path, source, offline + ["--no-deps", "--target", str(target)], "install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    probe = subprocess.run([sys.executable, "-c", "import trilib, torch; print(trilib.__file__); "
                            "print(trilib.__version__); print(torch.__version__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    where, version, torch_version = probe.stdout.split()
    assert Path(where).is_relative_to(target), f"trilib imported from {where}, not the installed copy"
    assert version == PYPROJECT["project"]["version"]
    import torch
    assert torch_version == torch.__version__, "installing trilib changed the torch that imports"


# Absolute paths on a developer's machine: /work/..., /home/..., /tmp/..., C:\...
LOCAL_PATH = re.compile(r"(?<![\w.:/~-])(/(work|home|tmp|root|Users|mnt|opt|var|usr|srv|data)/"
                        r"|~/|[A-Za-z]:\\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_depends_on_no_local_path(path):
    for i, cell in enumerate(_read(path).cells):
        for where, text in [("source", cell.source)] + [
                (f"output {j}", _text_of_output(o)) for j, o in enumerate(cell.get("outputs", []))]:
            m = LOCAL_PATH.search(text)
            assert m is None, (f"{path.name}: cell {i} {where} has a local absolute path near "
                               f"{text[max(0, m.start() - 40):m.end() + 40]!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_is_saved_with_outputs_from_one_clean_run(path):
    code = [c for c in _read(path).cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, (f"{path.name}: code cells without an execution count (not run): "
                                f"{[i for i, n in enumerate(counts) if n is None]}; run `make notebooks`")
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(counts)}: re-run it top to bottom in a "
        f"fresh kernel (`make notebooks`)")
    errors = [(counts[i], o.ename) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: saved with error outputs (execution count, error): {errors}"
