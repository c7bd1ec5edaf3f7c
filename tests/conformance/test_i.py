"""Trace i: SaveImageWebsocket (batch of 2): ``progress`` + binary image frames.

A sends no feature_flags and gets type-1 frames (``[1][2=PNG][png]``) *after* each
``progress``; M negotiates ``supports_preview_metadata`` and gets type-4 frames (JSON metadata
with node/prompt ids, ``image_type: image/png``) *before* each ``progress``. No ``executed``
(no UI output). Each client runs its own prompt, sequentially: both sockets are compared in
full; HTTP: the two POSTs and M's ``/history/{id}`` (masked). The payloads are checked to be
PNG images as the headers announce.
"""

import json
import struct

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, load, socket_frames, with_client

TRACE = load("i")


def _sent_flags():
    return next(r["msg"]["data"] for r in TRACE.records if r.get("event") == "sent" and r["src"] == "ws:M")


async def test_i_ws_image_binary():
    bodies = TRACE.prompt_bodies()
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A")
        m = await live.connect("M", feature_flags=_sent_flags())
        pa = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(pa)
        pm = await live.post_prompt(with_client(bodies[1], m.client_id))
        await m.wait_done(pm)
        await live.get(f"/history/{pm}")
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        await a.close()
        await m.close()

    for label in ("A", "M"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)

    png = b"\x89PNG\r\n\x1a\n"
    for rec in socket_frames(live.records, "A"):
        if rec.get("binary"):
            assert rec["payload"][8:16] == png
    for rec in socket_frames(live.records, "M"):
        if rec.get("binary"):
            (n,) = struct.unpack(">I", rec["payload"][4:8])
            meta = json.loads(rec["payload"][8 : 8 + n])
            assert meta["prompt_id"] == pm
            assert rec["payload"][8 + n : 16 + n] == png
