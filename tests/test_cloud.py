"""Comfy Cloud as a backend, against the simulator's cloud mode over real sockets: the key on
every request and nowhere else, outcomes through the cloud's job endpoints, outputs through a
redirect that never carries the key, 429s that cost no job, partner-node keys, and bursting
from local servers to the cloud."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request

import aiohttp
import pytest
from conftest import FAST_FAILOVER as FAST
from conftest import killed_mid_sweep
from core.conftest import txt2img
from PIL import Image

import comfynb as cn
from comfynb import ExecutionError, Session, _loop, display
from comfynb.burst import may_burst
from comfynb.frames import history_frame
from comfynb.sim.images import read_params

KEY = "cloud-key-7f3a9c1e5b"
PARTNER = "partner-key-42d8e6a0"
WAIT = 60.0


def call(url: str, *, method: str = "GET", body: dict | None = None, key: str | None = KEY):
    """(status, headers, parsed body) of one raw HTTP call."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), _parsed(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), _parsed(exc.read())


def _parsed(raw: bytes):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode()


def wait_until(predicate, timeout=WAIT):
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError("condition not reached")


def partner_workflow(seed: int) -> cn.Workflow:
    wf = txt2img(seed)
    graph = wf.to_api()
    graph["20"] = {"class_type": "PartnerTextSim", "inputs": {"prompt": f"caption {seed}"}}
    return cn.Workflow.load(graph)


def seed_of(job) -> int:
    return read_params(job.result(WAIT).images[0].data)["seed"]


# -- the simulator's cloud mode -------------------------------------------------------------------


def test_cloud_simulator_speaks_the_documented_differences(start):
    sim = start(cloud=True, api_key=KEY)
    assert call(f"{sim.url}/api/object_info", key=None)[0] == 401
    assert call(f"{sim.url}/api/object_info", key="wrong-key-000")[0] == 401
    assert call(f"{sim.url}/api/object_info")[0] == 200
    assert call(f"{sim.url}/api/system_stats", key=None)[0] == 200  # public in the spec
    assert call(f"{sim.url}/prompt")[0] == 404  # everything lives under /api
    assert call(f"{sim.url}/api/free", method="POST", body={"free_memory": True})[0] == 404
    assert call(f"{sim.url}/api/history/abc")[0] == 404
    assert call(f"{sim.url}/api/jobs/abc")[0] == 404
    status, _, listed = call(f"{sim.url}/api/jobs?status=pending,in_progress")
    assert status == 200 and listed["jobs"] == [] and listed["pagination"]["total"] == 0

    async def ws(query: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"{sim.url}/ws?{query}") as sock:
                    msg = await sock.receive_json(timeout=5)
                    return 200 if msg["type"] == "status" else 0
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(ws("clientId=a")) == 401  # the WebSocket's key is the token parameter
    assert asyncio.run(ws("clientId=a&token=nope")) == 401
    assert asyncio.run(ws(f"clientId=a&token={KEY}")) == 200


