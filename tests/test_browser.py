"""Checked in a real browser: JupyterLab, headless Chromium, "Restart Kernel and Run All Cells".

- ``notebooks/02_concurrent_sweeps.ipynb``: the sweep's view reaches 24/24 and reads ``24 ok``, is
  replaced by its static summary, the contact sheet renders, nothing wraps at 1400 and 900 px;
  after saving and reopening the notebook the summary is still there (no "model not found").
- A scratch notebook with two simulated servers: a sweep whose second server goes down (the view
  names it, and still does not wrap), and a sweep stopped with its Stop button (the counts read
  ``N ok · M cancelled``, the view says what it stopped and turns into its summary).

- ``notebooks/06_video_and_audio.ipynb``: its video and audio players load their media.

Everything is read from the page itself.

It needs Debian's Chromium (``apt-get install chromium``), driven through Playwright's Python
package with ``executable_path`` (Playwright's own browser download is not used), and JupyterLab
(``pip install -e ".[dev,browser]"``, as ``.ci/run`` does). It is skipped, saying which is missing,
where they are not installed. Screenshots (each at 1400 and 900 px wide) are saved in
``test-output/browser/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_concurrent_sweeps.ipynb"
OUTPUT = ROOT / "test-output" / "browser"
TAG, ROWS = "cfg-by-seed", 24  # the notebook's first sweep: 6 seeds x 4 CFG values
WIDTHS = (1400, 900)
SHEET_CELLS = (6, 4)  # its contact sheet: seeds across, CFG values down
CELL_PX = 128

if not os.access(CHROMIUM, os.X_OK):
    # .ci/run installs Chromium, so in CI a missing one is a broken setup, not a reason to skip
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but no Chromium at {CHROMIUM}: .ci/run should have installed it")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
)
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (pip install -e '.[browser]')")
pytest.importorskip("ipywidgets", reason="ipywidgets is not installed (pip install -e '.[dev]')")

# Lab settings: every cell in the DOM (no virtual scrolling), no news or update checks.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

# JavaScript run in the page.
VIEW = """(source) => {
    for (const cell of document.querySelectorAll('.jp-CodeCell')) {
        if (!cell.querySelector('.jp-InputArea').textContent.includes(source)) continue;
        const view = cell.querySelector('.jp-OutputArea .comfynb-view');
        if (!view) return null;
        return {
            text: view.innerText.replace(/\\s+/g, ' '),  // as laid out: blocks apart
            widget: !!cell.querySelector('.jp-OutputArea .jupyter-widgets'),
            broken: cell.querySelector('.jp-OutputArea').textContent.includes('model not found'),
            stop: !!cell.querySelector('.jp-OutputArea button'),
        };
    }
    return null;
}"""
# Lines that must not wrap: the header's cells, the rows of running jobs, text cells of tables.
WRAPPED = """() => {
    const bad = [];
    const check = (el, limit) => {
        const h = el.getBoundingClientRect().height;
        if (h > limit) bad.push(`${el.className || el.tagName} ${Math.round(h)}px: ${el.textContent.slice(0, 80)}`);
    };
    document.querySelectorAll('.comfynb-head > div, .comfynb-row, .comfynb-notices > div').forEach(e => check(e, 24));
    document.querySelectorAll('.comfynb-view td').forEach(td => { if (!td.querySelector('img')) check(td, 30); });
    const rows = document.querySelectorAll('.comfynb-head, .comfynb-row');
    return {bad, checked: rows.length};
}"""
SHEET = """() => {
    for (const cell of document.querySelectorAll('.jp-CodeCell')) {
        if (!cell.querySelector('.jp-InputArea').textContent.includes('.contact_sheet(')) continue;
        const img = cell.querySelector('.jp-OutputArea-output img');
        if (img && img.complete && img.naturalWidth > 0) return [img.naturalWidth, img.naturalHeight];
    }
    return null;
}"""
ALL_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
    return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
}"""
KERNEL_IDLE = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\| Idle$/.test(e.textContent.trim()))"""
PROMPTS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim())"""
STDERR = """() => [...document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.textContent)"""

# The scratch notebook: two simulated servers, one cut off during a sweep; a sweep to stop.
SCRATCH = [
    "import comfynb as cn\n"
    "from comfynb.sim.library import load_workflow\n"
    "session = cn.Session.simulated(n=2, node_times={'KSampler': 0.6}, down_after=0.5, failover_after=600)\n"
    "wf = cn.Workflow.load(load_workflow('default_txt2img'))\n"
    "wf['EmptyLatentImage.width'] = wf['EmptyLatentImage.height'] = 96",
    "down = session.sweep(wf, seeds=40, concurrency=4, tag='server-down')",
    "import asyncio, threading\nawait asyncio.sleep(2)\n"
    "threading.Thread(target=session.simulators[1].partition, args=(300,), daemon=True).start()",
    "stop_me = session.sweep(wf, seeds=30, concurrency=2, tag='stop-me')",
]


