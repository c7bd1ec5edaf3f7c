"""The simulator's execution ledger, output-file run marks, kill, and the precise fault knobs
that the exactly-once and recovery benchmarks rely on, observed from a plain aiohttp client."""

import asyncio
import collections
import time

import aiohttp
import pytest

from comfynb.sim import Simulator
from comfynb.sim.images import png_text
from comfynb.sim.ledger import RUN_CHUNK, Ledger, output_runs

from .server_helpers import connect, get, ksampler, post, run, tiny


async def test_a_prompt_run_again_after_a_restart_counts_twice_by_ledger_and_by_files(http, tmp_path):
    async with Simulator(root=tmp_path) as sim:
        a = await connect(http, sim.url)
        pid = await run(http, sim.url, a, tiny(1), prompt_id="p-1")
        other = await run(http, sim.url, a, tiny(2))
        sim.restart()  # on the loop: down now, back up at once in the background
        await asyncio.sleep(0.1)
        a = await connect(http, sim.url)
        assert (await get(http, sim.url, "/history"))[1] == {}  # history forgot it...
        await run(http, sim.url, a, tiny(1), prompt_id="p-1")
        assert sim.ledger.executions(pid) == 2 and sim.ledger.executions(other) == 1  # ...the ledger did not
        assert [r.lifetime for r in sim.ledger.runs_of(pid)] == [0, 1]
        assert [o.kind for o in sim.ledger.outages] == ["restart"] and sim.ledger.outages[0].end is not None
    runs = output_runs(tmp_path)  # the files alone tell the same, after the simulator is gone
    assert len(runs[pid]) == 2 and len(runs[other]) == 1
    assert {run_id for _, run_id in runs[pid]} == {r.run_id for r in sim.ledger.runs_of(pid)}
    assert set(png_text(tmp_path / "output" / "tiny_00001_.png")) >= {"prompt", RUN_CHUNK}


async def test_a_restart_records_the_prompts_it_dropped_and_leaves_them_unfinished(http):
    async with Simulator(node_times={"KSampler": 5.0}) as sim:
        a = await connect(http, sim.url)
        first = (await post(http, sim.url, ksampler(1), a.client_id))[1]["prompt_id"]
        second = (await post(http, sim.url, ksampler(2), a.client_id))[1]["prompt_id"]
        await a.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "3")
        sim.restart(0.2)
        outage = sim.ledger.outages[-1]
        assert outage.abandoned == [first, second] and outage.end is None
        await asyncio.sleep(0.4)
        assert outage.end is not None and outage.end - outage.start >= 0.2
        (cut,) = sim.ledger.runs_of(first)
        assert cut.outcome is None and cut.ended_at is None and sim.ledger.runs_of(second) == []
        assert sim.ledger.executions(None, outcome=None) == {first: 1}


async def test_told_marks_the_moment_a_client_could_know_the_outcome(http):
    async with Simulator(faults={"drop_next": [["executing_done", "execution_success", "executed"]]}) as sim:
        a = await connect(http, sim.url)
        _, body = await post(http, sim.url, tiny(1), a.client_id)
        silent = body["prompt_id"]
        heard = await run(http, sim.url, a, tiny(2))  # this one's final messages arrive
        assert sim.ledger.runs_of(heard)[0].told_at is not None
        (quiet,) = sim.ledger.runs_of(silent)
        assert quiet.outcome == "success" and quiet.told_at is None  # nothing reached a client yet
        sim.restart()
        assert sim.ledger.forgotten_untold(quiet)  # gone before anyone knew: a rerun is nobody's fault
        assert not sim.ledger.forgotten_untold(sim.ledger.runs_of(heard)[0])

    async with Simulator(faults={"drop_next": [["*"]]}) as sim:
        a = await connect(http, sim.url)
        _, body = await post(http, sim.url, tiny(3), a.client_id)
        pid = body["prompt_id"]
        while sim.ledger.executions(pid) == 0:
            await asyncio.sleep(0.01)
        assert sim.ledger.runs_of(pid)[0].told_at is None
        assert (await get(http, sim.url, f"/history/{pid}"))[1]  # reading history tells
        assert sim.ledger.runs_of(pid)[0].told_at is not None


async def test_drop_next_and_drop_for_drop_only_the_chosen_prompts_messages_and_log_when(http):
    async with Simulator(faults={"drop_next": [["executing_done"], [], ["execution_success"]]}) as sim:
        a = await connect(http, sim.url)
        ids = []
        for color in range(3):
            _, body = await post(http, sim.url, tiny(10 + color), a.client_id)
            ids.append(body["prompt_id"])
        await a.wait_for(lambda f: f.get("type") == "executing" and f["data"].get("prompt_id") == ids[2])
        done = [f["data"]["prompt_id"] for f in a.frames if f.get("type") == "executing" and not f["data"]["node"]]
        success = [d["prompt_id"] for d in a.of("execution_success")]
        assert done == ids[1:] and success == ids[:2]
        assert [(pid, kind) for _, pid, kind in sim.faults.dropped] == [
            (ids[0], "executing_done"),
            (ids[2], "execution_success"),
        ]
        assert sim.faults.drop_next == [] and set(sim.faults.drop_for) == {ids[0], ids[2]}
        before = time.monotonic()
        sim.faults.update(drop_for={"chosen": ["*"]})
        status, _ = await post(http, sim.url, tiny(20), a.client_id, prompt_id="chosen")
        await asyncio.sleep(0.2)
        assert status == 200 and [f for f in a.frames if f.get("data", {}).get("prompt_id") == "chosen"] == []
        assert all(t >= before for t, pid, _ in sim.faults.dropped if pid == "chosen")
        assert {kind for _, pid, kind in sim.faults.dropped if pid == "chosen"} >= {"executing_done", "executed"}