@pytest.mark.parametrize("retry_after", [None, 3.0])
def test_cloud_simulator_answers_429_beyond_its_plan(start, retry_after):
    sim = start(cloud=True, api_key=KEY, max_parallel=2, retry_after=retry_after, node_time=1.0)
    answers = [call(f"{sim.url}/api/prompt", method="POST", body={"prompt": txt2img(i).to_api()}) for i in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert answers[2][1].get("Retry-After") == (None if retry_after is None else "3")
    running, _ = sim.engine.queue_items()
    assert len(running) == 2  # two at once: the plan's parallel jobs


# -- the client on the cloud ----------------------------------------------------------------------


def test_a_cloud_backend_needs_a_key(monkeypatch):
    monkeypatch.delenv("COMFY_CLOUD_API_KEY", raising=False)
    with pytest.raises(ValueError, match="COMFY_CLOUD_API_KEY"):
        Session("https://cloud.comfy.org", progress=False)


def test_cloud_profiles():
    from comfynb.cloud import inflight, profile_of

    official = profile_of("https://cloud.comfy.org")
    assert official.cloud and official.path("/prompt") == "/api/prompt" and official.path("/api/jobs") == "/api/jobs"
    assert not profile_of("http://127.0.0.1:8188").cloud
    urls = ["http://a:1", cn.Cloud("http://b:2", max_jobs=5)]
    profiles = [profile_of(u) for u in urls]
    assert inflight(urls, profiles, "auto") == ["auto", 5]
    assert inflight(urls, profiles, [1, 2]) == [1, 2]  # given limits win
    with pytest.raises(ValueError, match="max_jobs"):
        cn.Cloud(max_jobs=0)


def test_simulated_cloud_session():
    with Session.simulated(cloud=True, max_parallel=2, **FAST) as session:
        assert session.simulator.cloud is not None and list(session.servers().max_inflight) == [2]
        assert seed_of(session.submit(txt2img(4))) == 4


def test_wrong_key_is_a_clear_error(start, connect):
    sim = start(cloud=True, api_key=KEY)
    with pytest.raises(cn.ComfyError) as info:
        with Session(cn.Cloud(sim.url), api_key="not-the-key-1234", **FAST):
            pass
    assert "401" in str(info.value) and "not-the-key" not in str(info.value)


def test_the_cloud_key_goes_to_the_cloud_only(start):
    sim = start(cloud=True, api_key=KEY)
    # the cloud's storage port records every request's headers: posing as a local server, it
    # shows what a local server of a mixed session gets (it is not ComfyUI, so it is marked down)
    session = Session([sim.storage.url, cn.Cloud(sim.url)], api_key=KEY, api_key_comfy_org=PARTNER, **FAST)
    try:
        with session:
            assert session.submit(txt2img(3)).result(WAIT).images
    finally:
        session.close()
    probes = [r for r in sim.cloud.storage_requests if r["path"] == "/system_stats"]
    assert probes and all(KEY not in json.dumps(r) and PARTNER not in json.dumps(r) for r in probes)


def test_sweep_with_restarts_and_socket_drops_ends_once_per_row(start, connect):
    sim = start(cloud=True, api_key=KEY, max_parallel=3, node_times={"KSampler": 0.15})
    session = connect(cn.Cloud(sim.url, max_jobs=3), api_key=KEY)
    sweep = session.sweep(txt2img(0), grid={"KSampler.seed": range(15)}, tag="cloud")
    for done in (1, 2, 3):
        wait_until(lambda done=done: sum(job.done() for job in sweep.jobs) >= done)
        sim.drop_sockets()
    wait_until(lambda: sim.engine.remaining() > 0)
    sim.restart(downtime=0.2)  # with prompts on the cloud: they are lost there
    frame = sweep.result(WAIT)
    assert list(frame.status) == ["success"] * 15
    assert len(set(frame.prompt_id)) == 15
    for i, job in enumerate(sweep.jobs):
        assert seed_of(job) == i and job.server == sim.url  # each row its own picture, once
    assert sim.faults.counts["restart"] == 1 and sim.faults.counts["drop_sockets"] >= 1
    assert any(job.attempts > 1 for job in sweep.jobs)  # the restart lost some: sent again
    assert sim.engine.remaining() == 0
    for job in sweep.jobs:  # the simulator's ledger (kept across its restart): one successful run each
        assert sim.ledger.executions(job.prompt_id) == 1, sim.ledger.runs_of(job.prompt_id)


def test_outputs_come_through_storage_which_never_sees_the_key(start, connect, tmp_path):
    sim = start(cloud=True, api_key=KEY)
    session = connect(cn.Cloud(sim.url), api_key=KEY, api_key_comfy_org=PARTNER)
    job = session.submit(txt2img(7))
    result = job.result(WAIT)
    ref = result.images[0]
    saved = ref.save(tmp_path / "out.png")  # streamed to disk: the same redirect, the same care
    assert read_params(ref.data)["seed"] == 7 and saved.read_bytes() == ref.data
    small = _loop.run_sync(session._servers[0].transport.view_small(ref.filename, ref.subfolder, ref.type, 1 << 20))
    assert small == ref.data  # the notebook's inline path
    requests = sim.cloud.storage_requests
    assert len(requests) == 3
    assert requests and sim.cloud.counts["redirects"] >= 1
    for request in requests:
        seen = json.dumps(request)
        assert KEY not in seen and PARTNER not in seen
        assert not any(name.lower() in ("x-api-key", "authorization") for name in request["headers"])


def test_a_second_session_does_not_upload_what_the_cloud_holds(start, connect):
    sim = start(cloud=True, api_key=KEY)
    image = Image.new("RGB", (16, 16), (10, 200, 40))
    first = connect(cn.Cloud(sim.url), api_key=KEY).upload(image)
    sent = sim.cloud.counts["uploaded_bytes"]
    assert sent > 0 and sim.cloud.counts["asset_head"] == 1  # asked first: not there, so uploaded
    second_session = connect(cn.Cloud(sim.url), api_key=KEY)
    name = second_session.upload(image)
    assert sim.cloud.counts["uploaded_bytes"] == sent and sim.cloud.counts["uploads"] == 0  # no byte sent
    assert sim.cloud.counts["asset_head"] == 2 and [a["name"] for a in sim.cloud.assets] == [name]
    assert sim.cloud.assets[0]["tags"] == ["input"] and sim.cloud.assets[0]["asset_hash"].startswith("blake3:")
    assert name != first  # the asset's own name, as the cloud answered it
    wf = cn.Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
        }
    )
    ref = second_session.submit(wf).result(WAIT).images[0]
    assert ref.image.getpixel((0, 0)) == (245, 55, 215)
    assert call(f"{sim.url}/api/assets/hash/blake3:xyz", method="HEAD")[0] == 400


