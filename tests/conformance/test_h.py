"""Trace h: HTTP endpoints.

Part 1 (sequential): multi_output.json with a client-chosen ``prompt_id``, batch.json with
``extra_data``, preview.json, then tiny.json re-using the first ``prompt_id``; then
``/history/{id}`` (x3 + unknown -> ``{}``), ``/history?max_items=2``,
``/history?max_items=1&offset=0``, ``/queue``, ``GET /prompt``, ``/api/jobs?limit=2``,
``/api/jobs/{id}``, ``/view`` (output 200, temp 200, missing 404, ``../`` 400) and
``/api/system_stats``.
Part 2: while slow.json runs, tiny.json normal, with ``front: true`` and with ``number: -1000``:
numbers ``n``, ``-(n+1)``, ``-1000.0``; ``/queue`` pending in raw heap order; they run
-1000, front, normal.

Compared: A in full for part 1; part 2 with statuses removed (the statuses of the three POSTs
land among the slow prompt's messages depending on timing) plus the status count,
status -> start and terminal -> status -> done; the run order; queue numbers relative to the
first POST; every HTTP exchange with masked bodies, except:
* ``/history?max_items=1&offset=0``: the recording server's oldest entry came from scenario
  a (also a tiny.json run, other colour, uuid id), so the entry is compared without its id
  and colour; that the oldest entry here is the one whose id was reused
  (a reused id keeps its original slot: the recorded ``max_items=2`` returned batch and
  preview although the reused id finished last) is checked explicitly;
* ``/api/jobs?limit=2``: ``pagination.total`` counted every job of the recording server;
* ``/api/system_stats``: keys only (machine-dependent values).
"""

from comfynb.sim import Simulator

from .live import Live, msg_is
from .trace import (
    assert_same,
    compare_http,
    http_records,
    load,
    norm_socket,
    note_index,
    post_numbers,
    prompt_order,
    status_before_start,
    status_messages,
    swap_node_runs,
    terminal_then_status_then_done,
    with_client,
)

TRACE = load("h")
BLUR = 0.2
OWN_ID = "my-own-id-c06f1c"
PART2 = "queue priority"


def executing_order(records, pid):
    return [
        r["msg"]["data"]["node"]
        for r in records
        if r["src"] == "ws:A"
        and "msg" in r
        and r["msg"]["type"] == "executing"
        and r["msg"]["data"].get("prompt_id") == pid
        and r["msg"]["data"]["node"] is not None
    ]


def http_index(path_prefix: str, nth: int = 0) -> int:
    hits = [i for i, r in enumerate(TRACE.http()) if r["path"].startswith(path_prefix)]
    return hits[nth]


async def test_h_http_endpoints():
    bodies = TRACE.prompt_bodies()
    assert bodies[0]["prompt_id"] == bodies[3]["prompt_id"] == OWN_ID
    async with Simulator(node_times={"ImageBlur": BLUR}) as sim, Live(sim.url) as live:
        a = await live.connect("A")
        cid = a.client_id
        live.note("POST /prompt with our own prompt_id in the body")
        assert await live.post_prompt(with_client(bodies[0], cid)) == OWN_ID
        await a.wait_for(msg_is("executing", node=None, prompt_id=OWN_ID))
        p_batch = await live.post_prompt(with_client(bodies[1], cid))
        await a.wait_done(p_batch)
        p_prev = await live.post_prompt(with_client(bodies[2], cid))
        await a.wait_done(p_prev)
        live.note("re-using an already-used prompt_id")
        assert await live.post_prompt(with_client(bodies[3], cid)) == OWN_ID
        await a.wait_for(msg_is("executing", node=None, prompt_id=OWN_ID), count=2)

        await live.get(f"/history/{OWN_ID}")
        batch = (await live.get(f"/history/{p_batch}"))["body"][p_batch]
        prev = (await live.get(f"/history/{p_prev}"))["body"][p_prev]
        await live.get("/history/does-not-exist")
        await live.get("/history?max_items=2")
        oldest = (await live.get("/history?max_items=1&offset=0"))["body"]
        await live.get("/queue")
        await live.get("/prompt")
        await live.get("/api/jobs?limit=2")
        await live.get(f"/api/jobs/{OWN_ID}")
        await live.get(f"/history/{p_batch}")
        img = batch["outputs"]["4"]["images"][0]
        view_out = await live.get(f"/view?filename={img['filename']}&type=output&subfolder=")
        await live.get(f"/history/{p_prev}")
        tmp = prev["outputs"]["2"]["images"][0]
        view_tmp = await live.get(f"/view?filename={tmp['filename']}&type=temp&subfolder=")
        await live.get("/view?filename=does_not_exist.png&type=output")
        await live.get("/view?filename=../../etc/passwd&type=output")
        await live.get("/api/system_stats")

        live.note(PART2)
        p_slow = await live.post_prompt(with_client(bodies[4], cid))
        await a.wait_for(msg_is("executing", node="1", prompt_id=p_slow))
        p_norm = await live.post_prompt(with_client(bodies[5], cid))
        p_front = await live.post_prompt(with_client(bodies[6], cid))
        p_num = await live.post_prompt(with_client(bodies[7], cid))
        await live.get("/queue")
        await live.get("/prompt")
        for pid in (p_slow, p_num, p_front, p_norm):
            await a.wait_done(pid)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()

    # --- WebSocket
    # multi_output.json: after node 2, output nodes 4 and 5 are ready together; ComfyUI runs
    # them in outputs_to_execute order, a list(set) whose order depends on the server's string
    # hashing (the recording ran 5 first). Either order is ComfyUI's behaviour; everything
    # else about the two runs (and 1 -> 3 -> 2 before them: ready output nodes first) is fixed.
    expected = TRACE.records
    if executing_order(live.records, OWN_ID)[:5] == ["1", "3", "2", "4", "5"]:
        expected = swap_node_runs(TRACE.records, "A", OWN_ID, "5", "4")
    cut_t, cut_l = note_index(expected, PART2), note_index(live.records, PART2)
    assert_same(
        norm_socket(live.records, "A", window=(0, cut_l)), norm_socket(expected, "A", window=(0, cut_t)), "A part 1"
    )
    assert_same(
        norm_socket(live.records, "A", statuses="drop", window=(cut_l, len(live.records))),
        norm_socket(TRACE.records, "A", statuses="drop", window=(cut_t, len(TRACE.records))),
        "A part 2, statuses removed",
    )
    assert len(status_messages(live.records, "A")) == len(status_messages(TRACE.records, "A"))
    assert terminal_then_status_then_done(norm_socket(live.records, "A")) == terminal_then_status_then_done(
        norm_socket(TRACE.records, "A")
    )
    assert status_before_start(norm_socket(live.records, "A")) == status_before_start(norm_socket(TRACE.records, "A"))
    assert (
        prompt_order(live.records, "A")
        == prompt_order(TRACE.records, "A")
        == ["p#0", "p#1", "p#2", "p#3", "p#4", "p#7", "p#6", "p#5"]
    )

    # --- HTTP
    assert post_numbers(live.records) == post_numbers(TRACE.records)
    exp, act = compare_http(
        TRACE.http(),
        http_records(live.records),
        ignore_at={http_index("/api/jobs?"): ("total",), http_index("/history?max_items=1&offset=0"): ("color",)},
        body_mode={http_index("/history?max_items=1&offset=0"): "entries", http_index("/api/system_stats"): "shape"},
    )
    assert_same(act, exp, "HTTP")
    assert list(oldest) == [OWN_ID]
    assert view_out["payload"][:8] == view_tmp["payload"][:8] == b"\x89PNG\r\n\x1a\n"