async def test_injected_errors_can_be_502s_and_slow_next_holds_one_request_once(http):
    async with Simulator(faults={"http_errors": {"/system_stats": 1.0}, "http_error_status": 502}) as sim:
        async with http.get(f"{sim.url}/system_stats") as resp:
            assert resp.status == 502 and "Bad Gateway" in await resp.text()
        sim.faults.update(http_errors={}, slow_next={"/prompt": 0.3})
        a = await connect(http, sim.url)
        started = time.monotonic()
        slow, fast = await asyncio.gather(
            post(http, sim.url, tiny(1), a.client_id), _after(0.05, post(http, sim.url, tiny(2), a.client_id))
        )
        assert slow[1]["number"] == 1 and fast[1]["number"] == 0  # the held one was queued last
        assert time.monotonic() - started >= 0.3
        assert sim.faults.slow_next == {} and sim.faults.counts["slow_next"] == 1


async def _after(seconds: float, coro):
    await asyncio.sleep(seconds)
    return await coro


def test_kill_is_for_good_and_keeps_the_ledger():
    with Simulator(node_times={"KSampler": 5.0}).running() as sim:

        async def scenario() -> str:
            async with aiohttp.ClientSession() as http:
                a = await connect(http, sim.url)
                _, body = await post(http, sim.url, ksampler(3), a.client_id)
                await a.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "3")
                return body["prompt_id"]

        pid = asyncio.run(scenario())
        sim.kill()
        with pytest.raises(RuntimeError, match="killed"):
            sim.restart()
        assert asyncio.run(_refused(sim.url))
        (outage,) = sim.ledger.outages
        assert (outage.kind, outage.end, outage.abandoned) == ("kill", None, [pid])
        assert sim.ledger.runs_of(pid)[0].outcome is None


async def _refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/system_stats"):
            return False
    except aiohttp.ClientConnectionError:
        return True


def test_partition_keeps_running_and_marks_runs_that_happened_while_cut_off():
    with Simulator(node_times={"KSampler": 0.3}).running() as sim:

        async def submit() -> str:
            async with aiohttp.ClientSession() as http:
                a = await connect(http, sim.url)
                _, body = await post(http, sim.url, ksampler(4), a.client_id)
                return body["prompt_id"]

        pid = asyncio.run(submit())
        sim.partition(0.6)  # returns once reachable again; the prompt ran meanwhile
        (outage,) = sim.ledger.outages
        assert outage.kind == "partition" and outage.abandoned == [] and sim.ledger.lifetime == 0
        (cut,) = sim.ledger.runs_of(pid)
        assert cut.outcome == "success" and sim.ledger.cut_off_during(cut)
        copy = Ledger.from_dict(sim.ledger.as_dict())  # as a host process would hand it over
        assert copy.cut_off_during(copy.runs_of(pid)[0]) and copy.executions(pid) == 1


async def test_a_held_request_is_still_handled_after_the_client_gave_up(http):
    async with Simulator(faults={"slow_next": {"/prompt": 0.3}}) as sim:
        a = await connect(http, sim.url)
        body = {"prompt": tiny(7), "client_id": a.client_id, "prompt_id": "late"}
        with pytest.raises(TimeoutError):
            async with http.post(f"{sim.url}/prompt", json=body, timeout=aiohttp.ClientTimeout(total=0.1)):
                pass
        assert sim.ledger.runs_of("late") == []  # not handled yet when we gave up...
        await a.wait_done("late")  # ...but it was, later, as a busy server would
        assert sim.ledger.executions("late") == 1


def test_the_ledger_forgets_its_oldest_runs_past_its_bound():
    ledger = Ledger()
    ledger.runs = collections.deque(maxlen=2)  # MAX_RUNS in miniature
    first = ledger.start("a", "r1", None)
    ledger.start("b", "r2", None)
    ledger.start("a", "r3", None)
    assert [r.run_id for r in ledger.runs] == ["r2", "r3"] and first not in ledger.runs_of("a")
    ledger.start("c", "r4", None)
    assert ledger.runs_of("b") == [] and [r.run_id for r in ledger.runs_of("a")] == ["r3"]


def test_a_copy_queued_while_cut_off_counts_as_hidden_by_the_partition():
    """A prompt waiting in the queue of a cut-off server runs there when its turn comes, whether
    or not a client moved it meanwhile: that run is one a partition hid."""
    with Simulator(node_times={"KSampler": 0.4}).running() as sim:

        async def submit() -> None:
            async with aiohttp.ClientSession() as http:
                a = await connect(http, sim.url)
                await post(http, sim.url, ksampler(5), a.client_id)
                await post(http, sim.url, ksampler(6), a.client_id, prompt_id="gone")
                await post(http, sim.url, ksampler(7), a.client_id, prompt_id="waits")
                async with http.post(f"{sim.url}/queue", json={"delete": ["gone"]}):
                    pass

        asyncio.run(submit())
        sim.partition(0.1)  # over while the first still runs: "waits" starts only after it
        while sim.ledger.executions("waits") == 0:
            time.sleep(0.01)
        (waited,) = sim.ledger.runs_of("waits")
        assert waited.started_at > sim.ledger.outages[0].end  # it ran after the cut, yet...
        assert waited.queued_at < sim.ledger.outages[0].start and sim.ledger.cut_off_during(waited)
        assert sim.ledger.runs_of("gone") == [] and sim.ledger._queued == {}  # the deleted copy left no trace
