"""Transport against real sockets: tiny aiohttp apps for what ComfyUI never does (HTML pages,
echoed credentials, TLS, hangs), the embedded simulator for everything ComfyUI does."""

import asyncio
import base64
import io
import json
import logging
import ssl
import subprocess
import sys
import time
import traceback
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from comfynb import _loop
from comfynb.errors import (
    ComfyError,
    HTTPStatusError,
    ProtocolError,
    ServerUnavailable,
    Timeout,
    ValidationError,
)
from comfynb.events import FEATURE_FLAGS, Event, Preview, parse_binary, parse_text
from comfynb.sim import Simulator
from comfynb.transport import NotSupported, Timeouts, Transport, validation_error

TRACES = Path("/work/shared/protocol-traces")
HITS = web.AppKey("hits", dict)
SECRETS = ("s3cr3t-header-value", "t0ken-abcdef-123", "p4ssw0rd-xyz")


async def on_loop(coro):
    """Run on comfynb's private loop, as the client does, while this test's loop keeps serving."""
    return await _loop.wrap(_loop.submit(coro))


@pytest.fixture
async def serve():
    """Start a small aiohttp app on this test's loop; returns its base URL."""
    runners = []

    async def start(app, ssl_context=None):
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def make():
    """Transports closed on the private loop after the test."""
    made = []

    def build(url, **kw):
        kw.setdefault("backoff", 0.01)
        t = Transport(url, **kw)
        made.append(t)
        return t

    yield build
    for t in made:
        await on_loop(t.close())


def _counting_app(routes):
    """An app whose handlers are (method, path, handler); counts hits per path in app[HITS]."""
    app = web.Application()
    app[HITS] = {}

    def wrap(path, handler):
        async def h(request):
            app[HITS][path] = app[HITS].get(path, 0) + 1
            return await handler(request)

        return h

    for method, path, handler in routes:
        app.router.add_route(method, path, wrap(path, handler))
    return app


def _closed_port_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- URL and credentials -----------------------------------------------------------------------


def test_url_forms():
    assert Transport("127.0.0.1:8188").url == "http://127.0.0.1:8188"
    assert Transport("http://h:1/comfy/").url == "http://h:1/comfy"
    assert Transport("wss://h:1/?x=1#f").url == "https://h:1"
    t = Transport(f"https://me:{SECRETS[2]}@h:1")
    assert t.url == "https://h:1" and SECRETS[2] not in repr(t) and "hidden" in repr(t)
    with pytest.raises(ValueError) as info:
        Transport(f"ftp://me:{SECRETS[2]}@h")
    assert SECRETS[2] not in str(info.value)
    with pytest.raises(ValueError):
        Transport("http://h:1", token="abcd", auth=("a", "b"))
    with pytest.raises(ValueError):
        Transport("http://u:p@h:1", headers={"authorization": "x"})


def _echo_app():
    """Echoes request headers: into JSON on /echo, into a 500 body on /fail."""

    async def echo(request):
        return web.json_response(dict(request.headers))

    async def fail(request):
        return web.Response(status=500, text="oops " + json.dumps(dict(request.headers)))

    async def forbidden(request):
        return web.Response(status=403, text="denied for " + request.headers.get("Authorization", ""))

    return _counting_app(
        [("GET", "/echo", echo), ("GET", "/fail", fail), ("POST", "/prompt", fail), ("GET", "/queue", forbidden)]
    )


def _assert_clean(text):
    for secret in SECRETS:
        assert secret not in text


