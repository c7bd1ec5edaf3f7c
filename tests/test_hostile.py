"""comfynb against a broken or hostile imitation of ComfyUI (tests/hostile.py), over real sockets:
malformed history and object_info, foreign prompt ids, oversized and trickling answers, echoed
credentials, and closing with prompts still on the server."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest

from comfynb import Session, Timeouts, Workflow
from comfynb.errors import HTTPStatusError, ProtocolError, TagError
from comfynb.history import EntryError
from tests.hostile import Hostile

FAST = {
    "reconcile_after": 0.3,
    "backoff": 0.05,
    "progress": False,
    "timeout": Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
}
WAIT = 20.0
PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
}


@pytest.fixture
def hostile():
    with Hostile().serving() as server:
        yield server


@pytest.fixture
def session(hostile):
    with Session(hostile.url, **FAST) as s:
        yield s


def workflow(seed: int) -> Workflow:
    wf = Workflow.load({k: {**v, "inputs": dict(v["inputs"])} for k, v in PROMPT.items()})
    wf["KSampler.seed"] = seed
    return wf


# -- 1. history entries with wrong types ------------------------------------------------------------

BROKEN = {
    "status": ("status as a string", lambda e: {**e, "status": "success"}),
    "status.messages": ("messages as a dict", lambda e: {**e, "status": {**e["status"], "messages": {}}}),
    "status (list)": ("status as a list", lambda e: {**e, "status": ["success"]}),
    "outputs": ("outputs as a list", lambda e: {**e, "outputs": [1, 2]}),
    "prompt": ("prompt as a dict", lambda e: {**e, "prompt": {"3": 1}}),
    "timestamp": (
        "string timestamps",
        lambda e: {**e, "status": {**e["status"], "messages": [["execution_start", {"timestamp": "noon"}]]}},
    ),
}


@pytest.mark.parametrize("field", BROKEN)
def test_malformed_history_entry_fails_that_job_naming_the_field(hostile, session, caplog, field):
    what, breaker = BROKEN[field]
    bad = {}

    def entry(pid, e):
        return breaker(e) if pid in bad else e

    hostile.entry = entry
    good = session.submit(workflow(1))
    assert good.result(timeout=WAIT).status == "success"
    broken = session.submit(workflow(2))
    bad[broken.prompt_id] = True
    with pytest.raises(ProtocolError) as info:
        broken.result(timeout=WAIT)
    assert isinstance(info.value, EntryError)
    assert field.split(" ")[0] in info.value.field, what
    assert f"'{info.value.field}'" in str(info.value)
    assert broken.status == "error"
    assert "internal error" not in caplog.text
    # frames: every other row kept, the bad one with its error
    frame = session.history_frame()
    assert len(frame) == 2
    rows = frame.set_index("prompt_id")
    assert rows.loc[good.prompt_id, "status"] == "success"
    assert rows.loc[broken.prompt_id, "status"] == "error"
    assert info.value.field in rows.loc[broken.prompt_id, "error"]


def test_sweep_frame_and_save_survive_a_malformed_entry(hostile, session, tmp_path):
    hostile.entry = lambda pid, e: {**e, "outputs": [1]} if e["prompt"][3]["comfynb"]["index"] == 1 else e
    sweep = session.sweep(workflow(0), grid={"KSampler.seed": [1, 2, 3]}, tag="t")
    frame = sweep.result(timeout=WAIT)
    assert list(frame["status"]) == ["success", "error", "success"]
    assert "'outputs'" in frame["error"][1]
    assert list(frame["KSampler.seed"]) == [1, 2, 3]
    sweep.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["00000.png", "00002.png"]


# -- 3. a server that answers with its own prompt_id -------------------------------------------------


def test_a_server_that_ignores_our_prompt_id_is_followed_never_posted_again(hostile, session, caplog):
    hostile.own_ids = True
    job = session.submit(workflow(5))
    asked = job.prompt_id
    assert job.result(timeout=WAIT).status == "success"
    assert len(hostile.posts) == 1 and hostile.posts[0]["prompt_id"] == asked
    assert job.prompt_id != asked and job.prompt_id in hostile.history  # the server's id, followed
    assert "following its id" in caplog.text  # and said so


@pytest.mark.parametrize(
    ("field", "breaker"),
    [
        ("workflow", lambda job: {**job, "workflow": "a graph"}),
        ("status", lambda job: {**job, "execution_status": "success"}),
        ("outputs", lambda job: {**job, "outputs": [1]}),
    ],
)
def test_malformed_jobs_api_record_fails_that_job(hostile, caplog, field, breaker):
    """Where the history has lost the prompt, the jobs API record is read instead: a wrong type
    there ends the job with a ProtocolError too (or, for an unusable graph, without it), never a crash."""
    broken = set()
    hostile.jobs = lambda pid, job: breaker(job) if pid in broken else job
    with Session(hostile.url, **FAST) as session:
        assert session.submit(workflow(1)).result(timeout=WAIT).status == "success"  # read from the jobs API
        job = session.submit(workflow(2))
        broken.add(job.prompt_id)
        try:
            job.result(timeout=WAIT)
        except ProtocolError as exc:
            assert f"'{field}'" in str(exc)
        assert job.done()
    assert "internal error" not in caplog.text


# -- 2. /object_info with wrong types ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "field"),
    [
        ({"KSampler": {"input": {"required": "str"}}}, "KSampler.input.required"),
        ({"KSampler": {"input": ["seed"]}}, "KSampler.input"),
        ({"KSampler": "node"}, "KSampler"),
        (["KSampler"], "/object_info"),
    ],
)
def test_malformed_object_info_degrades_routing_for_that_server(hostile, info, field):
    from comfynb.capabilities import Capabilities

    with pytest.raises(ProtocolError, match=re.escape(field)):
        Capabilities(info, url=hostile.url)
    hostile.object_info = info
    with Session([hostile.url], capabilities=True, **FAST) as session:
        server = session._servers[0]
        assert server.caps.any and isinstance(server.caps.error, ProtocolError)
        assert field in str(server.caps.error)
        assert session.submit(workflow(3)).result(timeout=WAIT).status == "success"


# -- 5. secrets ------------------------------------------------------------------------------------------

TOKEN = 'T0k3n-ä"\\xyz'


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"token": TOKEN},
        {"auth": ("bob", TOKEN)},
        {"headers": {"X-Api-Key": TOKEN}},
    ],
    ids=["bearer-header", "token", "basic", "api-key-header"],
)
def test_an_echoed_credential_is_scrubbed_everywhere(hostile, caplog, credentials):
    hostile.echo_auth = True
    forms = [TOKEN, json.dumps(TOKEN)[1:-1], base64.b64encode(f"bob:{TOKEN}".encode()).decode(), "bob:"]
    session = Session(hostile.url, **FAST, **credentials)
    with caplog.at_level(logging.INFO, logger="comfynb"):
        with pytest.raises(HTTPStatusError) as info:
            session.__enter__()
    error = info.value
    assert error.status == 401 and "***" in error.body and "expired" in str(error)
    shown = [str(error), error.body, session.servers().to_string(), caplog.text, repr(session)]
    assert "is down" in caplog.text
    for text in shown:
        for form in forms:
            assert form not in text
    session.close()


def test_an_error_answer_to_a_post_is_scrubbed(hostile, session):
    del session
    with Session(hostile.url, token=TOKEN, **FAST) as session:
        hostile.echo_auth = True
        job = session.submit(workflow(1))
        with pytest.raises(HTTPStatusError) as info:
            job.result(timeout=WAIT)
    assert "expired" in info.value.body
    for text in (str(info.value), info.value.body, session.status().to_string()):
        assert TOKEN not in text and json.dumps(TOKEN)[1:-1] not in text


@pytest.mark.parametrize(
    ("credentials", "tag"),
    [
        ({"token": "pässwörd"}, "x pässwörd"),  # non-ASCII: JSON text would hold \\u00e4
        ({"token": 'a"b\\cdef'}, 'say a"b\\cdef'),  # JSON text would hold \\" and \\\\
        ({"headers": {"Authorization": "Bearer bare-token-1"}}, "bare-token-1"),
        ({"auth": ("bob", "pw1")}, "pw1"),  # shorter than 4 characters
        ({"auth": ("bob", "secret")}, base64.b64encode(b"bob:secret").decode()),
        ({"auth": ("bob", "secret")}, "bob:secret"),
        ({"headers": {"Cookie": "sid=c00kie; theme=dark"}}, "c00kie"),
    ],
)
def test_tags_holding_a_credential_are_refused(hostile, credentials, tag):
    with Session(hostile.url, **FAST, **credentials) as session:
        for tags in (tag, {"note": [1, {"deep": tag}]}, {tag: 1}):
            with pytest.raises(TagError, match="credential"):
                session.submit(workflow(1), tags=tags)
        assert session.submit(workflow(1), tags="harmless").result(timeout=WAIT).status == "success"
    assert len(hostile.posts) == 1


def test_tags_that_are_not_json_data_are_a_clear_error(session):
    loop: list = []
    loop.append(loop)
    for tags, problem in ((["a", "b"], "string or a dict"), ({"x": object()}, "JSON"), ({"x": loop}, "JSON")):
        with pytest.raises(TagError, match=problem):
            session.submit(workflow(1), tags=tags)


# -- 4. bounded sizes and rates ---------------------------------------------------------------------------

CLIENT = r"""
import json, resource, sys, time
from pathlib import Path
from comfynb import ComfyError, Session, Timeouts
from comfynb.results import ImageRef

