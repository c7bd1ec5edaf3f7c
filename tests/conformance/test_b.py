"""Trace b: the same prompt twice (2nd fully cached), then a 3rd with only the SaveImage
prefix changed (partial cache).

Compares the whole socket sequence (sequential: statuses with counts), the HTTP exchanges
(the history entry of the cached run, with its outputs, masked), and what the trace shows
about the cached run's ``executed``: the *same* UI output (same filename) as the first run.
"""

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, http_records, load, socket_frames, with_client

TRACE = load("b")


def executed_outputs(records, label):
    return [
        r["msg"]["data"]["output"]
        for r in socket_frames(records, label)
        if "msg" in r and r["msg"]["type"] == "executed"
    ]


async def test_b_cached_resubmit():
    bodies = TRACE.prompt_bodies()
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        live.note("first submission (uncached)")
        p1 = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(p1)
        live.note("second submission, identical prompt")
        p2 = await live.post_prompt(with_client(bodies[1], a.client_id))
        await a.wait_done(p2)
        await live.get(f"/history/{p2}")
        live.note("third submission: only the last node's input changed (filename_prefix) -> partial cache")
        p3 = await live.post_prompt(with_client(bodies[2], a.client_id))
        await a.wait_done(p3)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()

    assert_socket_conforms(live.records, TRACE.records, "A")
    assert_http_conforms(TRACE.records, live.records)

    # cached output node re-sends the old UI (same file); partial rerun writes a new one
    for records in (TRACE.records, live.records):
        out = executed_outputs(records, "A")
        assert len(out) == 3
        assert out[1] == out[0]
        assert out[2] != out[0]
    hist = http_records(live.records)[2]["body"]
    assert hist[p2]["outputs"]["5"] == executed_outputs(live.records, "A")[0]