async def test_credentials_are_sent_but_never_shown(serve, make, caplog):
    caplog.set_level(logging.DEBUG)
    url = await serve(_echo_app())
    t = make(url, headers={"X-Api-Key": SECRETS[0]}, token=SECRETS[1], retries=2)
    seen = await on_loop(t.request_json("GET", "/echo"))
    assert seen["X-Api-Key"] == SECRETS[0] and seen["Authorization"] == f"Bearer {SECRETS[1]}"
    errors = []
    for coro in (t.request_json("GET", "/fail"), t.post_prompt({"prompt": {}}), t.get_queue()):
        with pytest.raises(HTTPStatusError) as info:
            await on_loop(coro)
        errors.append(info.value)
    assert [e.status for e in errors] == [500, 500, 403]
    assert "credentials" in str(errors[2])
    for e in errors:
        assert e.__cause__ is None and e.__context__ is None
        _assert_clean(str(e) + repr(e) + e.body + repr(e.args) + "".join(traceback.format_exception(e)))
        assert "***" in e.body
    _assert_clean(repr(t) + str(t) + caplog.text)
    assert "retry 2/2" in caplog.text  # the retries were logged, without the secrets


async def test_basic_auth_from_the_url(serve, make):
    url = await serve(_echo_app())
    t = make(url.replace("http://", f"http://me:{SECRETS[2]}@"))
    seen = await on_loop(t.request_json("GET", "/echo"))
    assert seen["Authorization"] == "Basic " + base64.b64encode(f"me:{SECRETS[2]}".encode()).decode()
    assert t.url == url
    with pytest.raises(HTTPStatusError) as info:
        await on_loop(t.request_json("GET", "/fail"))
    _assert_clean(str(info.value) + info.value.body)
    assert "bWU6" not in info.value.body  # nor the base64 form


async def test_credentials_not_in_connection_errors(make):
    t = make(_closed_port_url().replace("http://", f"http://me:{SECRETS[2]}@"), retries=0)
    with pytest.raises(ServerUnavailable) as info:
        await on_loop(t.system_stats())
    _assert_clean(str(info.value) + "".join(traceback.format_exception(info.value)))


# -- failures a ComfyUI server does not produce --------------------------------------------------


async def test_connection_refused_after_retries(make, caplog):
    caplog.set_level(logging.DEBUG, logger="comfynb.transport")
    url = _closed_port_url()
    t = make(url, retries=2)
    with pytest.raises(ServerUnavailable) as info:
        await on_loop(t.get_queue())
    e = info.value
    assert url in str(e) and "comfynb sim" in str(e) and "after 3 attempts" in str(e)
    assert e.url == url and isinstance(e, ComfyError)
    assert caplog.text.count("retry") == 2
    caplog.clear()
    with pytest.raises(ServerUnavailable):  # POST: no retry
        await on_loop(t.post_prompt({"prompt": {}}))
    assert "retry" not in caplog.text


