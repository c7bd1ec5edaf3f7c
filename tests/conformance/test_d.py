"""Trace d: nine invalid POST /prompt bodies plus one body that is not JSON.

Compared: the full JSON body of every 400 (error type/message/details/extra_info and
``node_errors`` per node with errors, ``dependent_outputs`` and ``class_type``; recorded
traceback text is a placeholder on both sides), the plain-text 500 for the non-JSON body,
the empty ``/queue`` afterwards, and that socket A receives nothing but its connect status.

Also checked, from the trace README ("``number`` is still consumed") and the numbering across
the recorded scenarios (c3 ended at 14, e started at 24: the nine JSON bodies of d consumed
15..23, the non-JSON one did not): the next accepted prompt gets number 9 on a fresh server.
"""

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("d")


async def test_d_validation_failures():
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        for rec in TRACE.posts():
            if "req_raw" in rec:
                await live.request("POST", "/prompt", raw=rec["req_raw"])
            else:
                await live.post("/prompt", with_client(rec["req"], a.client_id))
        await live.get("/queue")
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()

        # not part of the trace: numbering after the rejected prompts
        ok = await live.post(
            "/prompt",
            {
                "client_id": "Z-00000000",  # no socket: nothing but status is sent
                "prompt": {
                    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
                },
            },
            record=False,
        )
    assert ok["status"] == 200, ok
    assert ok["body"]["number"] == 9

    assert_socket_conforms(live.records, TRACE.records, "A")
    assert_http_conforms(TRACE.records, live.records)
