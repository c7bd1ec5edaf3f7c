"""Trace c1: one client POSTs three uncached tiny_chain prompts concurrently; observer O.

What is racy in reality: the ``status`` broadcasts of the 2nd and 3rd POST are emitted by
the HTTP handlers while the worker already runs prompt 1, so where they land among prompt 1's
messages (and the ``queue_remaining`` values of the statuses around them) depends on timing.
What the trace guarantees, and what is compared:

* A, statuses removed: the exact sequence of everything else (three complete runs in POST
  order, every message tagged with the prompt it belongs to);
* A and O: the number of statuses (1 on connect + 3 per prompt), the first (with ``sid``)
  and the last (``queue_remaining`` 0), and A and O see the same status sequence;
* for each prompt: status -> ``execution_start`` (dequeue broadcast first) and terminal event
  -> status -> ``executing null`` (history written, then the broadcast, then the done message);
* O receives nothing but statuses;
* HTTP: three 200s with consecutive queue numbers.
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import (
    assert_http_conforms,
    assert_same,
    load,
    norm_socket,
    post_numbers,
    prompt_order,
    queue_counts,
    status_before_start,
    status_messages,
    terminal_then_status_then_done,
    with_client,
)

TRACE = load("c1")


async def test_c1_one_client_three_prompts():
    bodies = TRACE.prompt_bodies()
    n_status = len(status_messages(TRACE.records, "O"))
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        o = await live.connect("O")
        pids = await live.post_prompts_concurrently([with_client(b, a.client_id) for b in bodies])
        for pid in pids:
            await a.wait_done(pid)
        await o.wait_for(msg_is("status"), count=n_status)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await o.close()

    for label in ("A", "O"):
        assert_same(
            norm_socket(live.records, label, statuses="drop"),
            norm_socket(TRACE.records, label, statuses="drop"),
            f"{label}, statuses removed",
        )
        assert len(status_messages(live.records, label)) == len(status_messages(TRACE.records, label))
        for records in (live.records, TRACE.records):
            assert status_messages(records, label)[0] == status_messages(TRACE.records, label)[0]
            assert queue_counts(records, label)[-1] == 0
    assert queue_counts(live.records, "A") == queue_counts(live.records, "O")
    assert queue_counts(TRACE.records, "A") == queue_counts(TRACE.records, "O")

    a_norm = norm_socket(live.records, "A")
    assert terminal_then_status_then_done(a_norm) == terminal_then_status_then_done(norm_socket(TRACE.records, "A"))
    assert status_before_start(norm_socket(live.records, "A")) == status_before_start(norm_socket(TRACE.records, "A"))
    assert prompt_order(live.records, "A") == prompt_order(TRACE.records, "A") == ["p#0", "p#1", "p#2"]

    assert_http_conforms(TRACE.records, live.records)
    assert post_numbers(live.records) == post_numbers(TRACE.records)
