"""Client memory when saving a large output file: ``ref.save()`` streams it to disk, ``ref.data``
holds it whole. Both figures side by side (tracemalloc peaks), for one file of N MB.

The simulator runs in a child process so that only the client's allocations are traced; the file
is written straight into its output folder (a stand-in for a long video).

Run: .venv/bin/python bench/media_save.py [MB]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from comfynb.results import FileRef
from comfynb.session import Session

SIM = """
import sys
from comfynb.sim import Simulator
with Simulator(root=sys.argv[1]).running() as sim:
    print(sim.url, flush=True)
    sys.stdin.read()
"""


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def traced(fn) -> tuple[float, int]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return elapsed, peak


def main(size_mb: int = 200) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "output" / "video").mkdir(parents=True)
        (Path(root) / "output" / "video" / "long.mp4").write_bytes(os.urandom(size_mb * 1_000_000))
        sim = subprocess.Popen(
            [sys.executable, "-c", SIM, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            url = sim.stdout.readline().strip()
            with Session(url, progress=False) as session:
                view = session._servers[0].transport.view

                def ref() -> FileRef:
                    return FileRef("long.mp4", "video", "output", "1", url, view, "video")

                out = Path(root) / "saved"
                streamed = traced(lambda: ref().save(out / "streamed.mp4"))
                held = traced(lambda: ref().data)
                assert (out / "streamed.mp4").stat().st_size == size_mb * 1_000_000
        finally:
            sim.stdin.close()
            sim.wait(30)
    print(f"one {size_mb} MB file from /view (tracemalloc on):")
    print(f"  ref.save(path), streamed to disk: peak {mb(streamed[1]):>10} in {streamed[0]:.2f} s")
    print(f"  ref.data, held in memory:         peak {mb(held[1]):>10} in {held[0]:.2f} s")
    print(f"  ratio held/streamed: {held[1] / max(1, streamed[1]):.0f}x")
    return {"streamed": streamed[1], "held": held[1]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mb", nargs="?", type=int, default=200)
    args = parser.parse_args()
    main(args.mb)
