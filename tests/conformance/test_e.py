"""Trace e: runtime_error.json (IndexError in ImageToMask) twice; observer O.

Sequential, so whole sequences are compared for A and O (statuses with counts): the
``execution_error`` (node, class, exception type and message, executed ids, traceback as a
list, current_inputs keys, current_outputs), then status, then ``executing null``; the
second (uncached: failures are not cached) run fails the same way. HTTP: the history entry
of the failed prompt (``status_str: error``, ``completed: false``, empty outputs and meta,
messages ending with the ``execution_error``), traceback text and input values as placeholders.
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import assert_http_conforms, assert_socket_conforms, load, sanitize, status_messages, with_client

TRACE = load("e")


async def test_e_runtime_error():
    bodies = TRACE.prompt_bodies()
    n_status = len(status_messages(TRACE.records, "O"))
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        o = await live.connect("O")
        p1 = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(p1)
        await live.get(f"/history/{p1}")
        live.note("same failing prompt submitted again (errors are not cached: does it re-run?)")
        p2 = await live.post_prompt(with_client(bodies[1], a.client_id))
        await a.wait_done(p2)
        await o.wait_for(msg_is("status"), count=n_status)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await o.close()

    records = sanitize(live.records)
    for label in ("A", "O"):
        assert_socket_conforms(records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