def _html_app(status=200):
    async def page(request):
        return web.Response(status=status, text="<html><body>router login</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


async def test_an_html_site_is_not_comfyui(serve, make):
    t = make(await serve(_html_app()))
    for coro in (t.system_stats(), t.get_queue(), t.get_history("x"), t.post_prompt({"prompt": {}}), t.object_info()):
        with pytest.raises(ProtocolError, match="answers but is not ComfyUI"):
            await on_loop(coro)
    with pytest.raises(ProtocolError, match="no WebSocket"):
        await on_loop(t.ws_connect("c"))
    t404 = make(await serve(_html_app(404)))
    with pytest.raises(ProtocolError, match="not ComfyUI"):
        await on_loop(t404.system_stats())
    with pytest.raises(NotSupported):
        await on_loop(t404.get_job("x"))


async def test_json_of_the_wrong_shape_is_not_comfyui(serve, make):
    async def other(request):
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", other)
    t = make(await serve(app))
    for coro in (t.system_stats(), t.get_queue(), t.post_prompt({"prompt": {}}), t.upload_image(b"x", "a.png")):
        with pytest.raises(ProtocolError, match="not ComfyUI"):
            await on_loop(coro)


async def test_timeouts_retry_gets_but_not_posts(serve, make):
    async def hang(request):
        await asyncio.sleep(5)
        return web.json_response({})

    app = _counting_app([("GET", "/queue", hang), ("POST", "/prompt", hang)])
    t = make(await serve(app), timeout=Timeouts(connect=1, read=0.2, total=1), retries=1)
    with pytest.raises(Timeout) as info:
        await on_loop(t.get_queue())
    assert isinstance(info.value, TimeoutError) and "after 2 attempts" in str(info.value)
    with pytest.raises(Timeout):
        await on_loop(t.post_prompt({"prompt": {}}))
    assert app[HITS] == {"/queue": 2, "/prompt": 1}
    assert Transport("h:1", timeout=2.5).timeouts == Timeouts(connect=2.5, read=2.5, total=2.5)


async def test_5xx_is_retried_for_gets_and_reported_with_a_truncated_body(serve, make):
    state = {"n": 0}

    async def flaky(request):
        state["n"] += 1
        if state["n"] <= 2:
            return web.Response(status=503, text="busy")
        return web.json_response({"queue_running": [], "queue_pending": []})

    async def broken(request):
        return web.Response(status=500, text="x" * 10_000)

    app = _counting_app([("GET", "/queue", flaky), ("GET", "/broken", broken), ("POST", "/prompt", broken)])
    t = make(await serve(app), retries=3)
    assert await on_loop(t.get_queue()) == ([], [])
    with pytest.raises(HTTPStatusError) as info:
        await on_loop(t.request_json("GET", "/broken"))
    assert info.value.status == 500 and len(info.value.body) == 2000 and len(str(info.value)) < 400
    with pytest.raises(HTTPStatusError):
        await on_loop(t.post_prompt({"prompt": {}}))
    assert app[HITS] == {"/queue": 3, "/broken": 4, "/prompt": 1}


async def test_jobs_api_detection(serve, make):
    async def job(request):
        if request.match_info["id"] == "known":
            return web.json_response({"id": "known", "status": "pending"})
        return web.json_response({"error": "Job not found"}, status=404)

    t = make(await serve(_counting_app([("GET", "/api/jobs/{id}", job)])))
    assert t.jobs_api is None
    assert await on_loop(t.get_job("nope")) is None and t.jobs_api is True
    assert (await on_loop(t.get_job("known")))["status"] == "pending"

    old = _counting_app([])
    t_old = make(await serve(old))
    with pytest.raises(NotSupported) as info:
        await on_loop(t_old.get_job("x"))
    assert t_old.jobs_api is False and isinstance(info.value, HTTPStatusError) and info.value.status == 404
    with pytest.raises(NotSupported):  # known now: no second request
        await on_loop(t_old.get_job("y"))


async def test_url_prefix_behind_a_proxy(serve, make):
    async def stats(request):
        return web.json_response({"system": {"comfyui_version": "0.8.0"}, "devices": []})

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_json({"type": "status", "data": {"sid": request.query["clientId"]}})
        await sock.close()
        return sock

    app = _counting_app([("GET", "/comfy/system_stats", stats), ("GET", "/comfy/ws", ws)])
    t = make(await serve(app) + "/comfy/")
    assert (await on_loop(t.system_stats()))["system"]["comfyui_version"] == "0.8.0"

    async def read_one():
        sock = await t.ws_connect("abc")
        try:
            return (await sock.receive_json())["data"]["sid"]
        finally:
            await sock.close()

    assert await on_loop(read_one()) == "abc"


async def test_ws_refused_and_forbidden(serve, make):
    with pytest.raises(ServerUnavailable, match="comfynb sim"):
        await on_loop(make(_closed_port_url()).ws_connect("c"))

    seen = []

    async def forbid(request):
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=403)

    t = make(await serve(_counting_app([("GET", "/ws", forbid)])), token=SECRETS[1])
    with pytest.raises(HTTPStatusError) as info:
        await on_loop(t.ws_connect("c"))
    assert info.value.status == 403 and "Origin" in str(info.value) and info.value.__context__ is None
    assert seen == [f"Bearer {SECRETS[1]}"]  # the upgrade carries the credentials
    _assert_clean(str(info.value))


