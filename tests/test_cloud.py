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
from core.conftest import txt2img
from PIL import Image

import comfynb as cn
from comfynb import ExecutionError, Session, _loop, display
from comfynb.burst import may_burst
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


def test_a_cloud_that_names_prompts_itself_is_followed_and_runs_each_once(start, connect):
    sim = start(cloud=True, api_key=KEY)
    sim.cloud.own_ids = True  # the spec's PromptRequest has no prompt_id
    session = connect(cn.Cloud(sim.url), api_key=KEY)
    jobs = [session.submit(txt2img(seed)) for seed in range(3)]
    for seed, job in enumerate(jobs):
        assert seed_of(job) == seed and job.attempts == 1
    assert {job.prompt_id for job in jobs} == set(sim.engine.history)  # the cloud's ids, one run each


def test_history_paging_degrades_with_a_message(start, connect, monkeypatch):
    monkeypatch.setenv("COMFY_CLOUD_API_KEY", KEY)
    sim = start(cloud=True, api_key=KEY)
    session = connect(cn.Cloud(sim.url))  # the key from the environment
    session.submit(txt2img(1)).result(WAIT)
    with pytest.raises(cn.ComfyError, match="no paged /history"):
        session.history_frame()


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
    history = session.history_frame(sweep_id=sweep.sweep_id)  # the cloud has no paged history: left out
    assert len(history) == 12 - expected and sim.url not in set(history.server)


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
