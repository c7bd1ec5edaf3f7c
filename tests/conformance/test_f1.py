"""Trace f1: interrupts during slow.json; observer O.

Part 1: a global ``POST /interrupt`` (no body) while node 3 runs: node 3 completes, node 4
gets its ``progress_state``/``executing``, then ``execution_interrupted`` (node 4, executed
1-3), status, ``executing null``; history ``status_str: error``.
Part 2: slow.json again with tiny.json queued behind it; ``{"prompt_id": <pending id>}`` is
ignored, ``{"prompt_id": <running id>}`` interrupts at the next node boundary, and the
pending prompt then runs normally.

ImageBlur is slowed to ``BLUR`` seconds so the interrupts land inside the same nodes as in
the recording; sync points are the ``executing`` messages the recorder waited for.
Compared: part 1 of A in full (sequential); part 2 of A with statuses removed, because the
status of the tiny POST lands somewhere in the slow prompt's run depending on timing; A's and
O's status sequences are identical and O's (statuses only) is compared in full; each prompt's
status -> start and terminal -> status -> done; the run order; all HTTP exchanges (masked bodies).
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import (
    assert_http_conforms,
    assert_same,
    assert_socket_conforms,
    load,
    norm_socket,
    note_index,
    prompt_order,
    queue_counts,
    status_before_start,
    status_messages,
    terminal_then_status_then_done,
    with_client,
)

TRACE = load("f1")
BLUR = 0.2
PART2 = "targeted interrupt with a prompt_id that is NOT running"


async def test_f1_interrupt():
    bodies = TRACE.prompt_bodies()
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        a = await live.connect("A")
        o = await live.connect("O")
        p0 = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_for(msg_is("executing", node="3", prompt_id=p0))
        await live.get("/queue")
        await live.post("/interrupt")
        await a.wait_done(p0)
        await live.get(f"/history/{p0}")
        await live.get("/queue")
        live.note(PART2)
        p1 = await live.post_prompt(with_client(bodies[1], a.client_id))
        await a.wait_for(msg_is("executing", node="1", prompt_id=p1))
        p2 = await live.post_prompt(with_client(bodies[2], a.client_id))
        await a.wait_for(msg_is("executing", node="2", prompt_id=p1))
        await live.post("/interrupt", {"prompt_id": p2})
        await live.post("/interrupt", {"prompt_id": p1})
        await a.wait_done(p1)
        await a.wait_done(p2)
        await o.wait_for(msg_is("status"), count=len(status_messages(TRACE.records, "O")))
        await live.get(f"/history/{p1}")
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await o.close()

    cut_t, cut_l = note_index(TRACE.records, PART2), note_index(live.records, PART2)
    assert_same(
        norm_socket(live.records, "A", window=(0, cut_l)),
        norm_socket(TRACE.records, "A", window=(0, cut_t)),
        "A part 1",
    )
    assert_same(
        norm_socket(live.records, "A", statuses="drop", window=(cut_l, len(live.records))),
        norm_socket(TRACE.records, "A", statuses="drop", window=(cut_t, len(TRACE.records))),
        "A part 2, statuses removed",
    )
    assert_socket_conforms(live.records, TRACE.records, "O")
    assert queue_counts(live.records, "A") == queue_counts(live.records, "O")
    assert queue_counts(TRACE.records, "A") == queue_counts(TRACE.records, "O")
    assert terminal_then_status_then_done(norm_socket(live.records, "A")) == terminal_then_status_then_done(
        norm_socket(TRACE.records, "A")
    )
    assert status_before_start(norm_socket(live.records, "A")) == status_before_start(norm_socket(TRACE.records, "A"))
    assert prompt_order(live.records, "A") == prompt_order(TRACE.records, "A") == ["p#0", "p#1", "p#2"]
    assert_http_conforms(TRACE.records, live.records)
