"""Each fault knob of the simulator, observed from a plain aiohttp client."""

import asyncio
import time

import aiohttp
import pytest

from comfynb.sim import Faults, Simulator

from .server_helpers import chain, connect, get, post, run, tiny


async def test_close_every_closes_all_sockets_periodically_until_switched_off(http):
    async with Simulator(faults={"close_every": 0.1}) as sim:
        a, b = await connect(http, sim.url), await connect(http, sim.url)
        await asyncio.wait_for(asyncio.gather(a.closed.wait(), b.closed.wait()), 2)
        assert sim.faults.counts["close_every"] >= 2
        sim.faults.update(close_every=None)
        c = await connect(http, sim.url)
        await asyncio.sleep(0.3)
        assert not c.closed.is_set()


async def test_close_after_k_messages(http):
    async with Simulator(faults={"close_after": 3}) as sim:
        a = await connect(http, sim.url)
        await post(http, sim.url, tiny(1), a.client_id)
        await asyncio.wait_for(a.closed.wait(), 2)
        assert a.types() == ["status", "status", "status"]
        assert sim.faults.counts["close_after"] == 1


async def test_drop_final_executing_and_by_type(http):
    async with Simulator(faults={"drop": {"executing_done": 1.0}}) as sim:
        a = await connect(http, sim.url)
        _, body = await post(http, sim.url, tiny(2), a.client_id)
        await a.wait_for(lambda f: f.get("type") == "execution_success")
        await asyncio.sleep(0.05)
        assert a.types()[-2:] == ["execution_success", "status"]
        assert body["prompt_id"] in (await get(http, sim.url, f"/history/{body['prompt_id']}"))[1]
        assert sim.faults.counts["drop:executing_done"] == 1
        sim.faults.update(drop={"progress_state": 1.0, "executed": 1.0})
        a.frames.clear()
        await run(http, sim.url, a, tiny(3))
        assert "progress_state" not in a.types() and "executed" not in a.types() and "executing" in a.types()
        sim.faults.update(drop={"*": 1.0})
        a.frames.clear()
        _, body = await post(http, sim.url, tiny(4), a.client_id)
        await asyncio.sleep(0.1)
        assert set(a.types()) == {"status"}  # broadcasts are not targeted messages
        assert sim.faults.counts["drop"] >= 10


async def _dropped_pattern(http, seed: int) -> list[str]:
    async with Simulator(faults={"drop": {"progress_state": 0.5}}, seed=seed) as sim:
        a = await connect(http, sim.url)
        await run(http, sim.url, a, chain(5, blurs=6))
        return a.types()


async def test_faults_are_deterministic_from_the_seed(http):
    first, again, other = (
        await _dropped_pattern(http, 7),
        await _dropped_pattern(http, 7),
        await _dropped_pattern(http, 8),
    )
    assert first == again and first != other


async def test_stall_after_silences_the_first_socket_once(http):
    async with Simulator(faults={"stall_after": 2}) as sim:
        a = await connect(http, sim.url, heartbeat=0.2)
        await post(http, sim.url, tiny(6), a.client_id)
        await asyncio.sleep(0.1)
        b = await connect(http, sim.url)  # the fault fires once: b is served
        pid = await run(http, sim.url, b, tiny(7))
        assert a.types() == ["status", "status"]
        assert sim.faults.counts["stall"] == 1 and pid
        await asyncio.wait_for(a.closed.wait(), 2)  # no pong: the client's heartbeat gives up
        assert not b.closed.is_set()


async def test_stall_method_targets_one_client(http):
    async with Simulator() as sim:
        a, b = await connect(http, sim.url), await connect(http, sim.url)
        sim.stall(a.client_id)
        await run(http, sim.url, b, tiny(8))
        _, _body = await post(http, sim.url, tiny(9), a.client_id)
        await b.wait_for(
            lambda f: (
                f.get("type") == "status"
                and f["data"]["status"]["exec_info"]["queue_remaining"] == 0
                and len(b.of("status")) >= 7
            )
        )
        assert a.types() == ["status"] and not a.closed.is_set()


async def test_empty_history_for_the_first_reads(http):
    async with Simulator(faults={"empty_history": 2}) as sim:
        a = await connect(http, sim.url)
        pid = await run(http, sim.url, a, tiny(10))
        reads = [(await get(http, sim.url, f"/history/{pid}"))[1] for _ in range(3)]
        assert reads[0] == reads[1] == {} and pid in reads[2]
        assert sim.faults.counts["empty_history"] == 2
        assert (await get(http, sim.url, "/history/unknown"))[1] == {}
        assert sim.faults.counts["empty_history"] == 2  # unknown ids are not counted


