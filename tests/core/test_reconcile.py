"""Never trust the socket alone: each trigger of reconciliation, and what it must not do."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import aiohttp

from comfynb import Timeouts
from comfynb.sim.library import load_workflow

from .conftest import WAIT, params_of, txt2img
from .test_faults import run_all, wait_until

QUIET = Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=60.0)  # no pings: only our own checks


def reconciles(caplog) -> int:
    return sum("reconciling" in r.getMessage() for r in caplog.records)


async def post_raw(url: str, prompt: dict, client_id: str | None = None) -> str:
    """Another client's prompt, posted with plain aiohttp."""
    body = {"prompt": prompt, "prompt_id": str(uuid.uuid4())}
    if client_id:
        body["client_id"] = client_id
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/prompt", data=json.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()
    return body["prompt_id"]


async def test_queued_jobs_behind_a_long_prompt_stay_queued(make_session, caplog):
    caplog.set_level(logging.DEBUG, logger="comfynb.session")
    session = make_session(node_times={"ImageBlur": 0.4}, reconcile_after=0.15)
    await post_raw(session.simulator.url, load_workflow("slow"))  # ~1.2 s of someone else's work
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    await asyncio.sleep(0.9)  # several silent periods while our jobs wait
    assert reconciles(caplog) >= 2
    assert [j.status for j in jobs] == ["queued"] * 3
    for seed, job in enumerate(jobs):
        assert params_of(await job)["seed"] == seed
        assert job.attempts == 1


def test_queue_shrink_without_completion_reconciles(make_session):
    """Final message and outcome both lost; silence is far off: the shrinking queue is the clue."""
    session = make_session(reconcile_after=60.0, faults={"drop": {"executing_done": 1.0, "execution_success": 1.0}})
    run_all(session, range(5))


def test_reconnect_reconciles_all_unfinished_jobs(make_session, caplog):
    caplog.set_level(logging.INFO, logger="comfynb.session")
    session = make_session(
        reconcile_after=60.0, timeout=QUIET, node_times={"KSampler": 0.1}, faults={"drop": {"executing_done": 1.0}}
    )
    jobs = [session.submit(txt2img(seed)) for seed in range(4)]
    wait_until(lambda: jobs[0].status == "running")
    session.simulator.drop_sockets()
    for seed, job in enumerate(jobs):
        assert params_of(job.result(WAIT))["seed"] == seed
    assert any("reconnected" in r.getMessage() for r in caplog.records)


def test_check_forces_reconciliation_of_one_job(make_session):
    session = make_session(reconcile_after=60.0, timeout=QUIET)
    session.submit(txt2img(0)).result(WAIT)  # the socket works
    server = session._servers[0]
    wait_until(lambda: server._sign is None and not server._reconciling)  # job 0's own checks are over
    session.simulator.stall(session.client_id)  # now it hears nothing, and nothing would notice soon
    job = session.submit(txt2img(1))
    wait_until(lambda: session.simulator.engine.remaining() == 0 and job.status != "pending")
    assert not job.done()
    report = session.check(job.prompt_id)
    assert report["queue"] is None and report["history"] == "success"
    assert report["job"]["status"] == "completed"
    assert report["local_status"] == "success"
    assert params_of(job.result(WAIT))["seed"] == 1


def test_muted_socket_is_detected_and_replaced(make_session):
    """Protocol §6.5: when an older socket with our clientId goes away, the server unregisters the
    id and our open socket hears nothing more, not even `status`. Pings still work, so only the
    silence check (with the server's queue as witness) can notice."""
    session = make_session(timeout=QUIET)
    session.submit(txt2img(0)).result(WAIT)

    async def mute():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{session.simulator.url}/ws", params={"clientId": session.client_id}):
                pass  # registering and leaving removes our id from the server's socket table

    asyncio.run(mute())
    before = session._servers[0].connection.connects
    run_all(session, range(1, 4))
    wait_until(lambda: session._servers[0].connection.connects > before)
    heard = run_all(session, range(4, 6))
    assert all(job.last_event == "executing" for job in heard)  # the new socket hears the end again


async def test_jobs_that_hear_nothing_end_although_other_clients_keep_the_socket_busy(make_session):
    """Every message of our prompts is lost, yet the socket never falls silent: another client's
    prompts keep `status` broadcasts coming. Our jobs still end, from the server's record."""
    session = make_session(faults={"drop": {"*": 1.0}})
    other = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    stop = asyncio.Event()

    async def other_client():
        color = 0
        while not stop.is_set():
            color += 1
            other["1"]["inputs"]["color"] = color
            await post_raw(session.simulator.url, other)
            await asyncio.sleep(0.05)

    async def outcome(job):
        return await job

    busy = asyncio.create_task(other_client())
    try:
        jobs = [session.submit(txt2img(seed)) for seed in range(3)]
        for seed, job in enumerate(jobs):
            assert params_of(await asyncio.wait_for(outcome(job), 10))["seed"] == seed
    finally:
        stop.set()
        await busy
    assert session.simulator.faults.counts["drop"] > 0 and all(job.events == 0 for job in jobs)
