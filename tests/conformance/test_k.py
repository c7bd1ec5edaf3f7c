"""Trace k: ksampler_random.json (CheckpointLoaderSimple -> 2x CLIPTextEncode -> KSampler
3 steps -> VAEDecode -> SaveImage); observer O.

run1: A (feature_flags) with ``preview_method: latent2rgb`` -> per step ``progress_state``,
type-4 JPEG preview, ``progress``; run2: B (no flags) with latent2rgb -> ``progress`` then a
type-1 JPEG preview; loader/encoders/latent cached; run3: B without preview_method -> no
previews; run4: run3 resubmitted -> fully cached (``execution_cached`` all seven, ``executed``
re-sent for SaveImage, nothing executed).

Sequential: all three sockets compared in full (statuses with counts; node execution order
4, 5, 7, 6, 3, 8, 9 as ComfyUI's scheduler picks it); HTTP: four POSTs and run1's history.
"""

from comfynb.sim import Simulator

from .live import Live
from .trace import assert_http_conforms, assert_socket_conforms, load, with_client

TRACE = load("k")


def _sent_flags():
    return next(r["msg"]["data"] for r in TRACE.records if r.get("event") == "sent" and r["src"] == "ws:A")


async def test_k_ksampler_random():
    bodies = TRACE.prompt_bodies()
    async with Simulator() as sim, Live(sim.url) as live:
        a = await live.connect("A", feature_flags=_sent_flags())
        b = await live.connect("B")
        o = await live.connect("O")
        live.note("run1")
        p1 = await live.post_prompt(with_client(bodies[0], a.client_id))
        await a.wait_done(p1)
        await live.get(f"/history/{p1}")
        for i, note in ((1, "run2"), (2, "run3"), (3, "run4 (identical to run3)")):
            live.note(note)
            pid = await live.post_prompt(with_client(bodies[i], b.client_id))
            await b.wait_done(pid)
        await live.wait_statuses_like(TRACE.records)
        await live.settle()
        for s in (a, b, o):
            await s.close()

    for label in ("A", "B", "O"):
        assert_socket_conforms(live.records, TRACE.records, label)
    assert_http_conforms(TRACE.records, live.records)
