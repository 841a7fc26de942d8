"""The course as a reader meets it: every notebook is a chapter (Colab badge, a link to the theory
chapter, enough prose, exercises with hidden solutions), nothing machine-dependent is printed, and
every "§" reference in the library and the notebooks resolves to a heading of docs/theory.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THEORY = REPO / "docs" / "theory.md"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def cells(path: Path, kind: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def headings() -> set[int]:
    return {int(n) for n in re.findall(r"^#+ §(\d+)\b", THEORY.read_text(), flags=re.M)}


def cited(text: str) -> set[int]:
    """Section numbers cited as §n, §n-m or §n–m."""
    out = set()
    for a, b in re.findall(r"§(\d+)(?:\s*[-–]\s*§?(\d+))?", text):
        out |= set(range(int(a), int(b or a) + 1))
    return out


def test_theory_chapter_has_its_sections():
    assert headings() >= set(range(1, 10)), f"docs/theory.md headings: {sorted(headings())}"


def test_library_citations_resolve():
    missing = {}
    for path in (REPO / "trilib").rglob("*.py"):
        text = path.read_text()
        assert "THEORY" not in text and "STYLE.md" not in text and "../shared" not in text, path
        if bad := cited(text) - headings():
            missing[str(path.relative_to(REPO))] = sorted(bad)
        for m in re.finditer(r"§\d", text):
            assert "theory.md" in text[max(0, m.start() - 40):m.start()], \
                f"{path}: a § reference must name docs/theory.md"
    assert not missing, f"citations without a heading in docs/theory.md: {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_a_chapter(notebook):
    prose = "\n".join(cells(notebook, "markdown"))
    code = "\n".join(cells(notebook, "code"))
    assert "colab.research.google.com/assets/colab-badge.svg" in prose, "no Open in Colab badge"
    assert "../docs/theory.md" in prose, "no link to the theory chapter"
    assert re.search(r"^#+ .*Exercises", prose, flags=re.M), "no Exercises section"
    assert "<details>" in prose, "exercise solutions must be hidden in <details>"
    words = len(re.sub(r"\$\$.*?\$\$|\$[^$]*\$|<[^>]+>|\(http[^)]*\)", " ", prose, flags=re.S).split())
    assert words >= 450, f"{words} words of prose"
    assert not cited(prose) - headings(), f"§ references without a heading: {cited(prose) - headings()}"
    for text in (prose, code):
        assert "THEORY" not in text and "../shared" not in text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_prints_nothing_machine_dependent(notebook):
    nb = json.loads(notebook.read_text())
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        ignored = "".join(c["source"]).lstrip().startswith("# NBVAL_IGNORE_OUTPUT")
        for out in c.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            assert "bitwise" not in text.lower() and "bit for bit" not in text.lower(), text[:200]
            if not ignored:
                assert out.get("name") != "stderr" or "%|" in text, f"stderr output: {text[:200]}"
