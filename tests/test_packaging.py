"""Packaging and notebook hygiene: the install files agree with each other, and every notebook opens
in Colab (title, guarded set-up cell with the one repository URL), depends on no local path and is
saved with outputs."""

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NB_IDS = [p.name for p in NOTEBOOKS]

CONDA_TO_PIP = {"pytorch": "torch", "pytorch-cpu": "torch"}  # conda names that differ from PyPI names
CONDA_ONLY = {"python", "pip", "cpuonly"}  # interpreter, installer, CPU variant selector


def colab_cell(url: str) -> str:
    """The canonical second cell of every notebook, for repository ``url``."""
    return (
        "# Colab set-up: installs trilib when this notebook runs in Google Colab, does nothing elsewhere.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+{url}"], check=True)'
    )


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
    assert Version("2.14.0") not in supported, f"pyproject's torch range {supported} admits 2.14"


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
def test_notebook_second_cell_is_the_colab_setup_cell(path):
    cells = _read(path).cells
    assert len(cells) >= 2, f"{path.name} has {len(cells)} cell(s)"
    second = cells[1]
    assert second.cell_type == "code", f"{path.name}: second cell is {second.cell_type}, not code"
    expected = colab_cell(repository_url())
    assert second.source.rstrip("\n") == expected, (
        f"{path.name}: second cell must be exactly\n{expected}\n--- but is ---\n{second.source}")
    assert not second.outputs, f"{path.name}: the Colab set-up cell printed something outside Colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_repository_url_appears_only_in_the_colab_cell(path):
    url = repository_url()
    needle = url.split("://", 1)[1].lower()  # github.com/owner/name, with or without scheme or git+
    for i, cell in enumerate(_read(path).cells):
        texts = [cell.source] + [_text_of_output(o) for o in cell.get("outputs", [])]
        if i == 1:
            texts = texts[1:]
        assert not any(needle in t.lower() for t in texts), (
            f"{path.name}: cell {i} mentions {needle}; the repository URL lives only in the Colab set-up "
            f"cell (built from pyproject.toml's [project.urls] Repository)")


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