def test_without_blake3_inputs_are_uploaded_and_that_is_said_once(start, connect, monkeypatch, caplog):
    import sys

    from comfynb import cloudapi

    caplog.set_level(logging.INFO, logger="comfynb.cloudapi")
    monkeypatch.setitem(sys.modules, "blake3", None)  # as if not installed
    monkeypatch.setattr(cloudapi, "_told_no_blake3", False)
    sim = start(cloud=True, api_key=KEY)
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    for _ in range(2):
        connect(cn.Cloud(sim.url), api_key=KEY).upload(image)
    assert sim.cloud.counts["uploads_new"] == 1 and sim.cloud.counts["uploads"] == 1  # sent twice
    assert sim.cloud.counts["asset_head"] == 0
    said = [r.getMessage() for r in caplog.records if "blake3" in r.getMessage()]
    assert len(said) == 1 and "pip install comfynb[cloud]" in said[0]


def test_uploads_are_content_addressed_and_sent_once(start, connect):
    sim = start(cloud=True, api_key=KEY)
    session = connect(cn.Cloud(sim.url), api_key=KEY)
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    name = session.upload(image)
    assert session.upload(image) == name and sim.cloud.counts["uploads_new"] == 1
    assert sim.cloud.counts["uploads"] == 0  # the second one never left the client
    wf = cn.Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sub/dir/inv"}},
        }
    )
    result = session.submit(wf).result(WAIT)
    ref = result.images[0]
    assert ref.subfolder == "sub/dir"  # the cloud ignores it: the file is found by name alone
    assert ref.image.getpixel((0, 0)) == (55, 225, 225)


@pytest.mark.parametrize("retry_after", [None, 0.5])
def test_429_under_a_three_job_limit_costs_no_job(start, connect, retry_after, caplog):
    caplog.set_level(logging.INFO, logger="comfynb.transport")
    sim = start(cloud=True, api_key=KEY, max_parallel=3, retry_after=retry_after, node_times={"KSampler": 0.1})
    # the session believes in 8 parallel jobs: the cloud refuses what its plan does not allow
    session = connect(cn.Cloud(sim.url, max_jobs=8), api_key=KEY)
    jobs = [session.submit(txt2img(seed)) for seed in range(12)]
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed
    assert sim.cloud.counts["429"] > 0
    assert all(job.attempts == 1 for job in jobs)  # a refused POST is not a submission
    assert all(sim.ledger.executions(job.prompt_id, outcome=None) == 1 for job in jobs)  # each started once
    assert len({job.prompt_id for job in jobs}) == 12
    assert set(session.servers().state) == {"up"}  # busy is not down
    waits = [r.getMessage() for r in caplog.records if "is busy (HTTP 429" in r.getMessage()]
    assert len(waits) == sim.cloud.counts["429"]
    if retry_after is not None:  # the server's Retry-After, not our own backoff
        assert all(w.endswith("sent again in 0.5 s") for w in waits)


