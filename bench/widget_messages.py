"""How many comm messages the progress widgets send for a 1,000-prompt sweep at a high event rate.

The sweep runs on the embedded simulator with no simulated work, so events (``progress`` per
sampler step, ``progress_state``, ``executing``, ...) arrive as fast as the simulator makes them.
ipywidgets is given a comm that counts what it would send to the front end (``comm.create_comm``,
the seam ipywidgets uses), and the aggregate view follows the sweep as in a notebook. Target: the
messages stay in the low thousands at most, whatever the number of events.

    python bench/widget_messages.py [--jobs 1000] [--steps 20] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import collections
import time

import comm
from comm.base_comm import BaseComm

SENT: collections.Counter[str] = collections.Counter()


class CountingComm(BaseComm):
    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        SENT[msg_type] += 1


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
    print(
        f"widget messages: {opened} comm_open (all at construction), {SENT['comm_msg']} comm_msg; "
        f"{SENT['comm_open'] + SENT['comm_msg']} in all, {SENT['comm_msg'] / took:.1f}/s"
    )
    print("target: low thousands at most for 1,000 jobs")


if __name__ == "__main__":
    main()