LAB_DIRS: dict[str, Path] = {}  # the folder each JupyterLab serves, by URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free port, serving a temporary folder that holds a copy of the notebook."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work)
    for name, values in SETTINGS.items():
        path = tmp_path / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_URL", "COMFYUI_WORKFLOW")}  # the simulator
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    port = free_port()
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        # sys.executable: the kernel (the "python3" kernelspec) runs in this environment too
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--allow-root",
                "--no-browser",
                "--ip",
                "127.0.0.1",
                f"--port={port}",
                "--IdentityProvider.token=",
                f"--ServerApp.root_dir={work}",
                f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
    url = f"http://127.0.0.1:{port}"
    LAB_DIRS[url] = work
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/api/status", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def restart_and_run_all(page, attempts: int = 3) -> None:
    """Kernel > Restart Kernel and Run All Cells..., and confirm. JupyterLab can drop a restart asked
    for while it is still setting up its connection to a new kernel (its history and debugger
    requests get cancelled, and the cells never run), so this waits for the kernel to be idle,
    checks that the first cell starts, and asks again if it did not."""
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)
    for attempt in range(1, attempts + 1):
        page.get_by_role("menuitem", name="Kernel", exact=True).click()
        page.get_by_role("menuitem", name=re.compile(r"^Restart Kernel and Run All Cells")).click()
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=10_000)
        dialog.locator(".jp-mod-accept").click()  # "Restart"
        try:
            page.wait_for_function(f"() => ({PROMPTS})()[0] !== '[ ]:'", timeout=15_000)
            return
        except sync_api.TimeoutError:
            if attempt == attempts:
                raise
            print(f"Restart Kernel and Run All did not start the cells (attempt {attempt}); asking again")
            page.wait_for_function(KERNEL_IDLE, timeout=30_000)


def view(page, source: str) -> dict | None:
    return page.evaluate(VIEW, source)


def wait_view(page, source: str, predicate: str, timeout: float = 45_000) -> dict:
    """Wait until the view in the cell whose code contains ``source`` satisfies ``predicate`` (JS, on ``v``)."""
    page.wait_for_function(
        f"() => {{ const v = ({VIEW})({json.dumps(source)}); return v && ({predicate}); }}", timeout=timeout
    )
    return view(page, source)


def shoot(page, source: str, name: str) -> dict:
    """Screenshots of one cell at each width (``test-output/browser/NAME-WIDTHpx.png``); what
    wraps at each width."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    wrapped = {}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(400)  # let the layout settle
        cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text=source))
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=OUTPUT / f"{name}-{width}px.png")
        wrapped[width] = page.evaluate(WRAPPED)
    page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
    return wrapped


def assert_no_wrap(wrapped: dict) -> None:
    for width, found in wrapped.items():
        assert found["checked"] > 0, found
        assert found["bad"] == [], f"lines wrapped at {width} px: {found['bad']}"


def in_browser(lab, check) -> None:
    """Run ``check(page, url)`` in headless Chromium; on failure, a screenshot and the page's state."""
    url, log = lab
    (OUTPUT / "failure.png").unlink(missing_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTHS[0], "height": 1000})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text[:300]}"))
            try:
                check(page, url)
            except Exception:
                OUTPUT.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=OUTPUT / "failure.png", full_page=True)
                state = {"prompts": page.evaluate(PROMPTS), "stderr": page.evaluate(STDERR)}
                print(f"page at the failure (screenshot: {OUTPUT / 'failure.png'}): {json.dumps(state)}")
                print("browser console:\n" + "\n".join(console[-40:]))
                print("JupyterLab's log, last lines:\n" + log.read_text()[-4000:])
                raise
        finally:
            browser.close()


def open_and_run(page, address: str) -> None:
    page.goto(address)
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    restart_and_run_all(page)


SWEEP = "session.sweep(wf, grid=grid"


def test_notebook_02_keeps_its_summary_after_save_and_reopen(lab):
    def check(page, url):
        from PIL import Image

        address = f"{url}/lab/tree/{NOTEBOOK.name}"
        open_and_run(page, address)
        # The sweep's view ends at 24/24, all ok, and is replaced by its static summary.
        done = wait_view(page, SWEEP, f"v.text.includes('{ROWS}/{ROWS}') && !v.widget")
        assert f"{ROWS} ok" in done["text"] and "error" not in done["text"] and "cancelled" not in done["text"], done
        assert re.search(rf"sweep {TAG} {ROWS}/{ROWS} {ROWS} ok · ", done["text"]), done
        # The contact sheet renders: a picture of 6 x 4 cells of 128 px, with labels.
        page.wait_for_function(SHEET, timeout=30_000)
        width, height = page.evaluate(SHEET)
        assert width >= SHEET_CELLS[0] * CELL_PX and height >= SHEET_CELLS[1] * CELL_PX, (width, height)
        # The rest of the notebook runs too, without errors (nor anything else on stderr).
        page.wait_for_function(ALL_RAN, timeout=60_000)
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        assert page.evaluate(STDERR) == []
        assert_no_wrap(shoot(page, SWEEP, "02-finished"))
        shoot(page, ".contact_sheet(", "02-contact-sheet")
        shoot(page, "frame.comfynb.show(", "02-results-frame")

        # Save, and open the notebook again (a new page load: no widget state survives).
        page.keyboard.press("Control+s")
        saved = lab_dir(url) / NOTEBOOK.name
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "comfynb-view" not in saved.read_text():
            time.sleep(0.3)
        stored = json.loads(saved.read_text())
        sweep_cell = next(c for c in stored["cells"] if SWEEP in "".join(c["source"]))
        [output] = sweep_cell["outputs"]
        assert "comfynb-view" in "".join(output["data"]["text/html"])
        assert "application/vnd.jupyter.widget-view+json" not in output["data"]
        assert "".join(output["data"]["text/plain"]).startswith(f"sweep {TAG} |")
        page.goto(address)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        reopened = wait_view(page, SWEEP, "true", timeout=30_000)
        assert not reopened["broken"] and not reopened["widget"], reopened
        assert f"{ROWS}/{ROWS}" in reopened["text"] and f"{ROWS} ok" in reopened["text"], reopened
        assert_no_wrap(shoot(page, SWEEP, "02-reopened"))
        Image.open(OUTPUT / f"02-reopened-{WIDTHS[0]}px.png").load()

    in_browser(lab, check)


