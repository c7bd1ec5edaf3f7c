"""What faults cost in throughput, with DEFAULT Session settings, side by side in one run.

300 zero-work prompts (EmptyImage -> SaveImage, each a new colour, so nothing is cached) are
submitted at once to one simulator (in a subprocess, so it does not share our CPU), three times:

- ``clean``: no faults;
- ``faults``: 5 % of final ``executing {node: null}`` messages lost, one early empty
  ``/history/{id}`` read per prompt, and 2 % of HTTP requests answered 502;
- ``502 only``: just the 2 % of 502s.

Prints prompts/s of each run and the ratios: faults / clean (target >= 0.9) and the throughput
502s alone cost (target < 10 %). Every job must end with its image; a run that loses one says so.
One run lasts about a third of a second, so single runs scatter by a fifth or more even on a quiet
machine: each round runs the three in a shuffled order, and the figures are medians over
``--rounds`` rounds of the ratios within a round (machine drift cancels out).

    python bench/fault_throughput.py [--n 300] [--rounds 15] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import comfynb  # noqa: E402

SERVE = """
import json, sys
from comfynb.sim import Simulator
sim = Simulator(seed=int(sys.argv[2]), faults=json.loads(sys.argv[1]))
with sim.running():
    print(sim.url, flush=True)
    sys.stdin.read()
    print(json.dumps(dict(sim.faults.counts)), flush=True)
"""

FAULTS = {
    "clean": {},
    "faults": {
        "drop": {"executing_done": 0.05},
        "empty_history": 1,
        "http_errors": {"*": 0.02},
        "http_error_status": 502,
    },
    "502 only": {"http_errors": {"*": 0.02}, "http_error_status": 502},
}


def prompts(n: int, offset: int) -> list[dict]:
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


def run(name: str, n: int, seed: int) -> tuple[float, int, dict]:
    """(prompts/s, jobs that did not end in success, faults injected) for one configuration."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, json.dumps(FAULTS[name]), str(seed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        url = server.stdout.readline().strip()
        with comfynb.Session(url, progress=False) as session:
            start = time.perf_counter()
            jobs = [session.submit(graph) for graph in prompts(n, seed * 10**6)]
            failed = 0
            for job in comfynb.as_completed(jobs, timeout=600):
                if job.status != "success" or not job.result().images:
                    failed += 1
            wall = time.perf_counter() - start
        server.stdin.close()
        counts = json.loads(server.stdout.readline() or "{}")
    finally:
        server.wait(10)
    return n / wall, failed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15, help="the three runs are repeated; medians are compared")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("comfynb").setLevel(logging.ERROR)  # recoveries are logged as warnings
    print(f"{args.n} zero-work prompts at once, one simulator in a subprocess, default Session settings")
    rates: dict[str, list[float]] = {name: [] for name in FAULTS}
    order = random.Random(args.seed)
    for r in range(args.rounds):
        for name in order.sample(list(FAULTS), len(FAULTS)):
            rate, failed, counts = run(name, args.n, args.seed + r)
            rates[name].append(rate)
            injected = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
            lost = f"  {failed} NOT SUCCESSFUL" if failed else ""
            print(f"{name:>9}: {rate:7.1f} prompts/s  (injected: {injected}){lost}", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"medians over {args.rounds} round(s): " + ", ".join(f"{k} {v:.1f}/s" for k, v in median.items()))
    ratio = statistics.median(f / c for f, c in zip(rates["faults"], rates["clean"]))
    cost = 1 - statistics.median(e / c for e, c in zip(rates["502 only"], rates["clean"]))
    print(f"    ratio: {ratio:.2f} (faults / clean; target >= 0.9){'' if ratio >= 0.9 else '  MISSED'}")
    print(f"502 cost: {cost * 100:.0f} % of throughput (target < 10 %){'' if cost < 0.1 else '  MISSED'}")


if __name__ == "__main__":
    main()
