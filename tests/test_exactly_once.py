"""Exactly once: after a restart, a kill, a partition or a server coming back mid-failover, and
after a POST whose answer never came, every prompt ends with its own result and runs once.

Executions are counted by the simulators themselves (the files they saved and their ledgers, both
kept across restarts), never by asking the client. The failover scenarios are the ones of
``bench/failover_stress.py``, a few fixed seeds each (the benchmark runs hundreds).
"""

from __future__ import annotations

import threading

import pytest
from core.conftest import txt2img

from bench import failover_stress
from comfynb import Session, Timeouts
from comfynb.sim.ledger import output_runs

SEEDS = (11, 22, 33)
WAIT = 60.0


@pytest.mark.parametrize("scenario", failover_stress.SCENARIOS)
def test_failover_scenarios_run_every_prompt_once_with_its_own_result(scenario):
    moved = 0
    for seed in SEEDS:
        out = failover_stress.iteration(scenario, seed)
        assert out.unended == 0 and set(out.statuses) == {"success"}, (seed, out)
        assert out.misattributed == [], (seed, out.misattributed)
        # a partition (or a server dying before it told anyone) may make a second run
        # unavoidable; nothing else may
        assert out.avoidable == 0, (seed, "\n".join(out.details))
        moved += out.moved
    if scenario == "kill":
        assert moved, "no job was moved off the killed server, so failover was not exercised"


def _idle(sim, settle: float = 0.0) -> None:
    """Wait ``settle`` s (a late copy lands meanwhile), then until nothing is queued or running."""
    pause = threading.Event()
    pause.wait(settle)
    for _ in range(1000):
        if not sim.engine.remaining():
            return
        pause.wait(0.01)


def _session(**faults) -> Session:
    # the client gives up on an answer after 0.5 s; everything else is the default
    return Session.simulated(
        progress=False,
        node_times={"KSampler": 2.0},
        faults=faults,
        timeout=Timeouts(connect=2.0, read=0.5, total=1.0),
    )


def test_a_post_the_server_is_still_handling_when_we_give_up_does_not_run_twice():
    """The server holds our POST for 1.5 s before handling it (overloaded, or a proxy queueing
    it); we time out after 0.5 s. Sending again before that POST has landed gives the server two
    copies: the client must look again once the first POST had time to land (queue, jobs API,
    history), and delete a second copy that appears anyway."""
    with _session(slow_next={"/prompt": 1.5}) as session:
        sim = session.simulator
        job = session.submit(txt2img(5))
        assert job.result(WAIT).images and job.status == "success"
        _idle(sim, settle=1.0)  # the held POST was released before the result came (2 s run)
        assert sim.faults.counts["slow_next"] == 1
        starts = sim.ledger.executions(job.prompt_id, outcome=None)
        assert starts == 1, f"prompt started {starts} times: {sim.ledger.runs_of(job.prompt_id)}"
        assert len(output_runs(sim.root)[job.prompt_id]) == 1


def test_a_post_whose_answer_is_lost_does_not_run_twice():
    with _session(lost_responses={"/prompt": 1.0}) as session:
        sim = session.simulator
        jobs = [session.submit(txt2img(seed)) for seed in (1, 2)]
        for job in jobs:
            assert job.result(WAIT).images
        _idle(sim)
        assert sim.faults.counts["lost_responses"] >= 2  # every POST's answer was lost
        for job in jobs:
            assert sim.ledger.executions(job.prompt_id, outcome=None) == 1, sim.ledger.runs_of(job.prompt_id)


def test_a_post_answered_too_late_does_not_run_twice():
    """The server handles the POST at once but answers after 1 s (latency); we gave up at 0.5 s.
    Once the late answers stop, the prompt must have run exactly once."""
    with _session() as session:
        sim = session.simulator
        sim.faults.update(latency=1.0)
        job = session.submit(txt2img(3))
        pause = threading.Event()
        for _ in range(1000):  # a second delayed answer: our first POST has timed out by then
            if sim.faults.counts["latency"] >= 2:
                break
            pause.wait(0.01)
        sim.faults.update(latency=0.0)
        assert job.result(WAIT).images
        _idle(sim)
        assert sim.ledger.executions(job.prompt_id, outcome=None) == 1, sim.ledger.runs_of(job.prompt_id)
