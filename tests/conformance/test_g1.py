"""Trace g1: late connect.

Part 1: a prompt is POSTed for client L while no socket of L is open; after it finished
(polled through /history, not recorded, as in the recording), L connects: it gets only
``status`` (q 0, with ``sid``), nothing is replayed.
Part 2: slow.json is POSTed for L, still without a socket; L connects (as L2) while node 3
runs: ``status`` (q 1) then the bare ``executing {"node": "3"}`` replay (no prompt_id, no
display_node), then the rest of the run as usual.

Timing: the simulator's ImageBlur takes ``BLUR`` s, so node 3 runs from BLUR to 2*BLUR after
the POST; L2 connects at 1.5*BLUR (the recording connected 1.0 s after the POST, also inside
node 3). Both sockets are compared in full, and the two HTTP POSTs.
"""

import asyncio

from comfynb.sim import Simulator

from .live import Live, new_client_id
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("g1")
BLUR = 0.4


async def test_g1_late_connect():
    bodies = TRACE.prompt_bodies()
    cid = new_client_id("L")
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        p0 = await live.post_prompt(with_client(bodies[0], cid))
        await live.wait_history(p0)
        live.note("prompt finished (seen in /history); now connecting L")
        l1 = await live.connect("L", cid)
        await live.wait_statuses_like(TRACE.records)
        await live.settle(0.2)
        await l1.close()
        live.note("second part: L connects while a prompt for L is RUNNING (slow.json)")
        p1 = await live.post_prompt(with_client(bodies[1], cid))
        await asyncio.sleep(1.5 * BLUR)
        l2 = await live.connect("L2", cid)
        await l2.wait_done(p1)
        await live.settle()
        await l2.close()

    for label in ("L", "L2"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