async def test_a_transport_stays_on_its_loop(serve, make):
    t = make(await serve(_echo_app()))
    await on_loop(t.request_json("GET", "/echo"))
    with pytest.raises(RuntimeError, match="event loop"):
        await t.request_json("GET", "/echo")


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


async def test_https_and_wss(serve, make, tls_context):
    async def stats(request):
        return web.json_response({"system": {"scheme": request.scheme}})

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_json({"secure": request.secure})
        await sock.close()
        return sock

    app = _counting_app([("GET", "/system_stats", stats), ("GET", "/ws", ws)])
    url = await serve(app, ssl_context=tls_context)
    checked = make(url, retries=3)
    with pytest.raises(ServerUnavailable, match="verify_ssl=False") as info:
        await on_loop(checked.system_stats())
    assert "after" not in str(info.value)  # certificate failures are not retried
    with pytest.raises(ServerUnavailable, match="verify_ssl=False"):
        await on_loop(checked.ws_connect("c"))
    assert app[HITS] == {}

    trusting = make(url, verify_ssl=False)
    assert (await on_loop(trusting.system_stats()))["system"]["scheme"] == "https"

    async def read_one():
        sock = await trusting.ws_connect("c")
        try:
            return await sock.receive_json()
        finally:
            await sock.close()

    assert await on_loop(read_one()) == {"secure": True}


# -- validation bodies recorded from a real server ---------------------------------------------------


def _recorded_400_bodies():
    for line in (TRACES / "d_validation_failures.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["src"] == "http" and rec["status"] == 400:
            yield rec["body"]


def test_validation_error_from_every_recorded_400():
    bodies = list(_recorded_400_bodies())
    assert len(bodies) == 9
    for body in bodies:
        e = validation_error(body)
        assert isinstance(e, ValidationError) and e.type == body["error"]["type"] and e.raw is body
        assert len(e.node_errors) == sum(len(n["errors"]) for n in body["node_errors"].values())
        assert body["error"]["message"] in str(e)
    first = validation_error(bodies[0])
    missing, too_big = first.node_errors
    assert (missing.node_id, missing.class_type, missing.input_name, missing.type) == (
        "2",
        "SaveImage",
        "images",
        "required_input_missing",
    )
    assert (too_big.node_id, too_big.class_type, too_big.input_name, too_big.received) == (
        "3",
        "ImageBlur",
        "blur_radius",
        99,
    )
    assert too_big.message == "Value 99 bigger than max of 31" and too_big.details == "blur_radius"
    assert "node 3 (ImageBlur) input 'blur_radius': Value 99 bigger than max of 31" in str(first)
    unknown = validation_error(bodies[1])
    assert "NoSuchNodeXYZ" in str(unknown) and "#2" in str(unknown)


def test_validation_error_of_a_partial_200_and_odd_bodies():
    partial = validation_error(
        {
            "prompt_id": "p",
            "number": 1,
            "node_errors": {
                "5": {
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": "x",
                            "extra_info": {"input_name": "sampler_name", "received_value": "foo"},
                        }
                    ],
                    "class_type": "KSampler",
                }
            },
        }
    )
    assert "some outputs" in str(partial) and partial.node_errors[0].received == "foo"
    odd = validation_error({"error": "plain text", "node_errors": {"1": "junk", "2": {"errors": ["junk", {}]}}})
    assert "plain text" in str(odd) and [(n.node_id, n.class_type) for n in odd.node_errors] == [("2", "?")]


