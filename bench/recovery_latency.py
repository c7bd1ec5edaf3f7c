"""How long a lost final message costs: from the moment the final ``executing {node: null}`` of
one of our prompts would have been sent (the simulator drops it and records when) to the job's
result in the caller's hands, with DEFAULT Session settings.

Three cases, each on a fresh simulator, one sample at a time:

- ``lone``: nothing follows the prompt; the server goes idle;
- ``ours_follow``: two more of our prompts are queued behind it (their ``execution_start``
  says ours ended);
- ``other_follows``: another client's prompt is queued behind it (we only see the ``status``
  broadcasts of the shrinking queue).

``--outcome-too`` also drops the prompt's ``executed`` and ``execution_success`` messages. A
``no loss`` row gives the same latency for prompts whose messages all arrive (measured from the
moment the server wrote the history), for reference. Target: p99 under 1 s in every case.

    python bench/recovery_latency.py [--n 100] [--outcome-too]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import comfynb  # noqa: E402
from comfynb.sim.library import load_workflow  # noqa: E402

CASES = ("lone", "ours_follow", "other_follows")
RUN_TIME = 0.2  # KSampler seconds: long enough to queue followers behind the prompt measured


def workflow(seed: int) -> comfynb.Workflow:
    wf = comfynb.Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.seed"] = seed
    wf["KSampler.steps"] = 2
    wf["EmptyLatentImage.width"] = wf["EmptyLatentImage.height"] = 64
    return wf


def post_as_other_client(url: str, seed: int) -> None:
    body = {"prompt": workflow(seed).to_api(), "client_id": "someone-else"}
    request = urllib.request.Request(f"{url}/prompt", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def sample(session: comfynb.Session, case: str, seed: int, kinds: list[str] | None) -> float | None:
    """One measurement in seconds; None if the setup did not happen as intended (discarded)."""
    sim = session.simulator
    job = session.submit(workflow(seed))
    if kinds:
        sim.faults.update(drop_for={job.prompt_id: kinds})
    while job.status != "running" and not job.done():
        time.sleep(0.001)
    followers = []
    if case == "ours_follow":
        followers = [session.submit(workflow(seed + 10_000 + i)) for i in range(2)]
    elif case == "other_follows":
        post_as_other_client(sim.url, seed + 20_000)
    job.result(60)
    in_hand = time.monotonic()
    for follower in followers:
        follower.result(60)
    while sim.engine.remaining():
        time.sleep(0.005)
    (run,) = sim.ledger.runs_of(job.prompt_id)
    if kinds:
        lost = [t for t, pid, kind in sim.faults.dropped if pid == job.prompt_id and kind == "executing_done"]
        if not lost:
            return None  # finished before the drop was armed
        since = lost[0]
    else:
        since = run.ended_at
    if case != "lone" and not any(
        r.started_at - run.ended_at < 0.05 for r in sim.ledger.runs if r.started_at >= run.ended_at
    ):
        return None  # the follower was not queued behind it in time
    return in_hand - since


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


def measure(case: str, n: int, kinds: list[str] | None) -> list[float]:
    values: list[float] = []
    with comfynb.Session.simulated(progress=False, node_times={"KSampler": RUN_TIME}) as session:
        seed = 0
        while len(values) < n:
            seed += 1
            value = sample(session, case, seed, kinds)
            if value is not None:
                values.append(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="samples per case")
    parser.add_argument("--outcome-too", action="store_true", help="drop executed and execution_success as well")
    parser.add_argument("--only", nargs="*", choices=CASES)
    args = parser.parse_args()
    logging.getLogger("comfynb").setLevel(logging.ERROR)  # recoveries are logged as warnings
    kinds = ["executing_done"] + (["executed", "execution_success"] if args.outcome_too else [])
    print(f"recovery of a lost final message ({', '.join(kinds)}), default Session settings, n={args.n} per case")
    print(
        f"{'case':>14} {'lost':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}   {'no loss p50':>11} {'p99':>7}  target"
    )
    for case in args.only or CASES:
        lost = percentiles(measure(case, args.n, kinds))
        clean = percentiles(measure(case, max(10, args.n // 5), None))
        verdict = "ok" if lost[1] < 1.0 else "MISSED (p99 >= 1 s)"
        print(
            f"{case:>14} {args.n:>6} {lost[0] * 1000:>9.1f} {lost[1] * 1000:>9.1f} {lost[2] * 1000:>9.1f}   "
            f"{clean[0] * 1000:>11.1f} {clean[1] * 1000:>7.1f}  {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
