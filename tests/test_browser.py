"""Browser tests: every notebook runs in JupyterLab, in headless Chromium, the way a reader runs it.

For each ``notebooks/*.ipynb``: open it in JupyterLab, clear the outputs, Kernel > Restart Kernel and
Run All Cells, wait until every code cell has run, assert that no cell shows an error, then move every
ipywidgets slider (keyboard) and dropdown (next option) on the page and assert that the output it
drives is redrawn differently within ``UPDATE_LIMIT_S`` (2 s; ``TRILIB_WIDGET_LIMIT_S`` overrides it),
is never blanked meanwhile, shows at most one figure per output area and no error. Separately, the
notebooks' links to sections of docs/theory.md are clicked: JupyterLab must open the chapter
scrolled to that section's heading.

Skipped (with the reason) only when /usr/bin/chromium is absent; ``TRILIB_REQUIRE_BROWSER=1`` (set by
``.ci/run``) turns that skip into a failure. The JupyterLab server runs with throw-away config, data,
runtime, settings and workspace folders, autosave off and checkpoints outside the repository; every
notebook file is checked to be byte-for-byte unchanged afterwards (the test never writes it).
"""

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_ALL_TIMEOUT_S = 240  # one notebook, restart + run all, on 2 busy cores
SLIDER_TIMEOUT_S = 60  # one slider move until its output has been redrawn (a hard failure beyond it)
# The course's promise: a widget's output is redrawn within this many seconds of a move (issue 22).
UPDATE_LIMIT_S = float(os.environ.get("TRILIB_WIDGET_LIMIT_S", "2"))

pytestmark = pytest.mark.browser


def _require_chromium():
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} not found: the browser tests need Debian's chromium (.ci/run installs it)"
    if os.environ.get("TRILIB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TRILIB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path, config_dir: Path):
    """User settings for the throw-away JupyterLab: no autosave, every cell in the DOM, no news."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = settings_dir / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    (config_dir / "labconfig").mkdir(parents=True, exist_ok=True)
    (config_dir / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A headless JupyterLab serving the repository; yields (base_url, token)."""
    _require_chromium()
    tmp = tmp_path_factory.mktemp("jupyterlab")
    dirs = {name: tmp / name for name in ("config", "data", "runtime", "settings", "workspaces",
                                          "checkpoints", "ipython", "mpl")}
    for d in dirs.values():
        d.mkdir()
    _write_lab_settings(dirs["settings"], dirs["config"])
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
               JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), IPYTHONDIR=str(dirs["ipython"]),
               MPLCONFIGDIR=str(dirs["mpl"]), JUPYTER_PLATFORM_DIRS="1")
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={REPO}",
           "--LabApp.expose_app_in_browser=True",
           # checkpoints go to the temporary folder, never into notebooks/.ipynb_checkpoints
           f"--FileCheckpoints.checkpoint_dir={dirs['checkpoints']}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = tmp / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(f"{base}/api/status?token={token}") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        _shutdown(proc, base, token)


def _shutdown(proc: subprocess.Popen, base: str, token: str):
    """Ask the server to shut down (it stops its kernels), then end its process group by its PID."""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the server's own session: anything it left behind goes too
        except ProcessLookupError:
            break
        time.sleep(1)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# --- JavaScript run in the page (window.jupyterapp is exposed by --LabApp.expose_app_in_browser) ---

