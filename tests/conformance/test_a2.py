"""Trace a2: the client sends ``feature_flags`` as its first frame, then runs tiny_chain.json.

Compares the socket sequence including the ``feature_flags`` reply (its data verbatim),
statuses with counts, and the HTTP exchange.
"""

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("a2")


def _sent_flags():
    return next(r["msg"]["data"] for r in TRACE.records if r.get("event") == "sent")


async def test_a2_feature_flags_tiny_chain():
    bodies = TRACE.prompt_bodies()
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A", feature_flags=_sent_flags())
        pid = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(pid)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()

    assert_socket_conforms(live.records, TRACE.records, "A")
    assert_http_conforms(TRACE.records, live.records)
