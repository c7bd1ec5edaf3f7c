"""The HTTP and WebSocket routes of ComfyUI 0.8.0, with its status codes and bodies.

Every route is served both bare and under ``/api`` (the jobs routes only under ``/api``, as
upstream defines them). Handlers read the simulator's current engine and hub on every request,
so a simulated restart swaps them without rebuilding the application. Fault middleware sits in
front: 5xx answers, lost responses and added latency.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import mimetypes
import os
import sys
import uuid
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import jobs
from .files import annotated, same_content
from .hub import SERVER_FEATURES, text_frame


class _Telling(web.Response):
    """A JSON answer that tells these prompts' outcomes: the ledger hears it once it is sent
    (see ``fault_middleware``)."""

    def __init__(self, data: Any, prompt_ids: list[str]):
        super().__init__(text=json.dumps(data), content_type="application/json")
        self.told = prompt_ids


class Simulator(Protocol):
    """What the routes read from the simulator that serves them (comfynb.sim.simulator.Simulator;
    named here, not imported, so the two modules do not import each other)."""

    host: str
    port: int
    alive: bool
    jobs_api: bool
    engine: Any
    hub: Any
    faults: Any
    requests: Any
    files: Any
    nodes: Any
    ledger: Any

    @property
    def checkpoints(self) -> list[str]: ...


log = logging.getLogger("comfynb.sim")

WS_MAX_MESSAGE = 1 << 30  # incoming frames: no practical limit, like ComfyUI
UPLOAD_LIMIT = 104857600  # --max-upload-size default (100 MB), for every request body
_DANGEROUS_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]


def server_error() -> web.Response:
    """aiohttp's own answer to an unhandled exception (what ComfyUI returns for bad input)."""
    return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")


def _fault_answer(status: int) -> web.Response:
    """An injected error: aiohttp's own 500, or a bare status page like a proxy's 502/503/504."""
    if status == 500:
        return server_error()
    return web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}")


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 17179869184, 8589934592


def build_app(sim: Simulator) -> web.Application:
    routes = _Routes(sim)
    app = web.Application(client_max_size=UPLOAD_LIMIT, middlewares=[routes.fault_middleware, routes.error_middleware])
    table = [
        ("GET", "/ws", routes.websocket),
        ("GET", "/prompt", routes.get_prompt),
        ("POST", "/prompt", routes.post_prompt),
        ("GET", "/queue", routes.get_queue),
        ("POST", "/queue", routes.post_queue),
        ("POST", "/interrupt", routes.interrupt),
        ("POST", "/free", routes.free),
        ("GET", "/history", routes.get_history),
        ("POST", "/history", routes.post_history),
        ("GET", "/history/{prompt_id}", routes.get_history_item),
        ("GET", "/view", routes.view),
        ("POST", "/upload/image", routes.upload_image),
        ("POST", "/upload/mask", routes.upload_mask),
        ("GET", "/object_info", routes.object_info),
        ("GET", "/object_info/{node_class}", routes.object_info_one),
        ("GET", "/system_stats", routes.system_stats),
        ("GET", "/features", routes.features),
        ("GET", "/embeddings", routes.embeddings),
        ("GET", "/models", routes.models),
        ("GET", "/models/{folder}", routes.models_in),
    ]
    for method, path, handler in table:
        for prefix in ("", "/api"):
            app.router.add_route(method, prefix + path, handler)
    if sim.jobs_api:
        app.router.add_route("GET", "/api/jobs", routes.list_jobs)
        app.router.add_route("GET", "/api/jobs/{job_id}", routes.get_job)
    return app


