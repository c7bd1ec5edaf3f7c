"""Time building the results frame from 10,000 history entries (target: under 1 s).

Run: .venv/bin/python bench/frame_build.py [N]
"""

from __future__ import annotations

import sys
import time

from comfynb.frames import frame_from_history


def synthetic_entry(i: int) -> tuple[str, dict]:
    """A history entry shaped like ComfyUI 0.8.0's for a tagged sweep prompt (1 in 10 interrupted)."""
    pid = f"00000000-0000-4000-8000-{i:012d}"
    t0 = 1_767_800_000_000 + 1000 * i
    end = (
        [
            "execution_interrupted",
            {"prompt_id": pid, "node_id": "3", "node_type": "KSampler", "executed": ["4", "5"], "timestamp": t0 + 700},
        ]
        if i % 10 == 9
        else ["execution_success", {"prompt_id": pid, "timestamp": t0 + 700}]
    )
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": i, "cfg": 4.0 + i % 4, "steps": 20}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    extra = {
        "client_id": "c",
        "create_time": t0,
        "comfynb": {
            "tag": "bench",
            "sweep_id": "s1",
            "index": i,
            "params": {"KSampler.seed": i, "KSampler.cfg": 4.0 + i % 4},
        },
    }
    return pid, {
        "prompt": [i, pid, graph, extra, ["9"]],
        "outputs": {"9": {"images": [{"filename": f"ComfyUI_{i:05d}_.png", "subfolder": "", "type": "output"}]}},
        "status": {
            "status_str": "error" if i % 10 == 9 else "success",
            "completed": i % 10 != 9,
            "messages": [
                ["execution_start", {"prompt_id": pid, "timestamp": t0 + 100}],
                ["execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": t0 + 100}],
                end,
            ],
        },
        "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}},
    }


def main(n: int = 10_000) -> float:
    entries = [synthetic_entry(i) for i in range(n)]
    start = time.perf_counter()
    frame = frame_from_history(entries, "http://127.0.0.1:8188")
    elapsed = time.perf_counter() - start
    assert len(frame) == n
    print(
        f"frame of {n} history entries built in {elapsed:.3f} s (target < 1 s); "
        f"{(frame.status == 'interrupted').sum()} interrupted, {len(frame.columns)} columns"
    )
    return elapsed


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