@pytest.mark.parametrize(("refuse", "status"), [("unpaid", "429"), ("inactive", "429"), ("credits", "402")])
def test_a_refusal_for_the_account_fails_the_jobs_at_once_and_sends_nothing_twice(start, refuse, status):
    sim = start(cloud=True, api_key=KEY)
    sim.cloud.refuse = refuse
    with Session(cn.Cloud(sim.url), api_key=KEY, progress=False) as session:  # the default settings
        jobs = [session.submit(txt2img(seed)) for seed in range(2)]
        for job in jobs:
            with pytest.raises(cn.PaymentRequired) as info:
                job.result(WAIT)
            assert job.status == "error" and job.attempts == 1
            message = str(info.value)
            assert f"HTTP {status}" in message and "comfy.org" in message and "not run" in message
            assert info.value.status == int(status) and KEY not in message
        assert sim.cloud.counts[status] == 2  # one refused POST per job: no second try
        assert not sim.engine.history and sim.engine.remaining() == 0
        sim.cloud.refuse = None  # the plan is paid again: new jobs run
        assert seed_of(session.submit(txt2img(5))) == 5


def test_a_queue_full_for_longer_than_max_queue_wait_ends_the_job(start, connect, caplog):
    caplog.set_level(logging.INFO, logger="comfynb.transport")
    sim = start(cloud=True, api_key=KEY, max_parallel=1, retry_after=0.1, node_times={"KSampler": 2.0})
    session = connect(cn.Cloud(sim.url, max_jobs=2), api_key=KEY, max_queue_wait=0.5)
    running, waiting = session.submit(txt2img(1)), session.submit(txt2img(2))
    with pytest.raises(cn.QueueFull, match="max_queue_wait=0.5 s") as info:
        waiting.result(WAIT)
    assert info.value.status == 429 and waiting.attempts == 1 and not running.done()
    assert sim.cloud.counts["429"] >= 3  # it waited and asked again before giving up
    assert sim.ledger.executions(waiting.prompt_id, outcome=None) == 0  # never accepted, never run
    assert seed_of(running) == 1
    assert any("is busy (HTTP 429" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="max_queue_wait"):
        Session(cn.Cloud(sim.url), api_key=KEY, max_queue_wait=-1)


def test_a_cloud_that_names_prompts_itself_is_followed_and_runs_each_once(start, connect):
    sim = start(cloud=True, api_key=KEY)
    sim.cloud.own_ids = True  # the spec's PromptRequest has no prompt_id
    session = connect(cn.Cloud(sim.url), api_key=KEY)
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed and job.attempts == 1
    assert {job.prompt_id for job in jobs} == set(sim.engine.history)  # the cloud's ids, one run each


def test_cloud_simulator_serves_history_v2_as_documented(start, connect):
    sim = start(cloud=True, api_key=KEY, max_parallel=1)
    session = connect(cn.Cloud(sim.url), api_key=KEY)
    jobs = [session.submit(txt2img(seed), tags={"n": seed}) for seed in range(3)]
    for job in jobs:
        job.result(WAIT)
    status, _, listed = call(f"{sim.url}/api/history_v2?max_items=2&offset=0")
    assert status == 200 and list(listed) == ["history"]
    newest = [entry["prompt_id"] for entry in listed["history"]]
    assert newest == [jobs[2].prompt_id, jobs[1].prompt_id]  # newest first
    entry = listed["history"][0]
    assert set(entry["prompt"]) == {"priority", "prompt_id", "extra_data"}  # lightweight: no graph
    assert entry["prompt"]["extra_data"]["comfynb"]["n"] == 2 and isinstance(entry["create_time"], int)
    assert {"outputs", "status", "meta"} <= set(entry)
    assert [e["prompt_id"] for e in call(f"{sim.url}/api/history_v2?max_items=2&offset=2")[2]["history"]] == [
        jobs[0].prompt_id
    ]
    assert call(f"{sim.url}/api/history_v2?max_items=5&offset=3")[2] == {"history": []}
    assert len(call(f"{sim.url}/api/history_v2")[2]["history"]) == 3  # no max_items: all of them
    assert call(f"{sim.url}/api/history_v2?max_items=-1")[0] == 400
    status, _, detail = call(f"{sim.url}/api/history_v2/{jobs[1].prompt_id}")
    assert status == 200 and list(detail) == [jobs[1].prompt_id]
    full = detail[jobs[1].prompt_id]["prompt"]
    assert set(full) == {"priority", "prompt_id", "prompt", "extra_data", "outputs_to_execute"}
    assert full["prompt"]["3"]["inputs"]["seed"] == 1
    assert call(f"{sim.url}/api/history_v2/no-such-prompt")[0] == 404
    assert call(f"{sim.url}/api/history_v2", key=None)[0] == 401