class _Routes:
    def __init__(self, sim: Simulator):
        self.sim = sim

    # -- middleware ----------------------------------------------------------------------------

    @web.middleware
    async def fault_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        faults = self.sim.faults
        resource = request.match_info.route.resource
        self.sim.requests[f"{request.method} {resource.canonical if resource else request.path}"] += 1
        self._alive(request)
        delay = faults.slow(request.path)
        if delay > 0:  # received in full, then handled late: even if the client gave up meanwhile
            await request.read()
            await asyncio.sleep(delay)
            self._alive(request)
        if faults.http_error(request.path):
            return _fault_answer(faults.http_error_status)
        response = await handler(request)
        if isinstance(response, web.WebSocketResponse):
            return response
        if faults.latency > 0:
            faults.counts["latency"] += 1
            await asyncio.sleep(faults.latency)
        if faults.lose_response(request.path) and request.transport is not None:
            request.transport.close()  # handled, but the client never hears back
            return response
        told = response.told if isinstance(response, _Telling) else None
        if told and request.transport is not None and not request.transport.is_closing():
            # the ledger hears that these outcomes were told once the answer has left: one cut
            # off by an outage before it was written told nobody (closing still sends what was written)
            await response.prepare(request)
            await response.write_eof()
            for prompt_id in told:
                self.sim.ledger.told(prompt_id)
        return response

    def _alive(self, request: web.Request) -> None:
        """A request that slipped in as the server went down (restart, kill) is dropped: a process
        going down takes no more work, and the fresh one never saw it."""
        if not self.sim.alive:
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable(text="the server is down")

    @web.middleware
    async def error_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.debug("500 for %s %s", request.method, request.path, exc_info=True)
            return server_error()

    # -- WebSocket -----------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, max_msg_size=WS_MAX_MESSAGE)
        await ws.prepare(request)
        hub, engine = self.sim.hub, self.sim.engine
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        conn = hub.register(ws, sid, request.transport)
        try:
            conn.push(text_frame("status", {**engine.status_data(), "sid": sid}))
            node = engine.replay_node(sid)
            if node is not None:
                conn.push(text_frame("executing", {"node": node}))
            first = True
            async for msg in ws:
                if msg.type is WSMsgType.PING:
                    if not conn.stalled:
                        await ws.pong(msg.data)
                elif msg.type is WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        continue
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        conn.flags = data.get("data") or {}
                        conn.push(text_frame("feature_flags", SERVER_FEATURES))
                    first = False
        finally:
            await hub.unregister(conn)
        return ws

    # -- prompts and queue ---------------------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.sim.engine.remaining()}})

    async def _json(self, request: web.Request, default: Any = None) -> tuple[Any, Any]:
        """The request's JSON body (``default`` if it is not JSON and one is given), and the engine
        that was serving when the request came in. A restart while the body was read ends the
        request there: in a real restart the process that took it is gone, so what it asked for
        must not reach the fresh one."""
        engine = self.sim.engine
        try:
            body = await request.json()
        except json.JSONDecodeError:
            if default is None:
                raise
            body = default
        if engine is not self.sim.engine:
            raise web.HTTPServiceUnavailable(text="the server restarted while this request was read")
        return body, engine

    async def post_prompt(self, request: web.Request) -> web.Response:
        body, engine = await self._json(request)
        status, payload = engine.submit(body)
        return web.json_response(payload, status=status)

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self.sim.engine.queue_items()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body, engine = await self._json(request)
        if body.get("clear"):
            engine.clear_queue()
        if "delete" in body:
            engine.delete(body["delete"])
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        body, engine = await self._json(request, default={})
        engine.interrupt(body.get("prompt_id"))
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        body, engine = await self._json(request)
        engine.free(bool(body.get("free_memory", False)))
        return web.Response()

    # -- history and jobs ----------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        # an entry written late (the empty_history fault) is not there yet for any read
        late = self.sim.faults.hide_history if self.sim.faults.empty_history else None
        window = self.sim.engine.history_window(max_items, offset, late)
        return _Telling(window, list(window))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.sim.engine.history.get(prompt_id)
        if entry is None or self.sim.faults.hide_history(prompt_id):
            return web.json_response({})
        return _Telling({prompt_id: entry}, [prompt_id])

    async def post_history(self, request: web.Request) -> web.Response:
        body, engine = await self._json(request)
        history = engine.history
        if body.get("clear"):
            history.clear()
        for prompt_id in body.get("delete", []):
            history.pop(prompt_id, None)
        return web.Response()

    async def list_jobs(self, request: web.Request) -> web.Response:
        params = jobs.parse_list_query(request.rel_url.query)
        if isinstance(params, str):
            return web.json_response({"error": params}, status=400)
        engine = self.sim.engine
        running, pending = engine.queue_items()
        return web.json_response(jobs.list_jobs(running, pending, engine.history, **params))

    async def get_job(self, request: web.Request) -> web.Response:
        engine = self.sim.engine
        running, pending = engine.queue_items()
        job = jobs.get_job(request.match_info["job_id"], running, pending, engine.history)
        if job is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return _Telling(job, [job["id"]] if job["status"] in ("completed", "failed") else [])

    # -- files ---------------------------------------------------------------------------------

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        status, path = self.sim.files.view_path(query)
        if path is None:
            return web.Response(status=status)
        disposition = {"Content-Disposition": f'filename="{path.name}"'}
        channel = query.get("channel", "rgba")
        if "preview" in query:
            fmt, *rest = query["preview"].split(";")
            if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                fmt = "webp"
            quality = int(rest[-1]) if rest and rest[-1].isdigit() else 90
            with Image.open(path) as opened:
                img: Image.Image = opened
                if fmt == "jpeg" or channel == "rgb":
                    img = img.convert("RGB")
                body = _encode(img, fmt, quality=quality)
            return web.Response(body=body, content_type=f"image/{fmt}", headers=disposition)
        if channel in ("rgb", "a"):
            with Image.open(path) as img:
                if channel == "rgb":
                    out = img.convert("RGB")
                else:
                    out = Image.new("RGBA", img.size)
                    out.putalpha(img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255))
                body = _encode(out, "PNG")
            return web.Response(body=body, content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type in _DANGEROUS_TYPES:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.Response:
        return await self._upload(request, mask=False)

    async def upload_mask(self, request: web.Request) -> web.Response:
        return await self._upload(request, mask=True)

    async def _upload(self, request: web.Request, mask: bool) -> web.Response:
        """ComfyUI's image_upload: same name + same content reuses the name, else "name (1).ext"."""
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        type_, subfolder = post.get("type"), post.get("subfolder", "")
        target = self.sim.files.upload_target(type_, subfolder, image.filename)
        if target is None:
            return web.Response(status=400)
        folder, path = target
        folder.mkdir(parents=True, exist_ok=True)
        data, filename = image.file.read(), image.filename
        if post.get("overwrite") not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            i = 1
            while path.exists():
                if same_content(path, data):
                    break
                filename = f"{stem} ({i}){ext}"
                path = folder / filename
                i += 1
            else:
                self._write_upload(post, data, path, mask)
        else:
            self._write_upload(post, data, path, mask)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": type_ or "input"})

    def _write_upload(self, post: Any, data: bytes, path: Any, mask: bool) -> None:
        if not mask:
            path.write_bytes(data)
            return
        ref = json.loads(post.get("original_ref"))  # missing: TypeError -> 500, like ComfyUI
        name, kind = annotated(ref["filename"])
        query = {"filename": name, "type": kind or ref.get("type", "output")}
        if ref.get("subfolder", ""):
            query["subfolder"] = ref["subfolder"]
        _status, original = self.sim.files.view_path(query)
        if original is None:
            return  # ComfyUI answers 200 and writes nothing
        with Image.open(original) as img:
            info = PngInfo()
            for key, value in getattr(img, "text", {}).items():
                info.add_text(key, value)
            out = img.convert("RGBA")
        out.putalpha(Image.open(io.BytesIO(data)).convert("RGBA").getchannel("A"))
        out.save(path, compress_level=4, pnginfo=info)

    # -- server description --------------------------------------------------------------------

    async def object_info(self, request: web.Request) -> web.Response:
        text = json.dumps({name: nc.info for name, nc in self.sim.nodes.items()})
        return web.Response(text=text, content_type="application/json")

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        nc = self.sim.nodes.get(name)
        return web.json_response({name: nc.info} if nc is not None else {})

    async def system_stats(self, request: web.Request) -> web.Response:
        total, free = _ram()
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": total,
                    "ram_free": free,
                    "comfyui_version": "0.8.0",
                    "required_frontend_version": "1.35.9",
                    "installed_templates_version": "0.7.67",
                    "required_templates_version": "0.7.67",
                    "python_version": sys.version,
                    "pytorch_version": "2.13.0+cpu",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu", "--listen", self.sim.host, "--port", str(self.sim.port)],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def models_in(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list(self.sim.checkpoints) if folder == "checkpoints" else [])


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()
