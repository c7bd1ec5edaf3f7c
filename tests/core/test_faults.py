"""One test per simulator fault knob: every job still ends with its own result, nothing runs twice."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from comfynb import JobLost, Timeouts, TransportError, as_completed

from .conftest import WAIT, params_of, txt2img


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def run_all(session, seeds, **submit):
    """Submit one job per seed; check every result is there and carries its own seed."""
    jobs = {session.submit(txt2img(seed), **submit): seed for seed in seeds}
    for job in as_completed(jobs, timeout=WAIT):
        assert job.status == "success", (job, job.error)
        assert params_of(job.result())["seed"] == jobs[job]
    return list(jobs)


def wait_until(predicate, timeout=WAIT):
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def assert_ran_once(session, jobs):
    """The server saw each prompt exactly once: one history entry each, queue numbers 0..N-1."""
    sim = session.simulator
    sim.faults.update(lost_responses={}, http_errors={}, latency=0.0)  # the check itself reads unharmed
    history = get_json(f"{sim.url}/history?max_items=1000")
    assert sorted(history) == sorted(j.prompt_id for j in jobs)
    listed = get_json(f"{sim.url}/api/jobs?limit=1000")["jobs"]
    assert sorted(j["priority"] for j in listed) == list(range(len(jobs)))


def connects(session) -> int:
    return session._servers[0].connection.connects


def test_close_every(make_session):
    session = make_session(faults={"close_every": 0.15}, node_times={"KSampler": 0.05})
    run_all(session, range(12))
    assert session.simulator.faults.counts["close_every"] > 0
    assert connects(session) > 1


def test_close_after(make_session):
    session = make_session(faults={"close_after": 15})
    run_all(session, range(8))
    assert session.simulator.faults.counts["close_after"] > 0
    assert connects(session) > 1


def test_drop_every_final_executing(make_session):
    session = make_session(faults={"drop": {"executing_done": 1.0}})
    jobs = run_all(session, range(6))
    assert session.simulator.faults.counts["drop:executing_done"] == len(jobs)


def test_drop_a_share_of_all_targeted_messages(make_session):
    session = make_session(faults={"drop": {"*": 0.3}}, seed=5)
    run_all(session, range(10))
    assert session.simulator.faults.counts["drop"] > 0


def test_stall_after_is_caught_by_the_heartbeat(make_session):
    session = make_session(faults={"stall_after": 30}, node_times={"KSampler": 0.05})
    run_all(session, range(8))
    assert session.simulator.faults.counts["stall"] == 1
    assert connects(session) > 1


def test_stall_is_caught_by_silence_without_heartbeat(make_session):
    """No pings to miss: only the silence check while jobs are unfinished can notice."""
    timeouts = Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=60.0)
    session = make_session(timeout=timeouts, node_times={"KSampler": 0.1})
    first = session.submit(txt2img(100))
    wait_until(lambda: first.status == "running")
    session.simulator.stall(session.client_id)
    run_all(session, range(4))
    assert first.result(WAIT) and connects(session) > 1


def test_empty_history(make_session):
    session = make_session(faults={"empty_history": 3})
    jobs = run_all(session, range(5))
    assert session.simulator.faults.counts["empty_history"] >= 3 * len(jobs)


def test_http_errors_everywhere(make_session):
    session = make_session(faults={"http_errors": {"*": 0.2}}, seed=2)
    run_all(session, range(10))
    assert session.simulator.faults.counts["http_errors"] > 0


def test_http_errors_on_post_prompt_never_run_twice(make_session):
    session = make_session(faults={"http_errors": {"/prompt": 0.5}}, seed=4)
    jobs = run_all(session, range(10))
    assert session.simulator.faults.counts["http_errors"] > 0
    assert_ran_once(session, jobs)


def test_lost_responses_on_post_prompt_never_run_twice(make_session):
    session = make_session(faults={"lost_responses": {"/prompt": 0.5}}, seed=1)
    jobs = run_all(session, range(10))
    assert session.simulator.faults.counts["lost_responses"] > 0
    assert_ran_once(session, jobs)


def test_lost_responses_everywhere(make_session):
    session = make_session(faults={"lost_responses": {"*": 0.15}}, seed=6)
    jobs = run_all(session, range(10))
    assert session.simulator.faults.counts["lost_responses"] > 0
    assert_ran_once(session, jobs)


def test_latency(make_session):
    session = make_session(faults={"latency": 0.1})
    run_all(session, range(4))
    assert session.simulator.faults.counts["latency"] > 0


def test_restart_resubmits_lost_jobs(make_session):
    session = make_session(node_times={"KSampler": 0.15})
    jobs = [session.submit(txt2img(seed)) for seed in range(6)]
    wait_until(lambda: jobs[1].status == "running")
    session.simulator.restart(downtime=0.2)
    for seed, job in enumerate(jobs):
        assert params_of(job.result(WAIT))["seed"] == seed
    assert max(j.attempts for j in jobs) == 2
    assert jobs[0].attempts == 1  # it had finished before the restart


def test_restart_without_resubmit_marks_jobs_lost(make_session):
    session = make_session(node_times={"KSampler": 0.15}, resubmit_lost=False)
    jobs = [session.submit(txt2img(seed)) for seed in range(5)]
    wait_until(lambda: jobs[1].status == "running")
    session.simulator.restart(downtime=0.1)
    for _job in as_completed(jobs, timeout=WAIT):
        pass
    assert jobs[0].status == "success"
    lost = [j for j in jobs if j.status == "lost"]
    assert lost and all(j.status in ("success", "lost") for j in jobs)
    with pytest.raises(JobLost, match="restarted"):
        lost[0].result()


def test_without_jobs_api_queue_and_history_are_used(make_session):
    session = make_session(
        jobs_api=False,
        faults={"lost_responses": {"/prompt": 0.4}, "empty_history": 1},
        node_times={"KSampler": 0.05},
        seed=8,
    )
    jobs = [session.submit(txt2img(seed)) for seed in range(6)]
    wait_until(lambda: jobs[1].status == "running")
    session.simulator.restart(downtime=0.1)
    for seed, job in enumerate(jobs):
        assert params_of(job.result(WAIT))["seed"] == seed
    assert session._servers[0].transport.jobs_api is False
    assert session.simulator.faults.counts["lost_responses"] > 0


def test_a_prompt_every_post_of_which_fails_ends_lost_saying_why(make_session):
    """When the server answers every POST /prompt with a 500, the job does not wait forever: it ends
    as lost once its attempts are used, and the error names the unanswered POST, not a restart."""
    session = make_session(faults={"http_errors": {"/prompt": 1.0}}, max_attempts=2, retries=1)
    job = session.submit(txt2img(1))
    with pytest.raises(JobLost, match="POST went unanswered") as caught:
        job.result(timeout=WAIT)
    assert "restarted" not in str(caught.value)
    assert job.status == "lost" and job.attempts == 2
    assert session.simulator.engine.history == {}


def test_a_job_whose_outcome_cannot_be_read_ends_after_give_up_after(make_session):
    """A server that is up but fails every history and jobs-API read does not keep a finished job
    waiting forever: after ``give_up_after`` seconds of failed reads it ends with an error that
    says where the outcome may still be found."""
    session = make_session(faults={"http_errors": {"/history": 1.0, "/api/jobs": 1.0}}, give_up_after=1.0)
    job = session.submit(txt2img(1))
    with pytest.raises(TransportError, match="could not read the outcome") as caught:
        job.result(timeout=WAIT)
    assert "session.check()" in str(caught.value)
    assert job.status == "error"
    assert len(session.simulator.engine.history) == 1  # it did run: only its outcome was unreadable