def test_history_frame_reads_the_cloud_like_a_local_server(start, connect):
    sim = start(cloud=True, api_key=KEY, max_parallel=3)
    local = start()
    session = connect([local.url, cn.Cloud(sim.url)], api_key=KEY, max_inflight=[1, 3])
    sweep = session.sweep(txt2img(0), grid={"KSampler.seed": range(9)}, tag="both", concurrency=9)
    live = sweep.result(WAIT)
    on_cloud = set(live.prompt_id[live.server == sim.url])
    assert on_cloud and set(live.server) == {local.url, sim.url}
    frame = session.history_frame(sweep_id=sweep.sweep_id)
    assert list(frame.columns) == list(live.columns)  # the same columns, the same meaning
    assert list(frame["index"]) == list(range(9)) and list(frame["KSampler.seed"]) == list(range(9))
    assert list(frame.prompt_id) == list(live.prompt_id) and list(frame.server) == list(live.server)
    assert (frame.status == "success").all() and frame.tag.eq("both").all()
    assert set(frame.prompt_id[frame.server == sim.url]) == on_cloud
    transport = session._servers[1].transport
    before = len(sim.cloud.storage_requests)
    for row in frame[frame.server == sim.url].itertuples():
        ref = cn.ImageRef.from_url(row.images[0], fetcher=transport.view)  # through the cloud's redirect
        assert read_params(ref.data)["seed"] == row.index
    seen = sim.cloud.storage_requests[before:]
    assert len(seen) == len(on_cloud) and all(KEY not in json.dumps(r) for r in seen)
    # paged two at a time, newest first; limit keeps the newest matches
    pages = sim.cloud.counts["history_v2"]
    paged = history_frame(transport, tag="both", page_size=2)
    assert sim.cloud.counts["history_v2"] - pages == len(on_cloud) // 2 + 1  # stops at the first short page
    assert set(paged.prompt_id) == on_cloud and len(paged) == len(on_cloud)
    newest = history_frame(transport, limit=2)
    listed = [e["prompt_id"] for e in call(f"{sim.url}/api/history_v2?max_items=2")[2]["history"]]
    assert list(newest.prompt_id) == listed[::-1]  # the cloud's two newest, oldest first as every frame


def test_an_entry_listed_without_its_tags_is_read_whole(start, connect):
    from comfynb import cloudapi

    sim = start(cloud=True, api_key=KEY)
    session = connect(cn.Cloud(sim.url), api_key=KEY)
    transport = session._servers[0].transport
    sweep = session.sweep(txt2img(0), grid={"KSampler.seed": [4, 5]}, tag="bare")
    sweep.result(WAIT)
    sim.cloud.bare_history = True  # the list form carries no extra_data, so no tags
    frame = history_frame(transport, tag="bare")
    assert sorted(frame["KSampler.seed"]) == [4, 5] and set(frame.sweep_id) == {sweep.sweep_id}
    entry = _loop.run_sync(cloudapi.history_entry(transport, sweep.jobs[0].prompt_id))
    assert entry["prompt"][1] == sweep.jobs[0].prompt_id and entry["prompt"][2]["3"]["inputs"]["seed"] == 4
    assert _loop.run_sync(cloudapi.history_entry(transport, "no-such-prompt")) is None


