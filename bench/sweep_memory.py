"""Client memory of a 10,000-prompt sweep's jobs (target: under 100 MB), measured with tracemalloc.

The simulator runs in a child process so that only the client's allocations are traced. The
workflow is the SD-shaped default graph (7 nodes, 64x64); every row is a different seed.

Run: .venv/bin/python bench/sweep_memory.py [N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import comfynb.sim
from comfynb.session import Session
from comfynb.workflow import Workflow

SIM = """
import sys, time
from comfynb.sim import Simulator
with Simulator(max_history=100000).running() as sim:
    print(sim.url, flush=True)
    sys.stdin.read()
"""


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(n: int = 10_000, concurrency: int = 8) -> dict[str, int]:
    sim = subprocess.Popen([sys.executable, "-c", SIM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = sim.stdout.readline().strip()
        wf = Workflow.load(Path(comfynb.sim.__file__).parent / "workflows" / "default_txt2img.json")
        wf["Empty Latent Image.width"] = wf["Empty Latent Image.height"] = 64  # the simulator draws faster
        with Session(url, progress=False) as session:
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            sweep = session.sweep(wf, grid={"KSampler.seed": range(n)}, concurrency=concurrency, tag="memory")
            held = tracemalloc.get_traced_memory()[0] - base
            frame = sweep.result(timeout=3600)
            elapsed = time.perf_counter() - start
            gc.collect()
            _current, peak = tracemalloc.get_traced_memory()
            del frame
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            assert sweep.counts() == {"success": n}, sweep.counts()
        figures = {"held": held, "peak": peak - base, "finished": after}
        print(f"{n} prompts in {elapsed:.1f} s ({n / elapsed:.0f}/s, tracemalloc on), concurrency {concurrency}")
        print(f"  just created (rows are built as they are sent): {mb(held)}")
        print(f"  peak while running (frame included):           {mb(peak - base)}")
        print(f"  all finished, jobs and results kept:           {mb(after)} (target < 100 MB)")
        return figures
    finally:
        sim.stdin.close()
        sim.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    main(args.n, args.concurrency)
