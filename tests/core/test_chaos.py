"""Chaos: 300 SD-shaped prompts while the server misbehaves in every way at once.

The simulator closes sockets at random times, stalls one, drops 5% of targeted messages (final
``executing`` included), answers ``{}`` to the first history read of every prompt, fails 2% of
HTTP calls, and restarts once. Every job must end within a bound, none may be lost, and every
image must carry the parameters of the job that got it. Random choices come from SEED.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time

from comfynb import Session, Timeouts, as_completed
from comfynb.sim.images import read_params

from .conftest import txt2img

SEED = int(os.environ.get("CHAOS_SEED", 20260107))
N = 300
BOUND = 60.0  # seconds for all jobs to end; they normally need a fraction of that


def chaos(session: Session, rng: random.Random, stop: threading.Event, jobs: list) -> None:
    """Socket drops at random moments, one stall, one restart once a third of the jobs ended."""
    sim = session.simulator
    stalled = restarted = False
    while not stop.wait(rng.uniform(0.2, 0.6)):
        ended = sum(job.done() for job in jobs)
        if not stalled and ended >= N // 6:
            sim.stall(session.client_id)
            stalled = True
        elif not restarted and ended >= N // 3:
            sim.restart(downtime=0.2)
            restarted = True
        else:
            sim.drop_sockets()


def test_chaos():
    rng = random.Random(SEED)
    faults = {
        "drop": {"*": 0.05, "executing_done": 0.05},
        "empty_history": 1,
        "http_errors": {"*": 0.02},
    }
    session = Session.simulated(
        seed=SEED,
        faults=faults,
        node_times={"KSampler": 0.002},
        reconcile_after=0.3,
        backoff=0.05,
        retries=4,
        max_attempts=3,
        timeout=Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
    )
    started = time.monotonic()
    try:
        wanted = {}
        jobs = []
        for i in range(N):
            seed = rng.randrange(2**48)
            text = f"chaos prompt {i}"
            job = session.submit(txt2img(seed, text=text), tags={"i": i})
            wanted[job] = (seed, text)
            jobs.append(job)
        stop = threading.Event()
        monkey = threading.Thread(target=chaos, args=(session, random.Random(rng.random()), stop, jobs))
        monkey.start()
        try:
            for _ in as_completed(jobs, timeout=BOUND):
                pass
        finally:
            stop.set()
            monkey.join()
        elapsed = time.monotonic() - started

        statuses = collections.Counter(job.status for job in jobs)
        attempts = collections.Counter(job.attempts for job in jobs)
        counts = dict(session.simulator.faults.counts)
        server = session._servers[0]
        print(f"\n{N} jobs in {elapsed:.1f} s: statuses {dict(statuses)}, submissions per job {dict(attempts)}")
        print(f"faults injected: {counts}")
        print(f"socket connects: {server.connection.connects}, foreign events: {server.tracker.foreign}")

        errors = {job.prompt_id: repr(job.error) for job in jobs if job.status != "success"}
        assert statuses == {"success": N}, errors
        for job in jobs:
            params = read_params(job.result().images[0].data)
            assert (params["seed"], params["positive"]) == wanted[job], job
        # nothing ran twice because of us: one restart means at most two submissions, and since
        # the restart every queue number the server handed out belongs to a distinct history entry
        assert set(attempts) <= {1, 2}
        engine = session.simulator.engine
        assert engine.counter == len(engine.history)
        assert counts.get("restart") == 1 and counts.get("stall") == 1
        assert counts.get("drop_sockets", 0) > 0 and counts.get("drop:executing_done", 0) > 0
        assert counts.get("empty_history", 0) > N // 2 and counts.get("http_errors", 0) > 0
    finally:
        session.close()