url, folder = sys.argv[1], Path(sys.argv[2])
out = {}
import logging
warned = []
class Keep(logging.Handler):
    def emit(self, record):
        warned.append(record)
logging.getLogger("comfynb").addHandler(Keep(logging.WARNING))
def peak():
    # this process's own high-water mark: ru_maxrss would also count the parent that spawned us
    # (Linux carries the pre-exec peak over exec), VmHWM belongs to this address space alone
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: MB (Linux: KB)

def attempt(name, fn):
    try:
        fn()
        out[name] = "no error"
    except ComfyError as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
    out[name + " peak MB"] = peak()

timeout = Timeouts(connect=2.0, read=5.0, total=None, ws_heartbeat=0.5)
with Session(url, progress=False, timeout=timeout, reconcile_after=0.3, give_up_after=2.0) as session:
    out["start peak MB"] = peak()
    server = session._servers[0]
    ref = lambda name: ImageRef(name, "", "output", "9", server.url, server.transport.view)
    control = json.loads(sys.stdin.readline())  # the test sets the server up, step by step
    attempt("view", lambda: ref("endless.png").data)
    print(json.dumps({"ready": "history"}), flush=True); sys.stdin.readline()
    attempt("history_frame", lambda: session.history_frame())
    attempt("job", lambda: session.submit({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}).result(timeout=30))
    print(json.dumps({"ready": "big file"}), flush=True); sys.stdin.readline()
    attempt("big file into memory", lambda: ref("big.png").data)
    attempt("big file saved", lambda: out.setdefault("saved", ref("big.png").save(folder).stat().st_size))
    print(json.dumps({"ready": "ws"}), flush=True); sys.stdin.readline()
    from comfynb import _loop
    _loop.get_loop().call_soon_threadsafe(server.connection.replace, "test: reconnect to get the huge frame")
    deadline = time.monotonic() + 10
    while "exceeds" not in str(server.connection.last_error) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["ws"] = str(server.connection.last_error)
    out["ws warnings"] = [r.getMessage() for r in warned if "Limits.ws_frame" in r.getMessage()]
    out["ws peak MB"] = peak()
    out["peaks"] = {k: v for k, v in out.items() if k.endswith("peak MB")}