def test_paging_the_cloud_while_prompts_end_loses_none_and_repeats_none(start, connect):
    sim = start(cloud=True, api_key=KEY, max_parallel=3, node_times={"KSampler": 0.03})
    session = connect(cn.Cloud(sim.url, max_jobs=3), api_key=KEY)
    transport = session._servers[0].transport
    jobs = [session.submit(txt2img(seed), tags={"tag": "moving"}) for seed in range(24)]
    reads = 0
    while reads < 3 or not all(job.done() for job in jobs):
        before = set(sim.engine.history)
        frame = history_frame(transport, tag="moving", page_size=2)
        after = set(sim.engine.history)
        assert frame.prompt_id.is_unique  # a page repeating the end of the one before gives no second row
        assert before <= set(frame.prompt_id) <= after  # every prompt that had ended is there
        reads += 1
    assert set(history_frame(transport, tag="moving").prompt_id) == {job.prompt_id for job in jobs}


CLOUD_CHILD = """
import sys, time
import comfynb as cn
url, key, journal, workflow = sys.argv[1:5]
session = cn.Session(cn.Cloud(url, max_jobs=3), api_key=key, journal=journal, progress=False)
sweep = session.sweep(workflow, grid={"KSampler.seed": range(12)}, concurrency=6, tag="cloud-recovery")
print(sweep.sweep_id, flush=True)
while sum(job.status == "success" for job in sweep.jobs) < 3:  # the first wave: the next takes 1 s
    time.sleep(0.005)
print("ready", flush=True)
time.sleep(600)
"""


def test_recovery_after_a_killed_kernel_finds_what_finished_on_the_cloud(start, tmp_path):
    from pathlib import Path

    import comfynb.sim
    from comfynb.journal import TERMINAL, Journal

    # a second's work per prompt: the kill lands long before the second wave ends, however slow the machine
    sim = start(cloud=True, api_key=KEY, max_parallel=3, node_times={"KSampler": 1.0})
    journal_path = tmp_path / "sweeps.sqlite"
    workflow = Path(comfynb.sim.__file__).parent / "workflows" / "default_txt2img.json"
    sweep_id = killed_mid_sweep(CLOUD_CHILD, sim.url, KEY, journal_path, workflow)
    journalled = Journal(journal_path).submissions(sweep_id)
    open_before = {s.prompt_id for s in journalled if s.state not in TERMINAL}
    assert open_before, "some prompts must still be on the cloud when the kernel dies"

    # 1. A new process rebuilds the frame from the cloud's history alone, and the journal learns it.
    session = Session(cn.Cloud(sim.url, max_jobs=3), api_key=KEY, journal=journal_path, **FAST)
    try:
        before = set(sim.engine.history)
        frame = session.history_frame(sweep_id=sweep_id)
        after = set(sim.engine.history)
        assert before <= set(frame.prompt_id) <= after and len(frame) >= 3
        assert (frame.status == "success").all() and set(frame.server) == {sim.url}
        assert list(frame["KSampler.seed"]) == list(frame["index"])
        ended = {s.prompt_id for s in Journal(journal_path).submissions(sweep_id) if s.state in TERMINAL}
        assert set(frame.prompt_id) <= ended

        # 2. resume follows what still runs there and sends what was never sent, each once.
        final = session.resume(sweep_id).result(WAIT)
        assert len(final) == 12 and (final.status == "success").all()
        for row in final.itertuples():
            assert (
                read_params(cn.ImageRef.from_url(row.images[0], fetcher=session._servers[0].transport.view).data)[
                    "seed"
                ]
                == row.index
            )
        assert set(final.prompt_id) == set(sim.engine.history)
        assert all(sim.ledger.executions(pid, outcome=None) == 1 for pid in final.prompt_id)  # none twice
        assert {s.prompt_id: s.attempts for s in Journal(journal_path).submissions(sweep_id)}.keys() == set(
            final.prompt_id
        )
    finally:
        session.close()


