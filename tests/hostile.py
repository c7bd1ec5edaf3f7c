"""A ComfyUI imitation that misbehaves on request, for the tests of comfynb against broken servers.

It speaks just enough of the protocol for a Session (``/system_stats``, ``/object_info``, ``/prompt``,
``/queue``, ``/history``, ``/interrupt``, ``/view``, ``/upload/image``, ``/ws``; no jobs API), over
real sockets on 127.0.0.1, in a thread of its own. Every misbehaviour is an attribute, changeable
while it runs: a hook rewriting history entries, its own prompt ids, endless or trickling bodies,
huge WebSocket frames, extra WebSocket messages, an answer echoing the request's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from PIL import Image

CHUNK = 1 << 20


def png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buf, format="PNG")
    return buf.getvalue()


OBJECT_INFO = {
    "KSampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}},
}


class Hostile:
    """The server. Attributes (all may change at run time):

    ``entry``: ``f(prompt_id, entry) -> anything`` served as that prompt's history entry.
    ``own_ids``: answer ``POST /prompt`` with an id of its own (and file the prompt under it).
    ``finish``: prompts end at once; False: the first waits as running, the others as pending.
    ``view`` / ``history_body``: ``"endless"`` (1 MB chunks forever) or ``"trickle"`` (1 byte a second).
    ``ws_junk``: raw WebSocket frames (str, bytes, or an int: a binary frame of that size) sent on connect.
    ``ws_messages``: ``f(prompt_id) -> [raw text frames]`` sent while a prompt runs.
    ``echo_auth``: every HTTP answer is a 401 whose body echoes the Authorization header.
    ``filename``: the output file name it reports.
    ``jobs``: ``f(prompt_id, job) -> anything`` served by a jobs API (``/api/jobs``), while
    ``/history/{id}`` answers ``{}`` (as after an eviction); None: no jobs API (ComfyUI before Dec 2025).
    """

    def __init__(self) -> None:
        self.entry: Callable[[str, dict], Any] | None = None
        self.object_info: Any = OBJECT_INFO
        self.own_ids = False
        self.finish = True
        self.view: str | bytes = png()
        self.history_body: str | None = None
        self.ws_junk: list = []
        self.ws_messages: Callable[[str], list[str]] | None = None
        self.echo_auth = False
        self.filename = "out_00001_.png"
        self.jobs: Callable[[str, dict], Any] | None = None
        self.posts: list[dict] = []
        self.history: dict[str, dict] = {}
        self.running: str | None = None
        self.pending: list[str] = []
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.uploads: list[str] = []
        self.url = ""
        self._sockets: list[web.WebSocketResponse] = []
        self._number = 0
        self._bodies: dict[str, dict] = {}
        self._tasks: set[asyncio.Future] = set()

    # -- running -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def serving(self) -> Iterator[Hostile]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop = asyncio.Event()
        runner_box: list = []

        async def main() -> None:
            app = web.Application(client_max_size=64 * CHUNK)
            app.middlewares.append(self._auth_echo)
            app.router.add_get("/system_stats", self._system_stats)
            app.router.add_get("/object_info", self._object_info)
            app.router.add_post("/prompt", self._prompt)
            app.router.add_get("/queue", self._queue)
            app.router.add_post("/queue", self._queue_delete)
            app.router.add_post("/interrupt", self._interrupt)
            app.router.add_get("/history", self._history_page)
            app.router.add_get("/history/{pid}", self._history_one)
            app.router.add_get("/view", self._view)
            app.router.add_post("/upload/image", self._upload)
            app.router.add_get("/ws", self._ws)
            app.router.add_get("/api/jobs", self._jobs_list)
            app.router.add_get("/api/jobs/{pid}", self._job)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            runner_box.append(runner)
            started.set()
            await stop.wait()
            for ws in list(self._sockets):
                await ws.close()
            await runner.cleanup()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        started.wait(10)
        self._loop = loop
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the server's loop (e.g. to finish a prompt that waits)."""
        self._loop.call_soon_threadsafe(fn)

    # -- helpers -----------------------------------------------------------------------------

    def _broadcast(self, kind: str, data: dict) -> None:
        self._send_raw(json.dumps({"type": kind, "data": data}))

    def _send_raw(self, raw: str | bytes) -> None:
        for ws in list(self._sockets):
            if not ws.closed:
                coro = ws.send_str(raw) if isinstance(raw, str) else ws.send_bytes(raw)
                task = asyncio.ensure_future(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _stored(self, pid: str, body: dict, outcome: str) -> dict:
        self._number += 1
        extra = {**(body.get("extra_data") or {}), "client_id": body.get("client_id"), "create_time": 1_700_000_000_000}
        ok = outcome == "execution_success"
        data = {"prompt_id": pid, "timestamp": 1_700_000_000_500}
        if not ok:
            data.update(node_id="9", node_type="SaveImage")
        outputs = {"9": {"images": [{"filename": self.filename, "subfolder": "", "type": "output"}]}} if ok else {}
        return {
            "prompt": [self._number, pid, body.get("prompt") or {}, extra, ["9"]],
            "outputs": outputs,
            "status": {
                "status_str": "success" if ok else "error",
                "completed": ok,
                "messages": [["execution_start", {"prompt_id": pid, "timestamp": 1_700_000_000_100}], [outcome, data]],
            },
            "meta": {},
        }

    def _complete(self, pid: str, body: dict, outcome: str = "execution_success") -> None:
        self.history[pid] = self._stored(pid, body, outcome)
        self._broadcast("execution_start", {"prompt_id": pid, "timestamp": 1})
        for raw in self.ws_messages(pid) if self.ws_messages else ():
            self._send_raw(raw)
        self._broadcast(outcome, {"prompt_id": pid, "timestamp": 2})
        self._broadcast("executing", {"node": None, "display_node": None, "prompt_id": pid})

    def _served(self, pid: str) -> Any:
        entry = self.history[pid]
        return self.entry(pid, json.loads(json.dumps(entry))) if self.entry else entry

    async def _stream(self, request: web.Request, how: str) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        try:
            if how == "endless":
                await resp.write(b'{"x": "')
                block = b"a" * CHUNK
                while True:
                    await resp.write(block)
            while True:  # trickle
                await resp.write(b" ")
                await asyncio.sleep(1.0)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    # -- routes ----------------------------------------------------------------------------------

    @web.middleware
    async def _auth_echo(self, request: web.Request, handler):
        if self.echo_auth and request.path != "/ws":
            auth = request.headers.get("Authorization") or request.headers.get("X-Api-Key", "")
            token = auth.partition(" ")[2] or auth
            return web.json_response({"error": f"token {token} is expired", "header": auth}, status=401)
        return await handler(request)

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"os": "hostile", "comfyui_version": "0.8.0"}, "devices": []})

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info)

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append(body)
        pid = uuid.uuid4().hex if self.own_ids else body.get("prompt_id") or uuid.uuid4().hex
        if self.finish:
            asyncio.get_running_loop().call_later(0.01, self._complete, pid, body)
        else:
            self._bodies[pid] = body
            if self.running is None:
                self.running = pid
                self._broadcast("execution_start", {"prompt_id": pid, "timestamp": 1})
            else:
                self.pending.append(pid)
        return web.json_response({"prompt_id": pid, "number": self._number, "node_errors": {}})

    async def _queue(self, request: web.Request) -> web.Response:
        running = [[0, self.running, {}, {}, []]] if self.running else []
        pending = [[n + 1, pid, {}, {}, []] for n, pid in enumerate(self.pending)]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _queue_delete(self, request: web.Request) -> web.Response:
        body = await request.json()
        for pid in body.get("delete") or ():
            if pid in self.pending:
                self.pending.remove(pid)
                self.deleted.append(pid)
        return web.json_response({})

    async def _interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        pid = (body or {}).get("prompt_id")
        if self.running is not None and pid in (None, self.running):
            self.interrupted.append(self.running)
            pid, self.running = self.running, None
            self._complete(pid, self._bodies[pid], "execution_interrupted")
        return web.json_response({})

    async def _jobs_list(self, request: web.Request) -> web.Response:
        if self.jobs is None:
            return web.Response(status=404, text="404: Not Found")
        listed = [{"id": self.running, "status": "in_progress"}] if self.running else []
        listed += [{"id": pid, "status": "pending"} for pid in self.pending]
        return web.json_response({"jobs": listed})

    async def _job(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        if self.jobs is None:
            return web.Response(status=404, text="404: Not Found")
        if pid not in self.history:
            return web.json_response({"error": "Job not found"}, status=404)
        entry = self.history[pid]
        record = {
            "id": pid,
            "status": "completed",
            "priority": entry["prompt"][0],
            "workflow": {"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]},
            "outputs": entry["outputs"],
            "execution_status": entry["status"],
        }
        return web.json_response(self.jobs(pid, json.loads(json.dumps(record))))

    async def _history_one(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["pid"]
        if self.jobs is not None:
            return web.json_response({})  # evicted: only the jobs API knows the prompt
        if self.history_body and pid in self.history:
            return await self._stream(request, self.history_body)
        if pid not in self.history:
            return web.json_response({})
        return web.json_response({pid: self._served(pid)})

    async def _history_page(self, request: web.Request) -> web.StreamResponse:
        if self.history_body:
            return await self._stream(request, self.history_body)
        items = list(self.history)
        offset = int(request.query.get("offset", 0))
        count = int(request.query.get("max_items", len(items)))
        return web.json_response({pid: self._served(pid) for pid in items[offset : offset + count]})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        if isinstance(self.view, bytes):
            return web.Response(body=self.view, content_type="image/png")
        return await self._stream(request, self.view)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        name = form["image"].filename
        self.uploads.append(name)
        return web.json_response({"name": name, "subfolder": "", "type": "input"})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.append(ws)
        sid = request.query.get("clientId", "")
        await ws.send_str(
            json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        )
        for junk in self.ws_junk:
            if isinstance(junk, int):
                await ws.send_bytes(b"\0" * junk)
            elif isinstance(junk, bytes):
                await ws.send_bytes(junk)
            else:
                await ws.send_str(junk)
        try:
            async for _ in ws:
                pass
        finally:
            self._sockets.remove(ws)
        return ws
