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


def _title(notebook: Path) -> str:
    first = json.loads(notebook.read_text())["cells"][0]
    assert first["cell_type"] == "markdown", f"{notebook.name}: the first cell must be the title (markdown)"
    return "".join(first["source"]).splitlines()[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_title_style_and_summary(notebook):
    """One title style, ``# NN · Title`` with the file's number, and a ``## Summary`` section."""
    title = _title(notebook)
    number = notebook.name[:2]
    assert re.fullmatch(rf"# {number} · \S.*", title), \
        f"{notebook.name}: title {title!r} should read '# {number} · Title'"
    prose = "\n".join(cells(notebook, "markdown"))
    assert re.search(r"^## Summary\s*$", prose, flags=re.M), f"{notebook.name}: no '## Summary' section"


# A printed check states the magnitude it tested ("largest difference 2.2e-16", "< 1e-12"), never a
# bare verdict: a line that ends in True or False after a colon, an equals sign or nothing at all.
BARE_VERDICT = re.compile(r"(^|[:=]\s*)(True|False)\s*$")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_printed_checks_show_magnitudes(notebook):
    bare = []
    for i, c in enumerate(json.loads(notebook.read_text())["cells"]):
        if c["cell_type"] != "code":
            continue
        for out in c.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            bare += [f"cell {i}: {line.strip()}" for line in text.splitlines() if BARE_VERDICT.search(line)]
    assert not bare, f"{notebook.name}: checks print a bare True/False, not the magnitude tested: {bare[:5]}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_theory_links_resolve():
    """Every ``theory.md#anchor`` link in the notebooks and the README names a heading's GitHub slug
    or an explicit ``<a id=...>`` of docs/theory.md (JupyterLab needs the explicit id to scroll)."""
    text = THEORY.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    anchors |= set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))
    sources = {p.name: "\n".join(cells(p, "markdown")) for p in NOTEBOOKS}
    sources["README.md"] = (REPO / "README.md").read_text()
    missing = {name: sorted(set(re.findall(r"theory\.md#([\w\-]+)", src)) - anchors)
               for name, src in sources.items()}
    missing = {name: bad for name, bad in missing.items() if bad}
    assert not missing, f"theory.md anchors that do not exist: {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_printed_lines_fit_the_page(notebook):
    """Printed tables and messages fit a 1,070 px notebook column (about 125 monospace characters of
    JupyterLab's output font) without wrapping mid-word: no printed line is longer than 120."""
    long = []
    for i, c in enumerate(json.loads(notebook.read_text())["cells"]):
        for out in c.get("outputs", []) if c["cell_type"] == "code" else []:
            if out.get("output_type") == "stream":
                long += [f"cell {i}: {len(line)} chars" for line in "".join(out["text"]).splitlines()
                         if len(line) > 120]
    assert not long, f"{notebook.name}: printed lines wider than the page: {long[:5]}"
