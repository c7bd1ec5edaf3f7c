"""History reads coalesced: prompts that finish while a read is in flight are read together in
one ``GET /history?max_items=N``; entries pushed out of that window by other clients' prompts are
read alone; every job still gets its own entry."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from comfynb import Session, as_completed
from comfynb.reads import HistoryReads
from comfynb.sim import Simulator
from comfynb.transport import Transport

from .conftest import WAIT, params_of, txt2img


def _history_reads(sim) -> tuple[int, int]:
    """(window reads, single reads) the simulator received."""
    return sim.requests["GET /history"], sim.requests["GET /history/{prompt_id}"]


def _read_from_the_server(job) -> bool:
    """The job's outcome came from the server's history entry, not rebuilt from the events."""
    return [name for name, _ in job.history["status"]["messages"]][:1] == ["execution_start"]


def test_prompts_ending_during_a_read_share_one_window_read():
    # default settings; the first read is held, so the other 19 prompts end while it is in flight
    with Session.simulated(progress=False, faults={"slow_next": {"/history": 0.5}}) as session:
        jobs = [session.submit(txt2img(seed)) for seed in range(20)]
        for job in as_completed(jobs, timeout=WAIT):
            assert params_of(job.result())["seed"] == jobs.index(job)
            assert _read_from_the_server(job)
        windows, singles = _history_reads(session.simulator)
    assert singles == 1  # the held one
    assert 1 <= windows <= 3  # the 19 others, in one window (or a few, if one ended during the next)


def test_entries_of_other_clients_push_ours_out_of_the_window_and_ours_are_read_alone(make_session):
    session = make_session(faults={"slow_next": {"/history": 1.0}})
    sim = session.simulator
    ours = [session.submit(txt2img(seed)) for seed in range(4)]
    for seed in range(40):  # another client's prompts, ending while our first read is held
        body = json.dumps({"prompt": txt2img(100 + seed).to_api()}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{sim.url}/prompt", data=body), timeout=WAIT).read()
    for seed, job in enumerate(ours):
        assert params_of(job.result(WAIT))["seed"] == seed
        assert _read_from_the_server(job)
    windows, singles = _history_reads(sim)
    # the held first read was a single one; ours that missed the window were then read alone
    assert windows >= 1
    assert singles >= 2


def test_entries_written_late_are_found_by_the_next_window(make_session):
    # every entry is missing from the first read that could show it (written after the final message)
    session = make_session(faults={"empty_history": 1, "slow_next": {"/history": 0.3}})
    jobs = [session.submit(txt2img(seed)) for seed in range(12)]
    for seed, job in enumerate(jobs):
        assert params_of(job.result(WAIT))["seed"] == seed
        assert _read_from_the_server(job)
    windows, singles = _history_reads(session.simulator)
    assert singles + windows < 2 * len(jobs)  # late entries were read again together, not one by one


def _post(url: str, seed: int) -> str:
    body = json.dumps({"prompt": txt2img(seed).to_api()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/prompt", data=body), timeout=WAIT) as answer:
        return json.load(answer)["prompt_id"]


async def test_a_prompt_missing_from_two_full_windows_is_read_alone_even_while_windows_are_in_flight():
    with Simulator().running() as sim:  # in its own thread: the POSTs below block
        ours = [_post(sim.url, seed) for seed in range(3)]
        for seed in range(40):  # newer entries: ours are out of any small window
            _post(sim.url, 100 + seed)
        while len(sim.engine.history) < 43:
            await asyncio.sleep(0.01)
        transport = Transport(sim.url)
        reads = HistoryReads(transport)
        try:

            async def busy_then(*prompt_ids: str) -> list:
                """Hold one read in flight (a single one, of a prompt in the window), ask for the
                others meanwhile: they go in the next window read."""
                sim.faults.slow_next = {"/history": 0.2}
                first = asyncio.ensure_future(reads.get(next(reversed(sim.engine.history))))
                await asyncio.sleep(0.05)
                answers = await asyncio.gather(*(reads.get(pid) for pid in prompt_ids))
                assert await first is not None
                return answers

            before = sim.requests["GET /history"]
            assert await busy_then(*ours[1:]) == [None, None]  # missing from a full window: maybe late
            assert await busy_then(*ours[1:]) == [None, None]  # missing again
            assert sim.requests["GET /history"] == before + 2
            singles = sim.requests["GET /history/{prompt_id}"]
            found = await busy_then(*ours[1:])  # now read alone, though a window read could have taken them
            assert [entry["prompt"][1] for entry in found] == ours[1:]
            assert sim.requests["GET /history/{prompt_id}"] == singles + 1 + 2
        finally:
            reads.close()
            await transport.close()


def test_a_window_settles_a_prompt_of_ours_whose_every_message_was_lost(make_session):
    # The first prompt's messages are all lost: no sign of its end reaches us until the queue is
    # empty. A window read for two later prompts (their reads wait behind a held one) brings its
    # entry, and it is settled from it then, long before the last prompt ends.
    session = make_session(node_times={"KSampler": 0.2}, faults={"drop_next": [["*"]], "slow_next": {"/history": 0.6}})
    jobs = [session.submit(txt2img(seed)) for seed in range(8)]
    order = [job.prompt_id for job in as_completed(jobs, timeout=WAIT)]
    (silent,) = session.simulator.faults.drop_for
    assert order.index(silent) < len(order) - 2, order  # not found by the empty queue at the end
    job = session.job(silent)
    assert params_of(job.result())["seed"] == jobs.index(job)
    assert _read_from_the_server(job)
