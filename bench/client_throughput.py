"""End-to-end throughput of comfynb against a minimal reference client, in the same run.

N zero-work prompts (EmptyImage 8x8 -> SaveImage, a different colour each, so nothing is cached)
go to one embedded simulator, first through the reference client (one socket, every prompt
POSTed at once, completion on ``executing {node: null}``, then ``/history/{id}``; no retries, no
reconciliation), then through comfynb (``Session.submit`` + ``as_completed``). The simulator runs
in a subprocess so the CPU time measured is the client's alone.

Prints prompts/s of both and their ratio (target >= 0.8), the latency from the final message to
the result in the caller's hands (p50/p99), and client CPU per prompt.

    python bench/client_throughput.py [--n 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import comfynb  # noqa: E402

SERVE = """
import sys
from comfynb.sim import Simulator
sim = Simulator()
with sim.running():
    print(sim.url, flush=True)
    sys.stdin.read()
"""


def prompts(n: int, offset: int) -> list[dict]:
    """Distinct zero-work graphs (the colour makes each one new to the cache)."""
    return [
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": offset + i},
            },
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
        }
        for i in range(n)
    ]


def report(name: str, n: int, wall: float, cpu: float, latencies: list[float]) -> float:
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    rate = n / wall
    print(
        f"{name:>10}: {rate:7.1f} prompts/s  ({wall:.2f} s)  latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
        f"CPU {cpu / n * 1000:.2f} ms/prompt"
    )
    return rate


async def reference(url: str, graphs: list[dict]) -> tuple[float, float, list[float]]:
    """The minimal client: one socket, all POSTs at once, history read on the final message."""
    client_id = uuid.uuid4().hex
    ids = {str(uuid.uuid4()): graph for graph in graphs}
    final_at: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url.replace("http", "ws", 1) + "/ws", params={"clientId": client_id}, max_msg_size=0)

        async def fetch(pid: str) -> None:
            async with http.get(f"{url}/history/{pid}") as resp:
                entry = (await resp.json())[pid]
            assert entry["outputs"]
            latencies.append(time.perf_counter() - final_at[pid])
            if len(latencies) == len(ids):
                done.set()

        async def read() -> None:
            tasks = []
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data["type"] == "executing" and data["data"].get("node") is None:
                    pid = data["data"].get("prompt_id")
                    if pid in ids:
                        final_at[pid] = time.perf_counter()
                        tasks.append(asyncio.create_task(fetch(pid)))

        async def post(pid: str, graph: dict) -> None:
            body = {"prompt": graph, "client_id": client_id, "prompt_id": pid}
            async with http.post(f"{url}/prompt", json=body) as resp:
                assert resp.status == 200, await resp.text()

        reader = asyncio.create_task(read())
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(post(pid, graph) for pid, graph in ids.items()))
        await done.wait()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        reader.cancel()
        await ws.close()
    return wall, cpu, latencies


def through_comfynb(session: comfynb.Session, graphs: list[dict]) -> tuple[float, float, list[float]]:
    latencies: list[float] = []
    cpu, start = time.process_time(), time.perf_counter()
    jobs = [session.submit(graph) for graph in graphs]
    for job in comfynb.as_completed(jobs):
        now = time.time()
        assert job.result().images
        latencies.append(now - job.last_event_at)
    return time.perf_counter() - start, time.process_time() - cpu, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="prompts per client and round")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        url = server.stdout.readline().strip()
        offset = 0
        with comfynb.Session(url, progress=False) as session:
            asyncio.run(reference(url, prompts(20, 10**6)))  # warm both paths up
            for job in comfynb.as_completed([session.submit(g) for g in prompts(20, 2 * 10**6)]):
                job.result()
            for r in range(args.rounds):
                print(f"round {r + 1}: N={args.n} zero-work prompts, simulator in a subprocess")
                ref = report("reference", args.n, *asyncio.run(reference(url, prompts(args.n, offset))))
                offset += args.n
                ours = report("comfynb", args.n, *through_comfynb(session, prompts(args.n, offset)))
                offset += args.n
                print(f"{'ratio':>10}: {ours / ref:.2f} (comfynb / reference; target >= 0.8)")
    finally:
        server.stdin.close()
        server.wait(10)


if __name__ == "__main__":
    main()
