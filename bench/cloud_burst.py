"""Bursting to the cloud: two local servers, one Comfy Cloud (the simulator's cloud mode).

Every prompt takes ``--node-time`` seconds (2 by default) on any backend; the cloud runs its
plan's 3 jobs at once. The same ``--prompts``-row sweep (40) runs on the two local servers alone,
then on the locals plus the cloud with ``burst_after`` and ``max_cloud_jobs``. Printed: both
wall times and their ratio, how many prompts the cloud took against the cap, and, from
snapshots taken on comfynb's own loop every 10 ms, how often the cloud got a prompt while a
local server had room and prompts were waiting (0 expected: the cloud only takes the overflow).

    python bench/cloud_burst.py [--node-time 2] [--prompts 40] [--burst-after 4] [--max-cloud-jobs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import comfynb as cn  # noqa: E402
from comfynb import _loop  # noqa: E402
from comfynb.sim import Simulator  # noqa: E402

KEY = "bench-cloud-key-0001"


def tiny() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "burst"}},
    }


async def watch(session: cn.Session, cloud_url: str, samples: list) -> None:
    """Snapshots on comfynb's loop: the prompts on the cloud, (load, limit) of each local server
    that is up, and how many prompts wait client-side (pool queue and unreleased sweep rows)."""
    pool = session._pool
    while True:
        on_cloud = {pid for pid, server in pool.assigned.items() if server.url == cloud_url}
        locals_ = [(s.load, s.limit) for s in pool.servers if s.url != cloud_url and s.health == "up"]
        samples.append((on_cloud, locals_, len(pool.pending) + session._burst.held()))
        await asyncio.sleep(0.01)


def run(urls: list, prompts: int, **options) -> tuple[float, cn.Session, list]:
    session = cn.Session(urls, api_key=KEY, progress=False, **options)
    samples: list = []
    cloud_url = next((str(u) for u in urls if isinstance(u, cn.Cloud)), None)
    watcher = _loop.submit(watch(session, cloud_url, samples)) if cloud_url else None
    with session:
        start = time.perf_counter()
        frame = session.sweep(tiny(), grid={"1.color": range(prompts)}).result(timeout=prompts * 60)
        elapsed = time.perf_counter() - start
        if watcher is not None:
            if watcher.done():  # it stopped on its own: a bug here, not a figure
                watcher.result()
            watcher.cancel()
        assert set(frame.status) == {"success"}, frame.status.value_counts()
        session.frame = frame
    return elapsed, session, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-time", type=float, default=2.0)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--burst-after", type=int, default=4)
    parser.add_argument("--max-cloud-jobs", type=int, default=15)
    args = parser.parse_args()
    times = {"EmptyImage": args.node_time}
    with contextlib.ExitStack() as stack:
        locals_ = [stack.enter_context(Simulator(node_times=times).running()) for _ in range(2)]
        cloud = stack.enter_context(
            Simulator(cloud=True, api_key=KEY, max_parallel=3, node_times=times, seed=1).running()
        )
        urls = [sim.url for sim in locals_]
        alone, _, _ = run(urls, args.prompts)
        both, session, samples = run(
            [*urls, cn.Cloud(cloud.url, max_jobs=3)],
            args.prompts,
            burst_after=args.burst_after,
            max_cloud_jobs=args.max_cloud_jobs,
        )
    used = int((session.frame.server == cloud.url).sum())
    seen: set = set()
    dispatched = with_room = 0
    for on_cloud, locals_, waiting in samples:
        new = on_cloud - seen
        seen |= on_cloud
        dispatched += len(new)
        if new and waiting and any(limit is None or load < limit for load, limit in locals_):
            with_room += 1  # the cloud got work while a local server had room and prompts waited
    print(f"{args.prompts} prompts at {args.node_time:g} s each, 2 local servers (+ cloud: 3 parallel jobs)")
    print(f"  locals alone         {alone:7.2f} s")
    print(f"  locals + cloud burst {both:7.2f} s   ({alone / both:.2f}x faster)")
    print(f"  cloud prompts        {used} of cap {args.max_cloud_jobs} (burst_after={args.burst_after})")
    print(f"  cloud dispatches seen {dispatched}; while a local server had room and prompts waited: {with_room}")
    return 0 if used <= args.max_cloud_jobs and dispatched == used and with_room == 0 and both < alone else 1


if __name__ == "__main__":
    sys.exit(main())
