"""How many zero-work prompts per second the simulator completes end to end.

A plain aiohttp client opens one WebSocket, POSTs N prompts concurrently (each with the
client_id and a distinct EmptyImage colour, so nothing is served from cache) and waits for each
prompt's ``executing {node: null}``. The simulator runs in a separate process, as a real server
would, so client and server do not share one interpreter. Target: >= 500 prompts/s.

    python bench/sim_throughput.py [--prompts 2000] [--concurrency 64] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def tiny(color: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def server(in_process: bool) -> AsyncIterator[str]:
    if in_process:
        sys.path.insert(0, str(ROOT))
        from comfynb.sim import Simulator

        with Simulator().running() as sim:
            yield sim.url
        return
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfynb.cli", "sim", "--port", str(port), "--node-time", "0", "--step-time", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/prompt"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError("simulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def run(url: str, prompts: int, concurrency: int) -> float:
    client_id = uuid.uuid4().hex
    done: dict[str, asyncio.Future] = {}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0)

        async def reader() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT and '"node": null' in msg.data:
                    data = json.loads(msg.data)["data"]
                    fut = done.get(data.get("prompt_id"))
                    if fut is not None and not fut.done():
                        fut.set_result(None)

        reading = asyncio.create_task(reader())
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            prompt_id = str(uuid.uuid4())
            done[prompt_id] = loop.create_future()
            async with gate:
                async with http.post(
                    f"{url}/prompt", json={"prompt": tiny(i), "client_id": client_id, "prompt_id": prompt_id}
                ) as r:
                    assert r.status == 200, await r.text()
            await done[prompt_id]

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(prompts)))
        elapsed = time.perf_counter() - start
        await ws.close()
        await reading
    return prompts / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--in-process", action="store_true", help="run the simulator on a thread of this process instead"
    )
    args = parser.parse_args()
    async with server(args.in_process) as url:
        await run(url, 100, args.concurrency)  # warm-up
        rate = await run(url, args.prompts, args.concurrency)
    print(
        f"{rate:.0f} prompts/s end to end ({args.prompts} zero-work prompts, "
        f"concurrency {args.concurrency}, target >= 500)"
    )


if __name__ == "__main__":
    asyncio.run(main())