JS_NOTEBOOK_STATE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.sessionContext) return null;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const cells = [];
    for (const cell of panel.content.widgets) {
        const m = cell.model;
        if (m.type !== 'code') continue;
        const outputs = [];
        for (let i = 0; i < m.outputs.length; i++) outputs.push(m.outputs.get(i).toJSON());
        cells.push({source: m.sharedModel.getSource(), count: m.executionCount,
                    errors: outputs.filter(o => o.output_type === 'error')
                                   .map(o => o.ename + ': ' + o.evalue)});
    }
    const pending = Array.from(panel.node.querySelectorAll('.jp-InputPrompt'))
        .filter(e => e.innerText.includes('*')).length;  // cells shown as [*]: queued or running
    return {kernel: kernel ? kernel.status : null, cells: cells, pending: pending,
            dialogs: document.querySelectorAll('.jp-Dialog').length,
            // JupyterLab renders error outputs (also those inside widget Output areas, which are not
            // in the cell model) as stderr text holding the traceback.
            domErrors: Array.from(document.querySelectorAll(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"],' +
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
                .map(e => e.innerText).filter(t => t.includes('Traceback'))
                .map(t => t.split('\\n').filter(l => /[^-\\s]/.test(l)).slice(0, 3).join(' | '))};
}"""

# What a slider drives: the widget Output areas (text, images) of its interact box, or of its cell.
JS_SLIDER_OUTPUT = """(handle) => {
    const scope = handle.closest('.widget-interact') || handle.closest('.jp-Cell');
    const parts = [];
    for (const out of scope.querySelectorAll('.widget-output')) {
        parts.push(out.innerText);
        for (const img of out.querySelectorAll('img')) parts.push(img.src);
        for (const svg of out.querySelectorAll('svg')) parts.push(svg.outerHTML);
    }
    return parts.join('\\n');
}"""

JS_SLIDER_VALUE = """(handle) => {
    const slider = handle.closest('.widget-slider');
    const readout = slider && slider.querySelector('.widget-readout');
    return {now: handle.getAttribute('aria-valuenow'), min: handle.getAttribute('aria-valuemin'),
            max: handle.getAttribute('aria-valuemax'), readout: readout ? readout.innerText : null};
}"""


# How many figures (images) each widget Output area of a control's interact box (or cell) shows.
JS_FIGURES_PER_OUTPUT = """(el) => {
    const scope = el.closest('.widget-interact') || el.closest('.jp-Cell');
    return Array.from(scope.querySelectorAll('.widget-output'))
        .filter(out => !out.parentElement.closest('.widget-output'))
        .map(out => out.querySelectorAll('img, svg.main-svg').length);
}"""


def _controls(page) -> list:
    """Every ipywidgets slider handle and dropdown on the page, as (kind, locator) in page order."""
    sliders = page.locator(".widget-slider .noUi-handle")
    dropdowns = page.locator(".widget-dropdown select")
    found = [("slider", sliders.nth(i)) for i in range(sliders.count())]
    found += [("dropdown", dropdowns.nth(i)) for i in range(dropdowns.count())]
    return found


def _move(page, kind: str, control, rel: str, i: int) -> dict:
    """Move a slider one key step (left at its maximum) or a dropdown to its next option (the
    previous one at the end); returns the new value and whether it reached an end."""
    if kind == "slider":
        value = control.evaluate(JS_SLIDER_VALUE)
        key = "ArrowLeft" if value["now"] == value["max"] else "ArrowRight"
        control.focus()
        page.keyboard.press(key)
        moved = control.evaluate(JS_SLIDER_VALUE)
        assert moved["now"] != value["now"], f"{rel}: slider {i} did not move on {key}: {value}"
        return {**moved, "at_end": moved["now"] in (moved["min"], moved["max"])}
    options = control.evaluate("(s) => ({index: s.selectedIndex, n: s.options.length})")
    target = options["index"] + 1 if options["index"] + 1 < options["n"] else options["index"] - 1
    control.select_option(index=target)
    return {"index": target, "at_end": target in (0, options["n"] - 1)}


def _wait(predicate, timeout_s: float, what: str, detail=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}. {detail()}")
        time.sleep(0.25)


def _settled(handle, state) -> str:
    """The slider's output once the kernel is idle and the output stays the same for 0.5 s, else ''."""
    first = handle.evaluate(JS_SLIDER_OUTPUT)
    if not first or state()["kernel"] != "idle":
        return ""
    time.sleep(0.5)
    again = handle.evaluate(JS_SLIDER_OUTPUT)
    return again if again == first and state()["kernel"] == "idle" else ""


def _summary(output: str) -> str:
    """Short form of a slider's output for messages: its text and a hash of each image."""
    lines = output.splitlines()
    images = [hashlib.md5(line.encode()).hexdigest()[:8] for line in lines if line.startswith("data:")]
    text = " ".join(line for line in lines if not line.startswith("data:"))[:200]
    return f"text {text!r}, images {images}"


def _close_sessions(base: str, token: str, path: str):
    """Shut down the kernel(s) of notebook ``path`` so that kernels do not pile up on the server."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as reply:
        sessions = json.load(reply)
    for session in sessions:
        if session.get("path") == path:
            req = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}",
                                         method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()


def _menu(page, menu: str, command: str):
    """Click a top-level menu, then the item that runs ``command`` (lumino menus tag items by command)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').first.click()


def _accept_dialogs(page):
    for button in page.locator(".jp-Dialog .jp-mod-accept").all():
        button.click()


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks in {REPO / 'notebooks'}"


@pytest.mark.timeout(RUN_ALL_TIMEOUT_S + 300)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_notebook_runs_and_sliders_work(lab, browser, notebook):
    base, token = lab
    saved = notebook.read_bytes()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page_errors = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        rel = notebook.relative_to(REPO).as_posix()
        page.goto(f"{base}/lab/tree/{rel}?token={token}&reset", wait_until="domcontentloaded")

        def state():
            return page.evaluate(JS_NOTEBOOK_STATE)

        # JupyterLab loaded, the notebook is open and its kernel is up (accept a kernel-choice dialog).
        def kernel_ready():
            s = state()
            if s and s["dialogs"]:
                _accept_dialogs(page)
            return s and s["cells"] and s["kernel"] == "idle"

        _wait(kernel_ready, 120, f"{rel} to open with an idle kernel", lambda: f"state: {state()}")

        # Clear outputs first, so that "every cell has an execution count" means "ran in this session".
        _menu(page, "Edit", "editmenu:clear-all")
        _wait(lambda: all(c["count"] is None for c in state()["cells"]), 30, "outputs to clear")
        _menu(page, "Kernel", "runmenu:restart-and-run-all")
        page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart Kernel?" -> Restart

        idle_since = [None]

        def all_ran():
            # Done when every code cell has run, or when run-all has stopped early: an error, or
            # an idle kernel with nothing queued for a few seconds (the asserts below then say why).
            s = state()
            code = [c for c in s["cells"] if c["source"].strip()]
            if s["kernel"] != "idle" or s["pending"]:
                idle_since[0] = None
                return False
            idle_since[0] = idle_since[0] or time.monotonic()
            return (all(c["count"] is not None for c in code) or any(c["errors"] for c in code)
                    or time.monotonic() - idle_since[0] > 10)

        def progress():
            s = state()
            missing = [i for i, c in enumerate(s["cells"]) if c["source"].strip() and c["count"] is None]
            errors = [c["errors"] for c in s["cells"] if c["errors"]]
            return f"kernel {s['kernel']}; code cells not run yet: {missing}; errors: {errors}"

        _wait(all_ran, RUN_ALL_TIMEOUT_S, f"all cells of {rel} to run", progress)

        s = state()
        errors = {i: c["errors"] for i, c in enumerate(s["cells"]) if c["errors"]}
        assert not errors, f"{rel}: code cells with error outputs (index among code cells): {errors}"
        assert not s["domErrors"], f"{rel}: error outputs shown on the page: {s['domErrors']}"
        counts = [c["count"] for c in s["cells"] if c["source"].strip()]
        assert None not in counts, f"{rel}: run-all stopped early; {progress()}"
        assert counts == list(range(1, len(counts) + 1)), f"{rel}: cells ran out of order: {counts}"

        # Move every slider (keyboard) and every dropdown (next option) and check what it drives:
        # redrawn differently within UPDATE_LIMIT_S, never blanked meanwhile, one figure per output.
        controls = _controls(page)
        retried, slow, latencies = [], [], []
        for i, (kind, control) in enumerate(controls):
            control.scroll_into_view_if_needed()
            before = _wait(lambda c=control: _settled(c, state), SLIDER_TIMEOUT_S,
                           f"{kind} {i} of {rel} to show a settled output before it is moved")
            figures_before = sum(control.evaluate(JS_FIGURES_PER_OUTPUT))

            def changed(c=control, before=before):
                after = _settled(c, state)
                return after and after != before and after

            # Move it; should an event get lost on a busy machine, move it once more (up to 3 times,
            # each must move it): the output must change in any case.
            presses, latency, blanked = 0, None, False
            while presses < 3:
                presses += 1
                start = time.monotonic()
                moved = _move(page, kind, control, rel, i)
                deadline = start + SLIDER_TIMEOUT_S / 3
                while time.monotonic() < deadline:
                    now = control.evaluate(JS_SLIDER_OUTPUT)
                    blanked = blanked or not now.strip()
                    if now and now != before:
                        latency = latency or time.monotonic() - start
                        if changed():
                            break
                    time.sleep(0.05)
                if changed() or moved["at_end"]:
                    break
            if not changed():
                pytest.fail(f"the output of {kind} {i} of {rel} did not change after {presses} moves "
                            f"({moved}); before: {_summary(before)}; now: "
                            f"{_summary(control.evaluate(JS_SLIDER_OUTPUT))}; kernel {state()['kernel']}")
            if presses > 1:
                retried.append(i)
            latencies.append(f"{latency or float('inf'):.1f} s")
            if latency is None or latency > UPDATE_LIMIT_S:
                slow.append(f"{kind} {i}: {latencies[-1]}")
            assert not blanked, f"{rel}: {kind} {i} blanked its output while it was redrawn"
            figures = control.evaluate(JS_FIGURES_PER_OUTPUT)
            assert max(figures, default=0) <= 1, f"{rel}: {kind} {i} drew {figures} figures in one output"
            assert not figures_before or sum(figures), f"{rel}: {kind} {i} lost its figure"
            s = state()
            assert not s["domErrors"], f"{rel}: moving {kind} {i} shows an error: {s['domErrors']}"
        assert not slow, f"{rel}: outputs that took longer than {UPDATE_LIMIT_S} s to update: {slow}"
        assert not page_errors, f"{rel}: JavaScript errors in the page: {page_errors}"
        print(f"{rel}: {len(counts)} code cells ran without errors, {len(controls)} widget(s) moved, "
              f"redrawn after {', '.join(latencies) or '-'}"
              + (f" (sliders {retried} needed more than one key press)" if retried else ""))
    finally:
        page.close()
        _close_sessions(base, token, notebook.relative_to(REPO).as_posix())
        # Autosave is off and nothing is saved: the file must be as it was (never write it back here,
        # so that a notebook re-executed meanwhile by someone else is not clobbered).
        if notebook.read_bytes() != saved:
            pytest.fail(f"{notebook.name} changed on disk during its browser test (JupyterLab saved it, "
                        f"or another process re-executed it meanwhile)")


# The element a theory link's fragment names, the heading it belongs to (the element itself, or the
# first heading after it) and where that heading sits in the Markdown viewer's scrolled area.
JS_ANCHOR_IN_VIEW = """(fragment) => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const path = panel && panel.context ? panel.context.path : null;
    if (!panel || !path || !path.endsWith('docs/theory.md')) return {path: path, ready: false};
    // JupyterLab's sanitizer turns a rendered id into data-jupyter-id (ids stay unique on the page)
    const target = panel.node.querySelector('[data-jupyter-id="' + fragment + '"], [id="' + fragment + '"]');
    if (!target) return {path: path, ready: false, why: 'no element with that id'};
    let heading = /^H[1-6]$/.test(target.tagName) ? target : null;
    if (!heading) {
        heading = Array.from(panel.node.querySelectorAll('h1, h2, h3, h4, h5, h6')).find(
            h => target.compareDocumentPosition(h) & Node.DOCUMENT_POSITION_FOLLOWING) || null;
    }
    if (!heading) return {path: path, ready: false, why: 'no heading after the anchor'};
    let scroller = heading.parentElement;
    while (scroller && scroller !== panel.node && scroller.scrollHeight <= scroller.clientHeight) {
        scroller = scroller.parentElement;
    }
    const view = (scroller || panel.node).getBoundingClientRect();
    const box = heading.getBoundingClientRect();
    return {path: path, ready: true, heading: heading.innerText.trim(),
            scrollTop: scroller ? scroller.scrollTop : 0,
            offset: box.top - view.top, height: view.height};
}"""


def _click_theory_link(page, rel: str, fragment: str):
    """In the open notebook ``rel``, click the link to theory.md#fragment and check where it lands."""
    # JupyterLab resolves the href to /files/docs/theory.md?_xsrf=...#fragment
    link = page.locator(f'.jp-RenderedMarkdown a[href*="theory.md"][href$="#{fragment}"]').first
    _wait(lambda: link.count() > 0, 120, f"a link to theory.md#{fragment} in {rel}")
    _accept_dialogs(page)
    link.scroll_into_view_if_needed()
    link.click()

    def where():
        return page.evaluate(JS_ANCHOR_IN_VIEW, fragment)

    _wait(lambda: where()["ready"], 60, f"docs/theory.md to open at #{fragment}", lambda: str(where()))
    time.sleep(1.0)   # let the viewer finish scrolling, then read the position again
    at = where()
    number = fragment.split("-")[0]
    assert number in at["heading"], f"#{fragment} leads to heading {at['heading']!r}"
    assert at["scrollTop"] > 0 and -5 <= at["offset"] <= at["height"] / 3, \
        f"#{fragment}: the heading {at['heading']!r} is not scrolled into view: {at}"


def test_theory_links_land_on_their_section(lab, browser):
    """Click the notebooks' links into docs/theory.md (one per distinct section, from the notebook
    that has the most): JupyterLab opens the theory chapter scrolled to that section's heading."""
    base, token = lab

    def links_of(nb):
        return sorted(set(re.findall(r"\.\./docs/theory\.md#([\w\-]+)", nb.read_text())))

    notebook = max(NOTEBOOKS, key=lambda nb: len(links_of(nb)))
    fragments = [f for f in links_of(notebook) if not f.startswith("1-")][:3]   # §1 sits at the top
    assert fragments, "no notebook links to a section of docs/theory.md"
    rel = notebook.relative_to(REPO).as_posix()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        for fragment in fragments:
            page.goto(f"{base}/lab/tree/{rel}?token={token}&reset", wait_until="domcontentloaded")
            _click_theory_link(page, rel, fragment)
            _close_sessions(base, token, rel)
    finally:
        page.close()
        _close_sessions(base, token, rel)
