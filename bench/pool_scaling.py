"""Sweep throughput over k = 1, 2, 4, 8 servers: does it scale to at least 0.9 x k?

Each simulated server runs in its own process, as real ComfyUI servers would, and every prompt
takes a fixed time there (a sleep in its first node: waiting, not CPU, like a GPU). One Session
over the first k servers runs a sweep of ``--per-server`` x k distinct prompts with default
settings (dispatch, in-flight limits and sweep concurrency as a user gets them); throughput is
prompts per second from the sweep's start to its last result; "ratio" is that over the throughput
of the first k, "of ideal" over k / node_time. Exits 1 if a ratio misses 0.9 x k.

    python bench/pool_scaling.py [--node-time 0.05] [--per-server 40] [--ks 1 2 4 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import comfynb  # noqa: E402


def tiny() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "scale"}},
    }


def serve(port: int, node_time: float) -> None:
    """One simulator until SIGTERM: EmptyImage sleeps ``node_time``, everything else is instant."""
    from comfynb.sim import Simulator

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with Simulator(port=port, node_times={"EmptyImage": node_time}):
            await stop.wait()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers(k: int, node_time: float):
    """k simulator processes; yields their URLs once all answer."""
    ports = [free_port() for _ in range(k)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", str(p), "--node-time", str(node_time)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            for _ in range(400):
                try:
                    urllib.request.urlopen(url + "/system_stats", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"simulator at {url} did not start")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def throughput(urls: list[str], prompts: int, first_color: int) -> tuple[float, dict]:
    """Prompts per second for one sweep, and how many prompts each server ran."""
    with comfynb.Session(urls, progress=False) as session:
        session.sweep(tiny(), rows=[{"1.color": first_color - 1 - i} for i in range(len(urls))]).result()  # warm up
        started = time.perf_counter()
        sweep = session.sweep(tiny(), grid={"1.color": range(first_color, first_color + prompts)})
        frame = sweep.result()
        elapsed = time.perf_counter() - started
    if set(frame.status) != {"success"}:
        raise RuntimeError(f"some prompts failed: {frame.status.value_counts().to_dict()}")
    return prompts / elapsed, frame.server.value_counts().to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-time", type=float, default=0.05, help="seconds each prompt takes on its server")
    parser.add_argument("--per-server", type=int, default=40, help="prompts per server in each sweep")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.node_time)
        return 0

    print(
        f"each prompt sleeps {args.node_time:g} s on its server; {args.per_server} prompts per server; "
        f"ideal: {1 / args.node_time:.1f} prompts/s per server"
    )
    print(f"{'k':>3} {'prompts':>8} {'prompts/s':>10} {'ratio':>7} {'target':>7} {'of ideal':>9}  per server")
    _rows, base, ok = [], None, True
    with servers(max(args.ks), args.node_time) as urls:
        for n, k in enumerate(args.ks):
            prompts = args.per_server * k
            rate, spread = throughput(urls[:k], prompts, first_color=100_000 * (n + 1))
            base = base or rate / args.ks[0]
            ratio, target = rate / base, 0.9 * k
            ok &= ratio >= target
            counts = " ".join(str(spread.get(u, 0)) for u in urls[:k])
            ideal = rate * args.node_time / k
            print(
                f"{k:>3} {prompts:>8} {rate:>10.1f} {ratio:>7.2f} {target:>7.2f} {ideal:>9.0%}  {counts}"
                f"{'' if ratio >= target else '  << below target'}",
                flush=True,
            )
    print("target met: throughput >= 0.9 x k of one server" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
