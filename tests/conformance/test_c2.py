"""Trace c2: clients A, B, C each POST one uncached tiny_chain prompt concurrently; observer O.

Racy in reality: the order in which the server receives concurrent POSTs (hence the queue
numbers and run order), and where the statuses of later POSTs land among the first prompt's
messages (and the queue counts around them). Compared (what the trace guarantees):

* per socket, statuses removed: the exact sequence, prompt tags renumbered per socket
  (each client sees its own prompt's messages only: targeted delivery; O sees none);
* per socket: number of statuses (1 + 3 per prompt, all broadcast), first with ``sid``,
  last ``queue_remaining`` 0, and all four sockets see the same status sequence;
* per client: status -> ``execution_start`` and terminal event -> status -> ``executing null``;
* prompts run in queue-number order (the recorded run was A, B, C = number order);
* HTTP: three 200s with consecutive numbers.
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import (
    assert_http_conforms,
    assert_same,
    http_records,
    load,
    norm_socket,
    post_numbers,
    queue_counts,
    status_before_start,
    status_messages,
    terminal_then_status_then_done,
    with_client,
)

TRACE = load("c2")
LABELS = ("A", "B", "C", "O")


def run_order(records):
    """Client ids in the order their prompts started (execution_start arrival)."""
    starts = sorted((r["t"], r["src"]) for r in records if "msg" in r and r["msg"]["type"] == "execution_start")
    cid = {r["src"]: r["client_id"] for r in records if r.get("event") == "open"}
    return [cid[src] for _, src in starts]


def number_order(records):
    """Client ids of the POSTs sorted by the queue number the server gave them."""
    posts = [r for r in http_records(records) if r["method"] == "POST" and r["status"] == 200]
    return [r["req"]["client_id"] for r in sorted(posts, key=lambda r: r["body"]["number"])]


async def test_c2_three_clients():
    bodies = TRACE.prompt_bodies()
    n_status = len(status_messages(TRACE.records, "O"))
    async with Simulator() as sim, Live(sim.url) as live:
        socks = {label: await live.connect(label) for label in LABELS}
        by_client = {b["client_id"]: b for b in bodies}
        ordered = [with_client(by_client[TRACE.client_id(lbl)], socks[lbl].client_id) for lbl in "ABC"]
        pids = await live.post_prompts_concurrently(ordered)
        for lbl, pid in zip("ABC", pids):
            await socks[lbl].wait_done(pid)
        for s in socks.values():
            await s.wait_for(msg_is("status"), count=n_status)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        for s in socks.values():
            await s.close()

    for label in LABELS:
        assert_same(
            norm_socket(live.records, label, statuses="drop", relabel=True),
            norm_socket(TRACE.records, label, statuses="drop", relabel=True),
            f"{label}, statuses removed",
        )
        assert len(status_messages(live.records, label)) == len(status_messages(TRACE.records, label)), label
        assert status_messages(live.records, label)[0] == status_messages(TRACE.records, label)[0]
        assert queue_counts(live.records, label)[-1] == queue_counts(TRACE.records, label)[-1] == 0
        assert queue_counts(live.records, label) == queue_counts(live.records, "O")
        assert queue_counts(TRACE.records, label) == queue_counts(TRACE.records, "O")
        assert terminal_then_status_then_done(
            norm_socket(live.records, label, relabel=True)
        ) == terminal_then_status_then_done(norm_socket(TRACE.records, label, relabel=True))
        assert status_before_start(norm_socket(live.records, label, relabel=True)) == status_before_start(
            norm_socket(TRACE.records, label, relabel=True)
        )

    assert run_order(TRACE.records) == number_order(TRACE.records)
    assert run_order(live.records) == number_order(live.records)
    assert_http_conforms(TRACE.records, live.records, ignore=("color",))
    assert post_numbers(live.records) == post_numbers(TRACE.records)
