"""Trace a: one client, one uncached tiny prompt, then GET /history/{id}.

Compares the whole socket sequence (statuses with queue_remaining included: everything is
sequential), the HTTP exchanges (status, content type, masked body) and the queue number
(a freshly started server numbers its first prompt 0, as the recording server did).
"""

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, http_records, load, post_numbers, with_client

TRACE = load("a")


async def test_a_single_tiny():
    bodies = TRACE.prompt_bodies()
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        pid = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(pid)
        await live.get(f"/history/{pid}")
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()

    assert_socket_conforms(live.records, TRACE.records, "A")
    assert_http_conforms(TRACE.records, live.records)
    assert post_numbers(live.records) == post_numbers(TRACE.records)
    assert http_records(live.records)[0]["body"]["number"] == TRACE.posts()[0]["body"]["number"] == 0