def test_a_transport_survives_fork():
    """A forked child gets a new private loop; the transport opens a fresh session there."""
    script = """
import os
from aiohttp import web
from comfynb import _loop
from comfynb.transport import Transport

async def start():
    async def queue(request):
        return web.json_response({"queue_running": [], "queue_pending": [[1, "b"], [0, "a"]]})
    app = web.Application()
    app.router.add_get("/queue", queue)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner.addresses[0][1]

port = _loop.run_sync(start())  # served by the parent's private loop
t = Transport(f"http://127.0.0.1:{port}")
assert _loop.run_sync(t.get_queue()) == ([], ["a", "b"])
pid = os.fork()
if pid == 0:
    try:
        assert _loop.run_sync(t.get_queue(), timeout=10) == ([], ["a", "b"])
        _loop.run_sync(t.close(), timeout=10)
        os._exit(0)
    except BaseException as e:
        print(repr(e))
        os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
# the child must not have disturbed the parent's pooled connection (shared epoll set)
assert _loop.run_sync(t.get_queue(), timeout=5) == ([], ["a", "b"])
_loop.run_sync(t.close())
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    assert "Unclosed" not in proc.stderr


# -- against the embedded simulator ---------------------------------------------------------------


def tiny(color=0x112233, prefix="tiny"):
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def wait_history(t, prompt_id, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        entry = await on_loop(t.get_history(prompt_id))
        if entry is not None:
            return entry
        assert asyncio.get_running_loop().time() < deadline, f"no history for {prompt_id}"
        await asyncio.sleep(0.02)


async def test_simulator_round_trip(make):
    async with Simulator() as s:
        t = make(s.url)
        stats = await on_loop(t.system_stats())
        assert "comfyui_version" in stats["system"]
        info = await on_loop(t.object_info())
        assert info["SaveImage"]["output_node"] is True
        assert set(await on_loop(t.object_info("KSampler"))) == {"KSampler"}
        assert await on_loop(t.object_info("NoSuchNode")) == {}

        answer = await on_loop(t.post_prompt({"prompt": tiny(), "client_id": "c1", "prompt_id": "p-1"}))
        assert answer["prompt_id"] == "p-1" and answer["node_errors"] == {}
        entry = await wait_history(t, "p-1")
        assert entry["status"]["status_str"] == "success"
        image = entry["outputs"]["2"]["images"][0]
        png = await on_loop(t.view(image["filename"], image["subfolder"], image["type"]))
        assert png.startswith(b"\x89PNG")
        with pytest.raises(HTTPStatusError) as info:
            await on_loop(t.view("missing.png"))
        assert info.value.status == 404

        assert await on_loop(t.get_queue()) == ([], [])
        job = await on_loop(t.get_job("p-1"))
        assert job["status"] == "completed" and t.jobs_api is True
        assert await on_loop(t.get_job("unknown")) is None
        assert await on_loop(t.get_history("unknown")) is None
        page = await on_loop(t.get_history_page(1))
        assert list(page) == ["p-1"]
        assert await on_loop(t.get_history_page(5, offset=3)) == {}
        assert (await on_loop(t.request_json("GET", "/prompt")))["exec_info"]["queue_remaining"] == 0

        uploaded = await on_loop(t.upload_image(png, "up.png", subfolder="mine"))
        assert uploaded["name"] == "up.png" and uploaded["type"] == "input"
        again = await on_loop(t.upload_image(png, "up.png", subfolder="mine"))
        assert again["name"] == "up.png"  # identical content: same name, so retrying is safe


def test_from_a_plain_script():
    """No event loop in this thread: blocking calls through the private loop."""
    with Simulator().running() as s:
        t = Transport(s.url)
        try:
            _loop.run_sync(t.post_prompt({"prompt": tiny(), "client_id": "c", "prompt_id": "sync-1"}))
            for _ in range(500):
                entry = _loop.run_sync(t.get_history("sync-1"), timeout=10)
                if entry:
                    break
                time.sleep(0.01)
            assert entry["status"]["completed"] is True
        finally:
            _loop.run_sync(t.close())


async def test_simulator_validation_error(make):
    async with Simulator() as s:
        t = make(s.url)
        bad = tiny()
        del bad["2"]["inputs"]["images"]
        bad["3"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}}
        bad["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}}
        with pytest.raises(ValidationError) as info:
            await on_loop(t.post_prompt({"prompt": bad, "client_id": "c"}))
        e = info.value
        assert e.type == "prompt_outputs_failed_validation"
        got = {(n.node_id, n.class_type, n.input_name, n.type) for n in e.node_errors}
        assert got == {
            ("2", "SaveImage", "images", "required_input_missing"),
            ("3", "ImageBlur", "blur_radius", "value_bigger_than_max"),
        }
        assert [n.received for n in e.node_errors if n.node_id == "3"] == [99]
        with pytest.raises(ValidationError) as info:
            await on_loop(t.post_prompt({"prompt": {"1": {"class_type": "NoSuchNodeXYZ", "inputs": {}}}}))
        assert info.value.type == "invalid_prompt" and "NoSuchNodeXYZ" in str(info.value)


async def test_simulator_queue_order_delete_and_interrupt(make):
    async with Simulator(node_times={"EmptyImage": 0.8}) as s:  # q0 is still in node 1 when interrupted
        t = make(s.url)
        for i, front in enumerate([False, False, False, True]):
            await on_loop(t.post_prompt({"prompt": tiny(i), "client_id": "c", "prompt_id": f"q{i}", "front": front}))
        await asyncio.sleep(0.05)
        running, pending = await on_loop(t.get_queue())
        assert running == ["q0"] and pending == ["q3", "q1", "q2"]
        assert (await on_loop(t.get_job("q1")))["status"] == "pending"
        await on_loop(t.delete_queued(["q1", "q3"]))
        await on_loop(t.delete_queued([]))
        assert (await on_loop(t.get_queue()))[1] == ["q2"]
        await on_loop(t.interrupt("q2"))  # not running: ignored by the server
        await on_loop(t.interrupt("q0"))
        entry = await wait_history(t, "q0")
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await wait_history(t, "q2"))["status"]["status_str"] == "success"
        assert await on_loop(t.get_history("q1")) is None


async def test_simulator_without_jobs_api(make):
    async with Simulator(jobs_api=False) as s:
        t = make(s.url)
        with pytest.raises(NotSupported):
            await on_loop(t.get_job("x"))
        assert t.jobs_api is False


async def test_http_errors_are_retried_for_gets_only(make):
    async with Simulator(faults={"http_errors": {"/queue": 0.5}}, seed=3) as s:
        t = make(s.url, retries=8)
        for _ in range(10):
            assert await on_loop(t.get_queue()) == ([], [])
        assert s.faults.counts["http_errors"] > 0
        s.faults.update(http_errors={"/prompt": 1.0})
        before = s.faults.counts["http_errors"]
        with pytest.raises(HTTPStatusError) as info:
            await on_loop(t.post_prompt({"prompt": tiny(), "client_id": "c", "prompt_id": "x"}))
        assert info.value.status == 500
        assert s.faults.counts["http_errors"] == before + 1  # one attempt only
        assert await on_loop(t.get_job("x")) is None  # 500 before handling: not queued


async def test_lost_responses(make):
    async with Simulator(faults={"lost_responses": {"/history": 0.5}}, seed=1) as s:
        t = make(s.url, retries=8)
        await on_loop(t.post_prompt({"prompt": tiny(), "client_id": "c", "prompt_id": "l1"}))
        for _ in range(5):
            assert (await wait_history(t, "l1"))["status"]["completed"] is True
        assert s.faults.counts["lost_responses"] > 0
        s.faults.update(lost_responses={"/prompt": 1.0})
        with pytest.raises(ServerUnavailable):
            await on_loop(t.post_prompt({"prompt": tiny(2), "client_id": "c", "prompt_id": "l2"}))
        # the server did take it: exactly why the caller checks before posting again
        assert (await wait_history(t, "l2"))["status"]["completed"] is True


async def test_latency_and_timeouts(make):
    async with Simulator(faults={"latency": 0.5}) as s:
        t = make(s.url, timeout=Timeouts(connect=1, read=0.1, total=1), retries=1)
        with pytest.raises(Timeout):
            await on_loop(t.get_queue())
        s.faults.update(latency=0.0)
        assert await on_loop(t.get_queue()) == ([], [])


async def test_restart(make):
    async with Simulator() as s:
        t = make(s.url, retries=0)
        await on_loop(t.post_prompt({"prompt": tiny(), "client_id": "c", "prompt_id": "r1"}))
        await wait_history(t, "r1")
        s.restart(0.5)  # on the simulator's loop: returns once it is down
        with pytest.raises(ServerUnavailable):  # down for a moment: refused
            await on_loop(t.get_queue())
        t.retries, t.backoff = 6, 0.05  # at least 1.5 s of backoff in all: longer than the downtime
        assert await on_loop(t.get_queue()) == ([], [])  # retried until it was back
        assert await on_loop(t.get_history("r1")) is None and await on_loop(t.get_job("r1")) is None


WS_IMAGE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0xFF00FF}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
}


async def _listen(t, client_id, *, flags, prompt, prompt_id):
    """Open our socket, optionally negotiate, post, and collect parsed frames until done."""
    sock = await t.ws_connect(client_id)
    try:
        if flags:
            await sock.send_json(FEATURE_FLAGS)
        first = parse_text((await sock.receive()).data)
        await t.post_prompt({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id})
        frames = [first]
        while not (frames[-1] and isinstance(frames[-1], Event) and frames[-1].done):
            msg = await asyncio.wait_for(sock.receive(), 10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                frames.append(parse_text(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                frames.append(parse_binary(msg.data))
            else:
                raise AssertionError(f"socket ended: {msg.type}")
        return frames
    finally:
        await sock.close()


async def test_websocket_events_and_previews(make):
    async with Simulator() as s:
        t = make(s.url)
        legacy = await on_loop(_listen(t, "plain", flags=False, prompt=WS_IMAGE, prompt_id="w1"))
        assert legacy[0].type == "status" and legacy[0].data["sid"] == "plain"
        assert None not in legacy
        assert [f.prompt_id for f in legacy if isinstance(f, Event) and f.done] == ["w1"]
        previews = [f for f in legacy if isinstance(f, Preview)]
        assert len(previews) == 2 and all(p.prompt_id is None and p.mime == "image/png" for p in previews)

        tagged = await on_loop(
            _listen(
                t,
                "modern",
                flags=True,
                prompt=dict(WS_IMAGE, **{"1": {**WS_IMAGE["1"], "inputs": {**WS_IMAGE["1"]["inputs"], "color": 1}}}),
                prompt_id="w2",
            )
        )
        types = [f.type for f in tagged if isinstance(f, Event)]
        assert "feature_flags" in types and types[-1] == "executing"
        previews = [f for f in tagged if isinstance(f, Preview)]
        assert len(previews) == 2
        assert all(p.prompt_id == "w2" and p.node_id == "2" and p.mime == "image/png" for p in previews)
        assert Image.open(io.BytesIO(previews[0].image)).size == (64, 64)


async def test_a_stalled_socket_is_closed_by_the_heartbeat(make):
    async with Simulator() as s:
        t = make(s.url, timeout=Timeouts(ws_heartbeat=0.4))

        async def stalled():
            sock = await t.ws_connect("st")
            await sock.receive()  # status
            s.stall("st")
            start = asyncio.get_running_loop().time()
            msg = await asyncio.wait_for(sock.receive(), 5)
            return msg.type, asyncio.get_running_loop().time() - start

        kind, waited = await on_loop(stalled())
        assert kind in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
        assert waited < 2

        async def dropped():
            sock = await t.ws_connect("dr")
            await sock.receive()
            s.drop_sockets()
            return (await asyncio.wait_for(sock.receive(), 5)).type

        assert await on_loop(dropped()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