print(json.dumps(out), flush=True)
"""


def test_endless_and_huge_answers_end_with_clear_errors_in_bounded_memory(hostile, tmp_path):
    """Client memory (peak RSS of a client process, measured there with `resource`) stays under
    300 MB against endless /view and /history answers and a 100 MB WebSocket frame, and a 100 MB
    file is saved to disk without being held in memory."""
    import os
    import subprocess
    import sys

    hostile.view = "endless"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, hostile.url, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

    def step() -> dict:
        child.stdin.write("{}\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    try:
        assert step() == {"ready": "history"}
        hostile.history["old"] = hostile._stored("old", {}, "execution_success")
        hostile.history_body = "endless"
        assert step() == {"ready": "big file"}
        hostile.history_body = None
        hostile.view = b"\x89PNG" + b"\0" * (100 << 20)
        assert step() == {"ready": "ws"}
        hostile.ws_junk = [100 << 20]
        out = step()
    finally:
        child.kill() if child.poll() is None else None
        child.wait(10)
    assert out["view"].startswith("TooLarge") and "64 MB" in out["view"] and "Limits.view" in out["view"]
    assert out["history_frame"].startswith("TooLarge") and "64 MB" in out["history_frame"]
    assert "Limits.json" in out["job"] and "could not read the outcome" in out["job"]
    assert out["big file into memory"].startswith("TooLarge") and "100 MB" in out["big file into memory"]
    assert out["big file saved"] == "no error" and out["saved"] == len(hostile.view)
    assert "exceeds limit" in out["ws"]
    assert out["ws warnings"]  # a warning names the limit (Limits.ws_frame) and how to raise it
    peaks = {k: v for k, v in out.items() if k.endswith("peak MB")}
    assert max(peaks.values()) < 300, peaks


def test_a_trickle_ends_quickly_even_without_a_total_timeout(hostile):
    from comfynb import Timeout
    from comfynb.results import ImageRef

    timeout = Timeouts(connect=2.0, read=5.0, total=None, ws_heartbeat=0.5, rate_window=1.0)
    with Session(hostile.url, progress=False, timeout=timeout) as session:
        hostile.view = "trickle"
        server = session._servers[0]
        with pytest.raises(Timeout, match=r"too slow: \d bytes in the last 1 s, below Timeouts.min_rate=1024"):
            _ = ImageRef("t.png", "", "output", "9", server.url, server.transport.view).data
        hostile.history["old"] = hostile._stored("old", {}, "execution_success")
        hostile.history_body = "trickle"
        with pytest.raises(Timeout, match="too slow"):
            session.history_frame()


# -- 6. sweeps that cannot mislead -------------------------------------------------------------------------


def test_the_same_input_under_two_addresses_is_refused(hostile, session):
    from comfynb import WorkflowError

    with pytest.raises(WorkflowError, match=r"'KSampler.seed' and '3.seed' are the same input"):
        session.sweep(workflow(0), grid={"KSampler.seed": [1, 2], "3.seed": [50, 60]})
    with pytest.raises(WorkflowError, match=r"'3.seed' and 'KSampler.seed' are the same input.*seeds="):
        session.sweep(workflow(0), grid={"3.seed": [50, 60]}, seeds=2)
    with pytest.raises(WorkflowError, match="same input"):
        session.sweep(workflow(0), rows=[{"KSampler.seed": 1}, {"3.seed": 2}])
    assert hostile.posts == []


def test_huge_grids_are_lazy_and_bounded(hostile, session):
    import time
    import tracemalloc

    from comfynb import WorkflowError

    big = {"KSampler.seed": range(1000), "KSampler.steps": range(1000)}  # 10^6 rows
    with pytest.raises(WorkflowError, match=r"1,000,000 rows, more than max_rows=100,000"):
        session.sweep(workflow(0), grid=big)
    assert hostile.posts == []
    hostile.finish = False  # the first prompt runs forever: nothing else is sent
    tracemalloc.start()
    try:
        sweep = session.sweep(workflow(0), grid=big, max_rows=None, concurrency=2)
        assert len(sweep) == 1_000_000
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 20 << 20  # memory does not grow with the grid: rows are built as they are sent
    assert len(sweep.jobs) <= 2 and sweep.counts()["pending"] >= 999_998
    deadline = time.monotonic() + WAIT
    while not (hostile.running and hostile.pending) and time.monotonic() < deadline:
        time.sleep(0.01)  # the two rows the concurrency allows are on the server
    assert len(hostile.posts) == 2 and len(sweep.jobs) == 2
    assert sweep.cancel() == 1_000_000
    ended = list(sweep.as_completed(timeout=WAIT))  # the two sent rows: interrupted, deleted
    assert sorted(job.status for job in ended) == ["cancelled", "interrupted"]
    assert sweep.counts() == {"interrupted": 1, "cancelled": 999_999}
    assert hostile.interrupted == [ended[0].prompt_id] or hostile.interrupted == [ended[1].prompt_id]
    assert len(hostile.posts) == 2


def test_empty_grids_are_refused(session):
    from comfynb import WorkflowError

    for empty in ({"grid": {}}, {"zip": {}}):
        with pytest.raises(WorkflowError, match="nothing to sweep"):
            session.sweep(workflow(0), **empty)
    assert len(session.sweep(workflow(0), grid={}, seeds=2).result(timeout=WAIT)) == 2


def test_paths_in_a_grid(hostile, session, tmp_path):
    from comfynb import WorkflowError
    from tests.hostile import png

    picture = tmp_path / "in.png"
    picture.write_bytes(png())
    wf = Workflow.load(
        {
            **PROMPT,
            "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}},
        }
    )
    with pytest.raises(
        WorkflowError, match=r"'6.text' value 0: '6.text' is not an input that takes a file.*str\(path\)"
    ):
        session.sweep(wf, grid={"6.text": [picture]})
    missing = tmp_path / "gone.png"
    with pytest.raises(WorkflowError, match=r"'LoadImage.image' value 1: no such file .*gone.png"):
        session.sweep(wf, grid={"LoadImage.image": [picture, missing]})
    with pytest.raises(WorkflowError, match=r"row 1 'LoadImage.image': no such file"):
        session.sweep(wf, rows=[{"LoadImage.image": picture}, {"LoadImage.image": missing}])
    assert hostile.uploads == [] and hostile.posts == []
    grid = {"LoadImage.image": [picture], "6.text": [str(picture)]}
    frame = session.sweep(wf, grid=grid, check=False).result(timeout=WAIT)  # this server lists few node types
    assert len(hostile.uploads) == 1 and frame["6.text"][0] == str(picture)
    assert hostile.posts[0]["prompt"]["1"]["inputs"]["image"] == hostile.uploads[0]


def test_self_referencing_values_are_a_clear_error(session):
    from comfynb import WorkflowError

    loop: list = []
    loop.append(loop)
    with pytest.raises(WorkflowError, match="contains itself"):
        session.sweep(workflow(0), grid={"KSampler.seed": [loop]})
    with pytest.raises(TagError):
        session.sweep(workflow(0), grid={"KSampler.seed": [1]}, tag=["a"])


def test_a_300_character_server_file_name_is_saved_under_a_shorter_one(hostile, session, tmp_path):
    hostile.filename = "x" * 296 + ".png"
    result = session.submit(workflow(1)).result(timeout=WAIT)
    path = result.images[0].save(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".png" and len(path.name) < 100
    assert path.read_bytes() == hostile.view
    hostile.filename = "y" * 296 + ".png"
    other = session.submit(workflow(2)).result(timeout=WAIT).images[0].save(tmp_path)
    assert other != path and other.read_bytes() == hostile.view


# -- 7. closing with prompts on the server -------------------------------------------------------------------


def _queued_three(hostile, session) -> list:
    import time

    hostile.finish = False
    jobs = [session.submit(workflow(seed)) for seed in range(3)]
    deadline = time.monotonic() + WAIT
    while not all(job.status in ("queued", "running") for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hostile.running == jobs[0].prompt_id and hostile.pending == [j.prompt_id for j in jobs[1:]]
    return jobs


def test_close_takes_our_prompts_off_the_server(hostile):
    session = Session(hostile.url, **FAST)
    jobs = _queued_three(hostile, session)
    session.close()  # the default: cancel
    assert hostile.interrupted == [jobs[0].prompt_id]
    assert hostile.deleted == [j.prompt_id for j in jobs[1:]] and hostile.pending == []
    assert [job.status for job in jobs] == ["cancelled"] * 3
    assert all(f"stopped on {hostile.url}" in str(job.error) for job in jobs)


def test_close_without_cancel_leaves_them(hostile):
    session = Session(hostile.url, **FAST)
    jobs = _queued_three(hostile, session)
    session.close(cancel=False)
    assert hostile.interrupted == [] and hostile.deleted == [] and len(hostile.pending) == 2
    assert all(job.status == "cancelled" and "may still run" in str(job.error) for job in jobs)


# -- what already worked stays so ---------------------------------------------------------------------------


def test_many_sessions_against_a_hostile_server_leak_nothing(hostile):
    import gc
    import os
    import threading

    hostile.ws_junk = ["not json", b"\x00\x01", '{"type": "executing", "data": {"node": [1], "prompt_id": 5}}']
    hostile.entry = lambda pid, e: {**e, "status": "weird"}

    def one_round() -> None:
        with Session(hostile.url, **FAST) as session:
            with pytest.raises(ProtocolError):
                session.submit(workflow(1)).result(timeout=WAIT)

    one_round()
    gc.collect()
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for _ in range(12):
        one_round()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds + 2 and threading.active_count() <= threads


def test_log_records_are_scrubbed_whatever_logs_them(hostile, caplog):
    with Session(hostile.url, token=TOKEN, **FAST):
        with caplog.at_level(logging.INFO, logger="comfynb"):
            logging.getLogger("comfynb.pool").warning("echo %s and %s", TOKEN, json.dumps({"t": TOKEN}))
            try:
                raise ValueError(f"deep inside: {TOKEN}")
            except ValueError:
                logging.getLogger("comfynb.session").exception("failed")
    assert "echo *** and" in caplog.text and "deep inside: ***" in caplog.text
    assert TOKEN not in caplog.text and json.dumps(TOKEN)[1:-1] not in caplog.text


async def test_headers_trickled_a_byte_a_second_end_within_read_even_without_total():
    """A server that sends its status line and headers one byte a second never trips a per-read
    timeout; with ``total=None`` the headers must still have come within ``read`` seconds."""
    import asyncio

    from comfynb import Timeout
    from comfynb.transport import Transport

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    transport = Transport(url, timeout=Timeouts(connect=2.0, read=1.0, total=None), retries=0)
    try:
        with pytest.raises(Timeout, match=r"GET /system_stats at .* timed out .*read 1 s, total none"):
            await transport.system_stats()
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
