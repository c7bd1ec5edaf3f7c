"""Trace g2: disconnect and reconnect with the same clientId during slow.json.

R#1 closes right after ``executing`` node 2; R#2 reconnects (same clientId) while node 3
runs and gets ``status`` (q 1) + the bare ``executing {"node": "3"}`` replay, then the rest;
what was emitted while no socket was open (node 2 finishing, node 3 starting) is lost.

Timing: ImageBlur takes ``BLUR`` s in the simulator; node 3 runs from BLUR to 2*BLUR after
node 2 started, so R#2 connects 1.5*BLUR after R#1 saw ``executing 2`` (the recording waited
1.5 s with ~0.7 s blurs, also inside node 3). Both sockets compared in full; HTTP: the POST
and the final ``/history/{id}`` (masked).
"""

import asyncio

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("g2")
BLUR = 0.4


async def test_g2_disconnect_reconnect():
    bodies = TRACE.prompt_bodies()
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        r1 = await live.connect("R#1")
        p0 = await live.post_prompt(with_client(bodies[0], r1.client_id))
        await r1.wait_for(msg_is("executing", node="2", prompt_id=p0))
        await r1.close()
        await asyncio.sleep(1.5 * BLUR)
        r2 = await live.connect("R#2", r1.client_id)
        await r2.wait_done(p0)
        await live.get(f"/history/{p0}")
        await r2.close()

    for label in ("R#1", "R#2"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
