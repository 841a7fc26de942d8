"""Re-execute notebooks in a fresh kernel (cwd = the notebook's folder) and save them with outputs.

Before executing, the Colab header (badge and set-up cell, scripts/colab_header.py) is brought up to
date from pyproject.toml.

Usage: python scripts/run_notebooks.py [NOTEBOOK.ipynb ...]   (default: notebooks/*.ipynb)
"""

import sys
import time
from pathlib import Path

import colab_header  # scripts/ is on sys.path when this file runs as a script
import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def run(path: Path, timeout: int = 600) -> float:
    """Execute ``path`` top to bottom in a new python3 kernel, write it back, return seconds taken."""
    nb = nbformat.read(path, as_version=4)
    colab_header.apply(nb, path.name)
    # Name the kernel so JupyterLab and Colab open the notebook without asking for one.
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                          "language": "python"})
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((REPO / "notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path}: executing ...", flush=True)
        print(f"{path}: saved with outputs ({run(path.resolve()):.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
