"""The Colab header of every notebook, generated in one place from pyproject.toml.

Every notebook opens with an "Open in Colab" badge (in its first, title cell, right after the
title) and has the Colab set-up cell as its second cell. Both are built here from
``[project.urls] Repository`` in pyproject.toml, so the repository URL is written down once.

Usage:
    python scripts/colab_header.py [--check] [NOTEBOOK.ipynb ...]   (default: notebooks/*.ipynb)

Without ``--check`` the badge and the set-up cell are written into each notebook (only those two
parts change, so no re-execution is needed); with ``--check`` nothing is written and the exit
status says whether every notebook is current. ``scripts/run_notebooks.py`` applies the header
before it executes a notebook.

The set-up cell installs trilib with pip only when ``google.colab`` is imported (i.e. in Colab).
It passes no version pins and no ``--upgrade``: pip then keeps every package the runtime already
has that satisfies trilib's lower bounds, the runtime's torch included. The environment variable
``TRILIB_INSTALL_URL`` overrides what is installed (tests point it at a local copy).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, the same parser (a declared test dependency there)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\(.*\)\]\(.*\)\s*$")
URL_VARIABLE = "TRILIB_INSTALL_URL"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def repository_url() -> str:
    """``[project.urls] Repository``, e.g. ``https://github.com/owner/name``."""
    return pyproject()["project"]["urls"]["Repository"]


def torch_requirement() -> str:
    """trilib's torch requirement as written in pyproject.toml, e.g. ``torch>=2.4``."""
    deps = pyproject()["project"]["dependencies"]
    return next(d for d in deps if re.match(r"torch\b", d)).replace(" ", "")


def install_url() -> str:
    """What the set-up cell passes to pip by default: ``git+<repository URL>``."""
    return f"git+{repository_url()}"


def setup_cell() -> str:
    """The source of the Colab set-up cell (the second cell of every notebook)."""
    return (
        "# Colab set-up: installs trilib when this notebook runs in Google Colab, does nothing elsewhere.\n"
        f"# pip keeps the runtime's own torch (trilib asks only for {torch_requirement()}).\n"
        "import os\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        f'    url = os.environ.get("{URL_VARIABLE}", "{install_url()}")\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", url], check=True)'
    )


def badge(notebook: str) -> str:
    """The markdown "Open in Colab" badge of ``notebook`` (a file name in notebooks/)."""
    owner_name = repository_url().split("github.com/", 1)[1].strip("/")
    target = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({target})"


def with_badge(title_source: str, notebook: str) -> str:
    """The title cell's source with the badge as its only badge line, right after the title."""
    lines = [line for line in title_source.splitlines() if not BADGE_LINE.match(line)]
    rest = lines[1:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    return "\n".join([lines[0], "", badge(notebook), "", *rest]).rstrip() + "\n"


def apply(nb: nbformat.NotebookNode, notebook: str) -> bool:
    """Write the badge and the set-up cell into ``nb``; returns True when something changed."""
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise ValueError(f"{notebook}: the first cell must be the markdown title cell")
    changed = False
    title = with_badge(nb.cells[0].source, notebook).rstrip("\n")
    if nb.cells[0].source.rstrip("\n") != title:
        nb.cells[0].source = title
        changed = True
    source = setup_cell()
    second = nb.cells[1] if len(nb.cells) > 1 else None
    is_setup = second is not None and second.cell_type == "code" and "# Colab set-up" in second.source
    if is_setup:
        if second.source.rstrip("\n") != source:
            second.source = source
            changed = True
    else:
        nb.cells.insert(1, nbformat.v4.new_code_cell(source))
        changed = True
    return changed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not current")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    stale = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if apply(nb, path.name):
            stale.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "not current" if args.check else "updated"
    for path in stale:
        print(f"{path}: Colab header {verb}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
