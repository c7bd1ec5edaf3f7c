"""Trace g3: overlapping reconnect (the real server's bug, reproduced on purpose).

X#1 runs slow.json; X#2 connects with the *same* clientId while X#1 is still open (gets
``status`` + ``executing {"node": "2"}`` replay); then X#1 closes. Closing X#1 removes X#2
from the server's socket table: X#2 stays open but receives nothing more, not even the
``status`` broadcasts or the messages of a second prompt POSTed for X.

ImageBlur takes ``BLUR`` s so that X#2 connects and X#1 closes inside node 2, as recorded.
Completion is observed through ``/history`` polling (not recorded, as in the recording).
Both sockets compared in full (including the absence of anything after the replay); HTTP:
the two POSTs.
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("g3")
BLUR = 0.3


async def test_g3_overlapping_reconnect():
    bodies = TRACE.prompt_bodies()
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        x1 = await live.connect("X#1")
        p0 = await live.post_prompt(with_client(bodies[0], x1.client_id))
        await x1.wait_for(msg_is("executing", node="2", prompt_id=p0))
        x2 = await live.connect("X#2", x1.client_id)
        await x2.wait_for(msg_is("executing", node="2"))
        await x1.close()
        await live.wait_history(p0)
        live.note("prompt finished per /history")
        live.note("now a second prompt for X while only X#2 is open")
        p1 = await live.post_prompt(with_client(bodies[1], x1.client_id))
        await live.wait_history(p1)
        await live.wait_statuses_like(TRACE.records)
        await live.settle(0.1)
        await x2.close()

    for label in ("X#1", "X#2"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
