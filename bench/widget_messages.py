"""How many comm messages the progress widgets send for a 1,000-prompt sweep at a high event rate.

The sweep runs on the embedded simulator with no simulated work, so events (``progress`` per
sampler step, ``progress_state``, ``executing``, ...) arrive as fast as the simulator makes them.
ipywidgets is given a comm that counts what it would send to the front end (``comm.create_comm``,
the seam ipywidgets uses), and the aggregate view follows the sweep as in a notebook. Target: the
messages per 1,000 jobs stay within 2x of those of the view this replaced (measured at commit
450c50b with the defaults below: 360 messages, 50 comm_open + 310 comm_msg, for 1,000 jobs in
12.1 s), whatever the number of events. The view now sends its whole body as one HTML value per
flush, so the bytes sent are printed too.

    python bench/widget_messages.py [--jobs 1000] [--steps 20] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import comm
from comm.base_comm import BaseComm

SENT: collections.Counter[str] = collections.Counter()
BYTES = collections.Counter()
BEFORE = {"jobs": 1000, "messages": 360, "seconds": 12.1}  # the previous view, commit 450c50b


class CountingComm(BaseComm):
    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        SENT[msg_type] += 1
        BYTES[msg_type] += len(json.dumps(data or {}, default=str)) + sum(len(b) for b in buffers or ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per prompt (one progress event each)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    comm.create_comm = CountingComm

    import comfynb
    from comfynb.sim.library import load_workflow

    wf = comfynb.Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.steps"] = args.steps
    wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 64
    with comfynb.Session.simulated(progress=False) as session:
        started = time.monotonic()
        sweep = session.sweep(wf, grid={"KSampler.seed": range(args.jobs)}, concurrency=args.concurrency)
        view = comfynb.progress(sweep, mode="widget")
        opened = SENT["comm_open"]
        frame = sweep.result(timeout=600)
        took = time.monotonic() - started
        while view.flush():  # what the flusher would still show
            time.sleep(0.05)
        events = sum(job.events for job in sweep.jobs)
    ok = int((frame["status"] == "success").sum())
    print(f"{args.jobs} prompts ({ok} succeeded) in {took:.1f} s; {events} events for them ({events / took:.0f}/s)")
    total = SENT["comm_open"] + SENT["comm_msg"]
    per_1000 = total * 1000 / args.jobs
    before = BEFORE["messages"] * 1000 / BEFORE["jobs"]
    print(
        f"widget messages: {opened} comm_open (all at construction), {SENT['comm_msg']} comm_msg; "
        f"{total} in all, {SENT['comm_msg'] / took:.1f}/s, {sum(BYTES.values()) / 1e6:.2f} MB"
    )
    print(
        f"per 1,000 jobs: now {per_1000:.0f}, before {before:.0f} ({BEFORE['messages'] / BEFORE['seconds']:.1f}/s); "
        f"ratio {per_1000 / before:.2f} (target: at most 2.00)"
    )


if __name__ == "__main__":
    main()
