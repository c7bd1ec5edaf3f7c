"""Trace f2: queue delete and clear while slow.json runs; observer O.

Part 1: tiny.json queued behind slow.json is deleted (200, empty body; two statuses because
the last pending item went; no WS message and no history entry for it: ``/history/{id}`` is
``{}``); deleting the *running* id does nothing (no status, still running). Part 2: two tiny
prompts queued behind slow.json are dropped by ``{"clear": true}`` (one status).

ImageBlur is slowed to ``BLUR`` seconds so that every queue operation happens while the slow
prompt runs, as in the recording. Compared: O (statuses only, all triggered by our sequential
HTTP calls) in full, counts included; A with statuses removed, because the statuses caused by
HTTP calls land among the slow prompt's messages depending on timing; A's status sequence
equals O's; status -> start and terminal -> status -> done per prompt; every HTTP exchange
(masked ``/queue`` items, empty bodies of ``POST /queue``).
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import (
    assert_http_conforms,
    assert_same,
    assert_socket_conforms,
    load,
    norm_socket,
    prompt_order,
    queue_counts,
    status_before_start,
    status_messages,
    terminal_then_status_then_done,
    with_client,
)

TRACE = load("f2")
BLUR = 0.2


async def test_f2_queue_delete():
    bodies = TRACE.prompt_bodies()
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        a = await live.connect("A")
        o = await live.connect("O")
        p0 = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_for(msg_is("executing", node="1", prompt_id=p0))
        p1 = await live.post_prompt(with_client(bodies[1], a.client_id))
        await live.get("/queue")
        await live.post("/queue", {"delete": [p1]})
        await live.get("/queue")
        await live.post("/queue", {"delete": [p0]})
        await live.get("/queue")
        await a.wait_done(p0)
        await live.get(f"/history/{p1}")
        await live.get("/queue")
        live.note("POST /queue {clear:true} with two pending prompts behind a running one")
        p2 = await live.post_prompt(with_client(bodies[2], a.client_id))
        await a.wait_for(msg_is("execution_start", prompt_id=p2))
        await live.post_prompt(with_client(bodies[3], a.client_id))
        await live.post_prompt(with_client(bodies[4], a.client_id))
        await live.post("/queue", {"clear": True})
        await live.get("/queue")
        await a.wait_done(p2)
        await o.wait_for(msg_is("status"), count=len(status_messages(TRACE.records, "O")))
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await o.close()

    assert_socket_conforms(live.records, TRACE.records, "O")
    assert_same(
        norm_socket(live.records, "A", statuses="drop"),
        norm_socket(TRACE.records, "A", statuses="drop"),
        "A, statuses removed",
    )
    assert queue_counts(live.records, "A") == queue_counts(live.records, "O")
    assert queue_counts(TRACE.records, "A") == queue_counts(TRACE.records, "O")
    assert terminal_then_status_then_done(norm_socket(live.records, "A")) == terminal_then_status_then_done(
        norm_socket(TRACE.records, "A")
    )
    assert status_before_start(norm_socket(live.records, "A")) == status_before_start(norm_socket(TRACE.records, "A"))
    assert prompt_order(live.records, "A") == prompt_order(TRACE.records, "A") == ["p#0", "p#2"]
    assert_http_conforms(TRACE.records, live.records)
