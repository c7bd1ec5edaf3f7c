"""Trace c3: prompts POSTed *without* client_id while sockets A and B listen.

Four prompts in sequence: tiny_chain, ws_image (SaveImageWebsocket), runtime_error, and
slow.json interrupted 0.5 s in (globally). Everything is sequential, so each socket's whole
sequence is compared, statuses and counts included: ``execution_start/cached/executing/
executed/success/error`` and ``executing null`` reach nobody, while ``progress``,
``progress_state``, binary previews (type 1: nobody negotiated metadata) and
``execution_interrupted`` are broadcast to both sockets.

Sync points: without client_id there is no ``executing null``; the end of a prompt is its
final ``status`` broadcast (3 statuses per prompt on each socket). The interrupt is sent
once node 2 of slow.json is running (the recorder slept 0.5 s, which landed there too);
ImageBlur is slowed down so the interrupt lands inside node 2.
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import assert_http_conforms, assert_socket_conforms, load

TRACE = load("c3")
BLUR = 0.2  # seconds per ImageBlur in the simulator


def running(node, pid):
    def pred(rec):
        if "msg" not in rec or rec["msg"]["type"] != "progress_state":
            return False
        d = rec["msg"]["data"]
        e = d["nodes"].get(node)
        return d.get("prompt_id") == pid and isinstance(e, dict) and e.get("state") == "running"

    return pred


async def test_c3_prompt_without_client_id():
    bodies = TRACE.prompt_bodies()
    assert all("client_id" not in b for b in bodies)
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        a = await live.connect("A")
        b = await live.connect("B")
        n = 1
        for i, body in enumerate(bodies):
            pid = await live.post_prompt(body)
            if i == 3:
                await a.wait_for(running("2", pid))
                await live.post("/interrupt")
            n += 3
            for s in (a, b):
                await s.wait_for(msg_is("status"), count=n)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await b.close()

    for label in ("A", "B"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
