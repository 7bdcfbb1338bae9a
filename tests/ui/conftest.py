"""The course in a real browser: JupyterLab on 127.0.0.1, driven by Debian's Chromium.

nbval runs every chapter headless and never sees a widget move; these tests open the
chapters in JupyterLab as a learner does, run all cells, move the sliders and check that the
figures change. They need two things that ``pip install -e ".[dev]"`` does not bring:

    apt-get install chromium        # Debian's browser, /usr/bin/chromium
    pip install playwright          # the Python driver; no `playwright install` needed

Without either, the tests skip and say which is missing (with ``CLR_UI_REQUIRED=1``, as in
``.ci/run``, they fail instead). ``CLR_CHROMIUM`` points at another Chromium binary.
``CLR_UI_BREAK_SLIDER=1`` serves chapter 01 with the bug of ``fixtures/broken_slider.json``,
to see the chapter-01 test fail as it would on a broken slider.
Screenshots and the server's log go to ``$CLR_UI_ARTIFACTS`` (default
``/tmp/clr-ui-artifacts``), outside the repository; the path is printed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACTS = Path(os.environ.get("CLR_UI_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "clr-ui-artifacts")
SERVER_START_TIMEOUT_S = 90

# Chromium run headless as root inside CI: no sandbox (root cannot use it), and nothing that
# phones home (the machine reaches only package registries).
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]
if hasattr(os, "geteuid") and os.geteuid() == 0:
    CHROMIUM_ARGS.append("--no-sandbox")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ui: drives JupyterLab in a real browser (needs chromium and playwright)")


_used_artifacts: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    if _used_artifacts:
        terminalreporter.write_line(f"UI test screenshots and JupyterLab log: {ARTIFACTS}")


def _missing(reason: str):
    """Skip with the reason, or fail where the UI test is required (CI)."""
    if os.environ.get("CLR_UI_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"{reason} (CLR_UI_REQUIRED is set, so this is an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _used_artifacts.append(ARTIFACTS)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("CLR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        _missing("Chromium not found: apt-get install chromium (or set CLR_CHROMIUM)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python not installed: pip install playwright "
                 "(no browser download is needed, Debian's chromium is used)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the folder JupyterLab serves: a scratch copy of notebooks/

    def lab_url(self, notebook: str, workspace: str) -> str:
        """Opens ``notebook`` in its own, empty workspace (no tabs restored)."""
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """No news or update checks: they would fetch from the internet and pop up a toast."""
    path = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it shuts its kernels down), SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def lab_server(browser, artifacts) -> LabServer:
    """``jupyter lab`` on 127.0.0.1, a free port and a random token, serving a scratch copy of
    notebooks/ (JupyterLab saves outputs into the files it opens; the committed chapters must
    stay stripped). Kernels run the smoke profile. Stopped at the end, even on failure."""
    scratch = Path(tempfile.mkdtemp(prefix="clr-ui-"))
    root = scratch / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    if os.environ.get("CLR_UI_BREAK_SLIDER", "") not in ("", "0"):  # the manual check
        _write_broken_copy(root, "01_augmentations.ipynb")
    for name in ("settings", "workspaces", "runtime", "config", "data"):
        (scratch / name).mkdir()
    _write_lab_settings(scratch / "settings")

    env = dict(os.environ)
    env.update(CLR_PROFILE="smoke", JUPYTERLAB_SETTINGS_DIR=str(scratch / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
               JUPYTER_CONFIG_DIR=str(scratch / "config"),
               JUPYTER_DATA_DIR=str(scratch / "data"))
    env.pop("MPLBACKEND", None)  # the root conftest's "agg" would hide every figure
    token, port = secrets.token_hex(16), _free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = artifacts / "jupyterlab.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log_path}")
            try:
                server.api("status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer in {SERVER_START_TIMEOUT_S} s; "
                                       f"see {log_path}") from None
                time.sleep(0.5)
        yield server
    finally:
        try:
            for kernel in server.api("kernels") if proc.poll() is None else []:
                server.api(f"kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        _stop(proc)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _write_broken_copy(root: Path, name: str) -> str:
    """Writes chapter 01 with the deliberate bug of fixtures/broken_slider.json as ``name``."""
    spec = json.loads((FIXTURES / "broken_slider.json").read_text())
    nb = json.loads((NOTEBOOKS / spec["chapter"]).read_text())
    hits = 0
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and spec["old"] in source:
            cell["source"] = source.replace(spec["old"], spec["new"]).splitlines(keepends=True)
            hits += 1
    assert hits == 1, (f"fixtures/broken_slider.json: {spec['old']!r} found {hits} times in "
                       f"{spec['chapter']}; update the fixture to the chapter's slider cell")
    (root / (name or spec["copy_as"])).write_text(json.dumps(nb, indent=1))
    return name or spec["copy_as"]


@pytest.fixture
def broken_chapter(lab_server) -> str:
    """The name of a deliberately broken copy of chapter 01, served next to the chapters.
    (Kept as a JSON edit, not an .ipynb, so that nbval never collects it as a chapter.)"""
    return _write_broken_copy(lab_server.root, "")


@pytest.fixture
def page(browser, request):
    """A fresh browser tab; a screenshot of it goes to the artefacts if the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-FAILED.png"))
            print(f"screenshot of the failure: {ARTIFACTS / request.node.name}-FAILED.png")
        except Exception:  # the page may be gone; the failure itself is what matters
            pass
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