# -- partner nodes --------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", [False, True])
def test_partner_nodes_get_the_key_in_each_post_and_it_is_never_read_back(start, connect, cloud):
    sim = start(cloud=cloud, api_key=KEY, partner_nodes=True)
    url = cn.Cloud(sim.url) if cloud else sim.url
    without = connect(url, api_key=KEY if cloud else None)
    with pytest.raises(ExecutionError, match="api_key_comfy_org"):
        without.submit(partner_workflow(1)).result(WAIT)
    session = connect(url, api_key=KEY if cloud else None, api_key_comfy_org=PARTNER)
    job = session.submit(partner_workflow(2))
    result = job.result(WAIT)
    assert result.outputs["20"]["text"] == ["partner service answered: caption 2"]
    assert PARTNER not in json.dumps(sim.engine.history) and PARTNER not in json.dumps(job._state.body)


def test_partner_key_is_added_again_after_a_restart(start, connect, monkeypatch):
    monkeypatch.setenv("COMFY_API_KEY", PARTNER)
    sim = start(partner_nodes=True, node_times={"KSampler": 0.3})
    session = connect(sim.url)
    jobs = [session.submit(partner_workflow(seed)) for seed in range(3)]
    threading.Event().wait(0.2)
    sim.restart(downtime=0.1)
    for job in jobs:
        assert job.result(WAIT).outputs["20"]["text"]
    assert any(job.attempts > 1 for job in jobs)


# -- nothing keeps a key --------------------------------------------------------------------------


