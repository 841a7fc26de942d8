"""The library's layering (see trilib/__init__.py): no import cycle, solvers and model builders
never import each other, and no module grows past 400 lines.

Imports are read from the source (every ``import`` statement, inside functions too), so a lazy
import that closes a cycle is found as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trilib"
BUILDERS = ("trilib.fnn", "trilib.rnn", "trilib.gated", "trilib.graph")
FOUNDATION = ("trilib._checks", "trilib._features", "trilib._numerics", "trilib._autograd", "trilib.trace")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The trilib modules ``name`` imports explicitly (``from pkg import sub`` names the
    submodule; ``from pkg import attr`` names the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "trilib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "trilib":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found |= set(subs) if len(subs) == len(node.names) else set(subs) | {target}
    return {m for m in found if m in MODULES and m != name}


GRAPH = nx.DiGraph([(m, t) for m in MODULES for t in imports(m)])
GRAPH.add_nodes_from(MODULES)


def test_the_import_reader_sees_lazy_and_relative_imports():
    # api imports the builders at the top; bench's suites import training lazily, inside a function
    assert {"trilib.fnn", "trilib.rnn", "trilib.graph"} <= imports("trilib.api")
    assert "trilib.training" in imports("trilib.bench.suites")
    assert "trilib.solvers._registry" in imports("trilib.solvers.jacobi")


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(GRAPH))
    assert not cycles, f"import cycles inside trilib: {cycles}"


@pytest.mark.parametrize("solver", sorted(m for m in MODULES if m.startswith("trilib.solvers")))
def test_solvers_import_only_systems_and_the_foundation(solver):
    allowed = ("trilib.solvers", "trilib.systems", *FOUNDATION)
    bad = [m for m in imports(solver) if not m.startswith(allowed)]
    assert not bad, f"{solver} imports {bad}: solvers may depend on trilib.systems only"


@pytest.mark.parametrize("builder", sorted(m for m in MODULES if m.startswith(BUILDERS)))
def test_builders_import_only_systems_and_the_foundation(builder):
    own = builder if builder in BUILDERS else builder.rpartition(".")[0]
    allowed = (own, "trilib.systems", *FOUNDATION)
    bad = [m for m in imports(builder) if not m.startswith(allowed)]
    assert not bad, f"{builder} imports {bad}: builders may depend on trilib.systems only"


@pytest.mark.parametrize("system", sorted(m for m in MODULES if m.startswith("trilib.systems")))
def test_systems_import_only_the_foundation(system):
    bad = [m for m in imports(system) if not m.startswith(("trilib.systems", *FOUNDATION))]
    assert not bad, f"{system} imports {bad}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_method_families_are_registry_metadata():
    import trilib

    bidiagonal = trilib.BlockBidiagonalSystem
    assert trilib.methods(bidiagonal, family="direct") == (
        "recursive_doubling", "blelloch", "cyclic_reduction", "parallel_cyclic_reduction")
    assert trilib.methods(bidiagonal, family="iterative") == ("jacobi", "block_jacobi", "gauss_seidel",
                                                              "newton")
    assert trilib.methods(trilib.RNNSystem, family="rnn") == ("sequential", "wavefront", "nested")
    assert trilib.methods(trilib.GraphSystem, family="matrix-free") == ("sequential", "jacobi")
    assert set(trilib.methods(family="direct")) == {*trilib.methods(bidiagonal, family="direct"),
                                                    "doubling", "nested"}
    with pytest.raises(ValueError, match="unknown family 'fast'"):
        trilib.methods(family="fast")


def test_no_test_helper_is_written_twice():
    """A helper shared by test files lives in tests/conftest.py: no two test files define a
    function with the same body (the same AST, whatever its name)."""
    seen: dict[str, str] = {}
    twice = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_"):
                body = ast.dump(ast.Module(body=node.body, type_ignores=[]))
                if body in seen and seen[body] != path.name:
                    twice.append(f"{node.name} in {path.name} and {seen[body]}")
                seen.setdefault(body, path.name)
    assert not twice, f"move these helpers to tests/conftest.py: {twice}"


def test_no_test_helper_name_is_defined_twice():
    """Nor does a helper's name appear in two test files (``loss_fn``, ``make``, ``flat`` were
    once written in several, each slightly different): shared ones live in tests/conftest.py,
    the others get a name that says what they do."""
    where: dict[str, list[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_"):
                where.setdefault(node.name, []).append(path.name)
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert not twice, f"move these helpers to tests/conftest.py or rename them: {twice}"
