"""Nothing is misattributed: other clients' prompts, broadcasts and previews never reach our jobs."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp

from comfynb import Session, as_completed

from .conftest import FAST, params_of, txt2img
from .test_reconcile import post_raw


async def test_two_sessions_on_one_server(make_session):
    first = make_session()
    async with Session(first.simulator.url, **FAST) as second:
        jobs = {}
        for seed in range(8):  # interleaved on one queue
            jobs[first.submit(txt2img(seed, text="first"))] = (seed, "first")
            jobs[second.submit(txt2img(seed, text="second"))] = (seed, "second")
        async for job in as_completed(jobs, timeout=30):
            params = params_of(await job)
            assert (params["seed"], params["positive"]) == jobs[job]
        for session in (first, second):
            assert session._servers[0].tracker.foreign == 0  # targeted delivery: nothing foreign arrived


async def test_broadcasts_of_prompts_without_client_id_are_ignored(make_session):
    """Prompts posted without client_id broadcast progress, progress_state and type-1 previews to
    every socket, ours included; our jobs' progress and previews must stay their own."""
    session = make_session(preview_method="latent2rgb", step_time=0.005)
    url = session.simulator.url
    raw = [await post_raw(url, txt2img(1000 + i, steps=6).to_api()) for i in range(3)]
    jobs = [session.submit(txt2img(seed, steps=3)) for seed in range(4)]
    raw += [await post_raw(url, txt2img(2000 + i, steps=6).to_api()) for i in range(3)]
    previews = {}
    while not all(j.done() for j in jobs):
        for job in jobs:
            if job.latest_preview is not None:
                previews.setdefault(job.prompt_id, set()).add(job.latest_preview.prompt_id)
            assert job.progress.max in (0, 3)  # never a foreign sampler's 6 steps
        await asyncio.sleep(0.002)
    for seed, job in enumerate(jobs):
        assert params_of(await job)["seed"] == seed
    assert previews and all(seen == {pid} for pid, seen in previews.items())
    assert session._servers[0].tracker.foreign > 0
    assert not set(raw) & set(session._servers[0].tracker.jobs)


async def test_another_client_reusing_our_server_cannot_complete_our_jobs(make_session):
    """A raw client with its own socket runs the same graphs: its final messages are its own."""
    session = make_session(node_times={"KSampler": 0.02})
    url = session.simulator.url
    other_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws", params={"clientId": other_id}) as ws:
            ours = [session.submit(txt2img(seed)) for seed in range(4)]
            theirs = [await post_raw(url, txt2img(seed + 50).to_api(), other_id) for seed in range(4)]
            for seed, job in enumerate(ours):
                assert params_of(await job)["seed"] == seed
            done = set()
            while len(done) < len(theirs):
                frame = await ws.receive()
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                if msg["type"] == "executing" and msg["data"].get("node") is None:
                    done.add(msg["data"]["prompt_id"])
            assert done == set(theirs)
