"""Starting and stopping the simulator from async and sync code, and its time settings."""

import asyncio
import gc
import threading
import time
import warnings

import aiohttp

from comfynb.sim import Simulator

from .server_helpers import connect, get, ksampler, run, tiny


async def test_stop_is_clean_with_open_sockets_and_running_work(http):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with Simulator(node_time=5.0) as sim:
            a = await connect(http, sim.url)
            await http.post(sim.url + "/prompt", json={"prompt": tiny(1), "client_id": a.client_id})
            await a.wait_for(lambda f: f.get("type") == "executing")
            root = sim.root
        await asyncio.wait_for(a.closed.wait(), 2)
        await asyncio.sleep(0)
        gc.collect()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert [w for w in caught if issubclass(w.category, (ResourceWarning, RuntimeWarning))] == []
    assert not root.exists()  # its own temporary folder is removed


async def test_given_root_is_kept(tmp_path, http):
    async with Simulator(root=tmp_path) as sim:
        a = await connect(http, sim.url)
        await run(http, sim.url, a, tiny(2))
    assert (tmp_path / "output" / "tiny_00001_.png").is_file()
    async with Simulator(root=tmp_path) as sim:  # ComfyUI's counter continues after a restart
        a = await connect(http, sim.url)
        await run(http, sim.url, a, tiny(3))
        assert a.of("executed")[0]["output"]["images"][0]["filename"] == "tiny_00002_.png"


def test_running_from_sync_code_on_its_own_thread():
    with Simulator().running() as sim:
        assert sim.url.startswith("http://127.0.0.1:")

        async def client() -> tuple[int, dict]:
            async with aiohttp.ClientSession() as http:
                a = await connect(http, sim.url)
                pid = await run(http, sim.url, a, tiny(4))
                return await get(http, sim.url, f"/history/{pid}")

        status, history = asyncio.run(client())
        assert status == 200 and len(history) == 1
        sim.restart()  # from a foreign thread: returns when back up
        assert asyncio.run(_history(sim.url)) == {}
    assert not any(t.name == "comfynb-sim" for t in threading.enumerate())


async def _history(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        return (await get(http, url, "/history"))[1]


async def test_node_and_step_times(http):
    async with Simulator(node_time=0.05, node_times={"SaveImage": 0.15}) as sim:
        a = await connect(http, sim.url)
        start = time.perf_counter()
        await run(http, sim.url, a, tiny(5))
        assert 0.2 <= time.perf_counter() - start < 1.0
    async with Simulator(step_time=0.03) as sim:
        a = await connect(http, sim.url)
        start = time.perf_counter()
        await run(http, sim.url, a, ksampler(1, steps=5))
        assert 0.15 <= time.perf_counter() - start < 1.0
    async with Simulator() as sim:  # zero times: no sleeping at all
        a = await connect(http, sim.url)
        start = time.perf_counter()
        for i in range(20):
            await run(http, sim.url, a, tiny(10 + i))
        assert time.perf_counter() - start < 2.0


def test_its_own_folder_goes_at_exit_even_if_never_stopped(tmp_path):
    """A script (or a kernel shut down) that never closes its simulated session leaves no
    comfynb-sim-* folder behind in the temporary directory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import comfynb as cn\n"
        "from comfynb.sim.library import load_workflow\n"
        "session = cn.Session.simulated(progress=False)\n"
        "session.submit(load_workflow('default_txt2img')).result(30)\n"
        "print(session.simulator.root, flush=True)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 0, done.stderr
    root = Path(done.stdout.strip())
    assert root.parent == tmp_path and root.name.startswith("comfynb-sim-")
    assert not root.exists()