def test_no_key_in_anything_a_session_writes(start, connect, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    local = start(partner_nodes=True, node_times={"KSampler": 0.05})
    sim = start(cloud=True, api_key=KEY, max_parallel=2, retry_after=0.05, node_times={"KSampler": 0.05})
    session = connect(
        [local.url, cn.Cloud(sim.url, max_jobs=4)],
        api_key=KEY,
        api_key_comfy_org=PARTNER,
        journal=tmp_path / "journal.sqlite",
        max_inflight=[1, "auto"],
    )
    sweep = session.sweep(partner_workflow(0), grid={"KSampler.seed": range(10)}, tag="secret-check")
    threading.Event().wait(0.2)
    sim.drop_sockets()
    frame = sweep.result(WAIT)
    assert set(frame.status) == {"success"} and set(frame.server) == {local.url, sim.url}
    failing = session.submit({"1": {"class_type": "PartnerTextSim", "inputs": {}}})
    with pytest.raises(cn.ComfyError) as info:
        failing.result(WAIT)
    folder = sweep.save(tmp_path / "saved")
    history = session.history_frame(tag="secret-check")  # paged from the cloud's /api/history_v2
    assert (history.server == sim.url).any() and sim.cloud.counts["history_v2"] >= 1
    history.to_parquet(tmp_path / "history.parquet")
    image = Image.new("RGB", (8, 8), (9, 9, 9))
    other = connect(cn.Cloud(sim.url), api_key=KEY, api_key_comfy_org=PARTNER)
    connect(cn.Cloud(sim.url), api_key=KEY).upload(image)
    other.upload(image)  # the cloud holds it: HEAD /api/assets/hash/..., then from-hash
    assert sim.cloud.counts["asset_head"] == 2 and sim.cloud.assets
    sim.cloud.refuse = "unpaid"
    with pytest.raises(cn.PaymentRequired) as refused:
        other.submit(txt2img(3)).result(WAIT)
    sim.cloud.refuse = None
    texts = [
        caplog.text,
        repr(session),
        repr(sweep),
        repr(sweep.jobs[0]),
        repr(sweep.jobs[0].result()),
        str(info.value),
        session.status().to_string(),
        session.servers().to_string(),
        frame.to_json(date_format="iso"),
        json.dumps(local.engine.history),
        json.dumps(sim.engine.history),
        json.dumps(sim.engine.queue_items()),
        json.dumps([job._state.body for job in sweep.jobs]),
        repr(list(session.events)),
        display.sweep_html(sweep),
        display.job_html(sweep.jobs[0]),
        display.result_html(sweep.jobs[0].result()),
        display.error_html(info.value),
        history.to_json(date_format="iso"),
        str(refused.value),
        repr(refused.value),
        display.error_html(refused.value),
        repr(other),
        json.dumps(sim.cloud.assets),
        json.dumps(sim.cloud.storage_requests),
    ]
    blobs = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    assert len(blobs) > 3 and any(path.suffix == ".sqlite" for path in tmp_path.rglob("*"))
    assert (folder / "results.csv").exists()
    for secret in (KEY, PARTNER):
        assert not any(secret in text for text in texts), secret
        assert not any(secret.encode() in blob for blob in blobs), secret
    with pytest.raises(ValueError, match="credential"):
        session.submit(txt2img(1), tags={"note": PARTNER})


# -- bursting ------------------------------------------------------------------------------------


def test_burst_policy():
    full = [(2, 2), (2, 2)]
    assert may_burst(full, waiting=5, used=0, burst_after=4, max_cloud_jobs=None)
    assert not may_burst(full, waiting=4, used=0, burst_after=4, max_cloud_jobs=None)  # queue not long enough
    assert not may_burst([(2, 2), (1, 2)], waiting=50, used=0, burst_after=0, max_cloud_jobs=None)  # a local has room
    assert not may_burst([(0, None)], waiting=50, used=0, burst_after=0, max_cloud_jobs=None)  # unlimited local
    assert not may_burst(full, waiting=50, used=3, burst_after=0, max_cloud_jobs=3)  # budget spent
    assert may_burst(full, waiting=50, used=2, burst_after=0, max_cloud_jobs=3)
    assert may_burst([], waiting=1, used=0, burst_after=0, max_cloud_jobs=None)  # every local is down


@pytest.mark.parametrize(("burst_after", "cap", "expected"), [(100, None, 0), (0, 3, 3)])
def test_cloud_takes_only_the_overflow_within_the_cap(start, connect, burst_after, cap, expected):
    locals_ = [start(node_times={"KSampler": 0.2}) for _ in range(2)]
    sim = start(cloud=True, api_key=KEY, max_parallel=3, node_times={"KSampler": 0.2})
    session = connect(
        [*(s.url for s in locals_), cn.Cloud(sim.url, max_jobs=3)],
        api_key=KEY,
        burst_after=burst_after,
        max_cloud_jobs=cap,
    )
    assert list(session.servers().max_inflight) == [2, 2, 3]  # the plan's parallel jobs, for the cloud
    sweep = session.sweep(txt2img(0), grid={"KSampler.seed": range(12)}, concurrency=12)
    frame = sweep.result(WAIT)
    assert set(frame.status) == {"success"}
    assert (frame.server == sim.url).sum() == expected
    assert session._burst.cloud_jobs(sweep.sweep_id) == expected
    history = session.history_frame(sweep_id=sweep.sweep_id)  # the cloud's rows too, through /api/history_v2
    assert len(history) == 12 and (history.server == sim.url).sum() == expected


def test_failover_from_a_dead_local_server_to_the_cloud(start, connect):
    local = start(node_times={"KSampler": 0.3})
    sim = start(cloud=True, api_key=KEY, max_parallel=3)
    session = connect([local.url, cn.Cloud(sim.url)], api_key=KEY, max_inflight=[4, "auto"])
    jobs = [session.submit(txt2img(seed)) for seed in range(4)]
    threading.Event().wait(0.2)
    local.partition(downtime=3.0)  # cut off: after failover_after its jobs move
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed
    assert any(job.server == sim.url for job in jobs)


def test_prompts_the_cloud_budget_cannot_take_end_once_every_local_server_is_gone(start, connect):
    """A mixed session whose local server died for good: the cloud takes what its budget allows,
    and the rest end as lost after give_up_after instead of waiting forever."""
    local = start(node_times={"KSampler": 0.05})
    sim = start(cloud=True, api_key=KEY, max_parallel=3)
    session = connect([local.url, cn.Cloud(sim.url)], api_key=KEY, burst_after=0, max_cloud_jobs=1, give_up_after=1.0)
    local.kill()
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    ended = list(cn.as_completed(jobs, timeout=WAIT))
    assert len(ended) == 3
    assert sum(job.status == "success" and job.server == sim.url for job in jobs) == 1  # the budget
    lost = [job for job in jobs if job.status == "lost"]
    assert len(lost) == 2 and all("cloud budget (max_cloud_jobs=1) is spent" in str(job.error) for job in lost)
