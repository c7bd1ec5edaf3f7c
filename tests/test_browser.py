"""Checked in a real browser: JupyterLab, headless Chromium, "Restart Kernel and Run All Cells" of
``notebooks/02_concurrent_sweeps.ipynb``; the sweep's aggregate widget must reach N/N and the
contact sheet must render, as read from the page itself. The same for
``notebooks/06_video_and_audio.ipynb``, whose video and audio players must load their media.

It needs Debian's Chromium (``apt-get install chromium``), driven through Playwright's Python
package with ``executable_path`` (Playwright's own browser download is not used), and JupyterLab
(``pip install -e ".[dev,browser]"``, as ``.ci/run`` does). It is skipped, saying which is missing,
where they are not installed. A screenshot of the finished widget and the contact sheet is saved
as ``test-output/browser/02_concurrent_sweeps.png``.
"""

from __future__ import annotations

import io
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
AGGREGATE = """(tag) => {
    for (const bar of document.querySelectorAll('.widget-hprogress')) {
        const header = bar.parentElement;
        if (header.textContent.includes('sweep ' + tag)) {
            const fill = bar.querySelector('.progress-bar');
            const label = [...header.querySelectorAll('.widget-html-content')].map(e => e.textContent);
            return {width: fill ? fill.style.width : null, label: label.join(' | ')};
        }
    }
    return null;
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


def run_all_and_check(page, address: str) -> list:
    """Open the notebook, Kernel > Restart Kernel and Run All Cells..., check what the page shows;
    screenshots of the sweep's cell and of the contact sheet's cell."""
    from PIL import Image

    page.goto(address)
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    restart_and_run_all(page)

    # The sweep's aggregate bar reaches N/N: the label says so, and the bar is full...
    page.wait_for_function(
        f"() => {{ const a = ({AGGREGATE})({json.dumps(TAG)}); return a && a.label.includes('{ROWS}/{ROWS}'); }}",
        timeout=45_000,
    )
    aggregate = page.evaluate(AGGREGATE, TAG)
    assert re.search(rf"(^|\D){ROWS}/{ROWS}(\D|$)", aggregate["label"]), aggregate
    assert aggregate["width"] == "100%", aggregate
    # ...and the contact sheet renders: a picture of 6 x 4 cells of 128 px, with labels.
    page.wait_for_function(SHEET, timeout=30_000)
    width, height = page.evaluate(SHEET)
    assert width >= SHEET_CELLS[0] * CELL_PX and height >= SHEET_CELLS[1] * CELL_PX, (width, height)

    # The rest of the notebook runs too, without errors (nor anything else on stderr).
    page.wait_for_function(ALL_RAN, timeout=30_000)
    assert page.evaluate(STDERR) == []

    shots = []
    for source in ("session.sweep(wf, grid=grid", ".contact_sheet("):
        cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text=source))
        shots.append(Image.open(io.BytesIO(cell.screenshot())))
    return shots


def test_restart_and_run_all_shows_the_finished_sweep_and_the_contact_sheet(lab):
    from PIL import Image

    url, log = lab
    (OUTPUT / "failure.png").unlink(missing_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text[:300]}"))
            try:
                shots = run_all_and_check(page, f"{url}/lab/tree/{NOTEBOOK.name}")
            except Exception:
                OUTPUT.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=OUTPUT / "failure.png")
                state = {
                    "aggregate": page.evaluate(AGGREGATE, TAG),
                    "prompts": page.evaluate(PROMPTS),
                    "stderr": page.evaluate(STDERR),
                }
                print(f"page at the failure (screenshot: {OUTPUT / 'failure.png'}): {json.dumps(state)}")
                print("browser console:\n" + "\n".join(console[-40:]))
                print("JupyterLab's log, last lines:\n" + log.read_text()[-4000:])
                raise
        finally:
            browser.close()

    # One picture of the two cells: the finished aggregate widget above the contact sheet.
    OUTPUT.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", (max(s.width for s in shots), sum(s.height for s in shots)), "white")
    top = 0
    for shot in shots:
        picture.paste(shot, (0, top))
        top += shot.height
    picture.save(OUTPUT / "02_concurrent_sweeps.png")


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