def test_a_server_down_and_the_stop_button(lab, tmp_path):
    def check(page, url):
        write_notebook(lab_dir(url) / "scratch.ipynb", SCRATCH)
        open_and_run(page, f"{url}/lab/tree/scratch.ipynb")
        page.wait_for_function(ALL_RAN, timeout=60_000)
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)

        # The first sweep runs on with its second server cut off: the view says so, and nothing wraps.
        source = "tag='server-down'"
        running = wait_view(page, source, "v.text.includes('server(s) down') && v.text.includes(' ok')")
        assert running["widget"] and running["stop"] and re.search(r"\d+ running", running["text"]), running
        assert "⚠" in running["text"] and "is down" in running["text"]  # the pool's warning, in this view
        assert_no_wrap(shoot(page, source, "server-down"))

        # The Stop button stops the second sweep: it says what it stopped, counts cancelled
        # (not failed), and turns into its summary.
        source = "tag='stop-me'"
        wait_view(page, source, "/[1-9]\\d* ok/.test(v.text)")
        cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text=source))
        cell.get_by_role("button", name="Stop").click()
        stopped = wait_view(page, source, "!v.widget && v.text.includes('30/30')")
        # the outcomes: ok and cancelled, nothing else (the time comes next)
        assert re.search(r"stop-me 30/30 [1-9]\d* ok · \d+ cancelled · \d", stopped["text"]), stopped
        assert re.search(r"stopped \d+ job\(s\)", stopped["text"]), stopped
        assert not stopped["stop"]  # no Stop button in the summary
        assert_no_wrap(shoot(page, source, "stopped"))

    in_browser(lab, check)


def lab_dir(url: str) -> Path:
    return LAB_DIRS[url]


def write_notebook(path: Path, sources: list[str]) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
        for i, src in enumerate(sources)
    ]
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))


# -- notebook 06: video and audio players ---------------------------------------------------------

MEDIA_NOTEBOOK = ROOT / "notebooks" / "06_video_and_audio.ipynb"
PLAYERS = """() => {
    const out = {};
    for (const kind of ['video', 'audio']) {
        const players = [...document.querySelectorAll('.jp-OutputArea-output ' + kind + '[controls]')];
        out[kind] = players.map(p => ({ready: p.readyState, duration: p.duration, error: p.error && p.error.code,
                                         width: p.getBoundingClientRect().width}));
    }
    return out;
}"""


def test_notebook_06_renders_video_and_audio_players(lab, tmp_path):
    """Restart and Run All of the video notebook: its results show players the browser can play
    (the media's metadata loads: a real duration, no media error), not just tags."""
    url, log = lab
    shutil.copy(MEDIA_NOTEBOOK, tmp_path / "work")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{url}/lab/tree/{MEDIA_NOTEBOOK.name}")
                page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
                restart_and_run_all(page)
                page.wait_for_function(ALL_RAN, timeout=90_000)
                page.wait_for_function(
                    f"""() => {{ const p = ({PLAYERS})();
                        return p.video.length > 0 && p.audio.length > 0
                            && [...p.video, ...p.audio].every(x => x.ready >= 1 || x.error); }}""",
                    timeout=30_000,
                )
                players = page.evaluate(PLAYERS)
                assert page.evaluate(STDERR) == []
            except Exception:
                OUTPUT.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=OUTPUT / "failure-06.png")
                print("JupyterLab's log, last lines:\n" + log.read_text()[-4000:])
                raise
            OUTPUT.mkdir(parents=True, exist_ok=True)
            cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text="result.videos[0]")).first
            cell.screenshot(path=OUTPUT / "06_video_and_audio.png")
        finally:
            browser.close()
    for kind in ("video", "audio"):
        assert players[kind], players
        for player in players[kind]:
            assert player["error"] is None and player["ready"] >= 1 and player["duration"] > 0.5, (kind, player)
    assert all(p["width"] > 100 for p in players["video"]), players
