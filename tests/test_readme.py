"""The README's API example runs as written and says what it claims."""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    net, trace = scope["net"], scope["trace"]
    k = sum(1 for m in net if type(m).__name__ == "Linear")
    assert (trace.steps, trace.work) == (k, k - 1)       # "k steps, k - 1 block products"
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == scope["grads"][name].shape


def test_readme_shows_both_commands_and_every_notebook_once():
    """The notebook map has exactly one row per notebook, in the course's order: a missing,
    duplicated or unknown row fails."""
    text = README.read_text()
    assert "make lab" in text and "make test" in text
    rows = re.findall(r"^\| \[[^\]]*\]\(notebooks/([^)]+\.ipynb)\) \|", text, re.M)
    notebooks = sorted(nb.name for nb in (README.parent / "notebooks").glob("*.ipynb"))
    assert rows == notebooks, f"README's notebook map rows {rows} != the notebooks {notebooks}"