async def test_http_errors_per_route_and_everywhere(http):
    async with Simulator(faults={"http_errors": {"/prompt": 1.0}}) as sim:
        for path in ("/prompt", "/api/prompt"):
            async with http.post(sim.url + path, json={"prompt": tiny(11)}) as r:
                assert r.status == 500 and r.content_type == "text/plain"
        assert (await get(http, sim.url, "/queue"))[0] == 200
        assert (await get(http, sim.url, "/queue"))[1]["queue_pending"] == []  # never handled
        sim.faults.update(http_errors={"*": 1.0})
        assert (await get(http, sim.url, "/system_stats"))[0] == 500
        sim.faults.update(http_errors={"/history": 0.5})
        codes = [(await get(http, sim.url, "/history/x"))[0] for _ in range(40)]
        assert 5 < codes.count(500) < 35
        assert sim.faults.counts["http_errors"] == 3 + codes.count(500)


async def test_lost_responses_are_handled_but_never_answered(http):
    async with Simulator(faults={"lost_responses": {"/prompt": 1.0}}) as sim:
        a = await connect(http, sim.url)
        with pytest.raises(aiohttp.ClientError):
            await post(http, sim.url, tiny(12), a.client_id, prompt_id="lost-but-run")
        await a.wait_done("lost-but-run")
        assert "lost-but-run" in (await get(http, sim.url, "/history/lost-but-run"))[1]
        assert sim.faults.counts["lost_responses"] >= 1


async def test_latency_is_added_to_every_response(http):
    async with Simulator(faults={"latency": 0.3}) as sim:
        start = time.perf_counter()
        assert (await get(http, sim.url, "/queue"))[0] == 200
        assert time.perf_counter() - start >= 0.3
        sim.faults.update(latency=0.0)
        start = time.perf_counter()
        await get(http, sim.url, "/queue")
        assert time.perf_counter() - start < 0.3
        assert sim.faults.counts["latency"] == 1


async def test_restart_forgets_state_keeps_files_and_refuses_connections_meanwhile(http):
    async with Simulator(node_times={"ImageBlur": 0.5}) as sim:
        a = await connect(http, sim.url)
        done = await run(http, sim.url, a, tiny(13))
        await post(http, sim.url, chain(14, blurs=1), a.client_id)
        await post(http, sim.url, tiny(15), a.client_id)
        outputs = sorted(p.name for p in (sim.root / "output").iterdir())
        restarting = asyncio.create_task(asyncio.to_thread(sim.restart, 0.3))
        await asyncio.wait_for(a.closed.wait(), 2)
        await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(http, sim.url, "/queue")
        await restarting  # from another thread: returns once back up
        assert (await get(http, sim.url, "/queue"))[1] == {"queue_running": [], "queue_pending": []}
        assert (await get(http, sim.url, f"/history/{done}"))[1] == {}
        assert sorted(p.name for p in (sim.root / "output").iterdir()) == outputs
        assert (await post(http, sim.url, tiny(16)))[1]["number"] == 0
        b = await connect(http, sim.url, client_id=a.client_id)
        await run(http, sim.url, b, tiny(17))
        assert sim.faults.counts["restart"] == 1


async def test_restart_from_the_loop_thread_comes_back_by_itself(http):
    async with Simulator() as sim:
        a = await connect(http, sim.url)
        await run(http, sim.url, a, tiny(18))
        sim.restart()
        await asyncio.wait_for(a.closed.wait(), 2)
        for _ in range(100):
            try:
                status, history = await get(http, sim.url, "/history")
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        assert (status, history) == (200, {})


async def test_drop_sockets(http):
    async with Simulator() as sim:
        a, b = await connect(http, sim.url), await connect(http, sim.url)
        await asyncio.to_thread(sim.drop_sockets)
        await asyncio.wait_for(asyncio.gather(a.closed.wait(), b.closed.wait()), 2)
        assert sim.faults.counts["drop_sockets"] == 2
        c = await connect(http, sim.url, client_id=a.client_id)
        await run(http, sim.url, c, tiny(19))


def test_knobs_are_validated_and_faults_can_be_shared():
    with pytest.raises(TypeError, match="unknown fault knob"):
        Faults(nonsense=1)
    faults = Faults(seed=3, latency=0.01)
    assert Simulator(faults=faults).faults is faults
    faults.update(drop={"*": 0.0})
    assert "latency" in repr(faults) and faults.counts == {}
