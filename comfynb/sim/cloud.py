"""Comfy Cloud mode of the simulator: the documented differences from a local ComfyUI.

What docs.comfy.org (Development > Cloud; see ``docs/cloud.md``) says a client will meet, made
observable on 127.0.0.1: every route under ``/api`` and guarded by ``X-API-Key`` (401 without
it; ``/api/system_stats`` stays public), the WebSocket authenticated by a ``token`` query
parameter and delivering every message to all of the user's sockets (``clientId`` is ignored),
``max_parallel`` prompts running at once and 429 beyond the queue allowance (with or without
``Retry-After``), the cloud's job endpoints (``/api/jobs`` with times in seconds and
``cancelled``, ``/api/job/{id}/status``, ``/api/history_v2`` newest first in the documented
shape), routes the cloud lacks (``/free``, ``/api/history``) answering 404, and ``/api/view``
answering 302 to a signed URL on a second local port, the "storage", which serves files by
content hash and records the headers of every request it gets, so a test can prove the key never
reached it. Uploads are indexed by their BLAKE3 hash (when the ``blake3`` package is there; else
``HEAD /api/assets/hash/...`` never finds anything) for ``HEAD /api/assets/hash/{hash}`` and
``POST /api/assets/from-hash``; ``refuse`` answers every POST /api/prompt with the cloud's
refusals for the account (429 "Payment required - User has not paid", 429 "Subscription
inactive", 402 insufficient credits).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import secrets
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yarl
from aiohttp import web

from . import jobs
from .engine import Engine
from .hub import Hub
from .nodes import NodeClass, NodeResult, _info
from .server import UPLOAD_LIMIT, _Routes
from .server import Simulator as _Served


class Simulator(_Served, Protocol):
    """What the cloud routes and the storage read from the simulator (named here, not imported,
    so the two modules do not import each other)."""

    cloud: Any  # CloudSettings
    storage: Any  # Storage
    settings: Any


PUBLIC = ("/api/system_stats", "/api/features", "/api/workflow_templates")
CANCELLED = "cancelled"
# CloudSettings.refuse -> the documented refusal for the account (openapi-cloud.yaml, POST /api/prompt)
REFUSALS = {
    "unpaid": (429, "payment_required", "Payment required - User has not paid"),
    "inactive": (429, "subscription_inactive", "Subscription inactive"),
    "credits": (402, "insufficient_credits", "Payment required - Insufficient credits"),
}
_HASH = re.compile(r"(blake3|sha256):[a-f0-9]{64}")


@dataclass
class CloudSettings:
    """``Simulator(cloud=True, ...)``: the account the simulated cloud serves."""

    api_key: str = "sim-cloud-key"
    max_parallel: int = 3  # the plan's concurrent jobs
    max_queue: int = 0  # jobs accepted beyond max_parallel before 429 (the real cloud queues up to 100)
    retry_after: float | None = None  # seconds for the 429's Retry-After header; None: no header
    own_ids: bool = False  # ignore the client's prompt_id (undocumented either way: for tests)
    refuse: str | None = None  # a key of REFUSALS: every POST /api/prompt is refused for the account
    bare_history: bool = False  # /api/history_v2 lists entries without extra_data ("filtered" at its strictest)
    counts: Counter = field(default_factory=Counter)  # "429", "401", "redirects", "uploaded_bytes", ...
    blobs: dict[str, Path] = field(default_factory=dict)  # "blake3:<hex>" -> an input file with that content
    assets: list[dict] = field(default_factory=list)  # what POST /api/assets/from-hash made
    storage_requests: list[dict] = field(default_factory=list)  # headers each storage request carried


class CloudHub(Hub):
    """The cloud ignores ``clientId``: a message for the user goes to every socket of the user
    (each delivery with the local rules: drop faults, the ledger's "told")."""

    def send(self, type_: str, data: Any, sid: str | None, kind: str | None = None) -> None:
        if type_ == "execution_start":  # the cloud's user-facing line (the docs show only `value`)
            super().send("notification", {"value": "Executing workflow..."}, None)
        if sid is None:
            super().send(type_, data, None, kind)
            return
        for other in list(self.sockets):
            super().send(type_, data, other, kind)

    def send_binary(self, event: int, payload: bytes, sid: str | None) -> None:
        for other in [None] if sid is None else list(self.sockets):
            super().send_binary(event, payload, other)

    def has(self, sid: str | None) -> bool:
        return bool(self.sockets)


class _Lane(Engine):
    """One of the cloud's parallel workers; ``status`` reports the user's whole queue."""

    def __init__(self, pool: CloudEngines, *args: Any):
        super().__init__(*args)
        self.pool = pool

    def status_data(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": self.pool.remaining()}}}


class CloudEngines:
    """``max_parallel`` engines behind the engine interface the routes use; one queue allowance."""

    def __init__(
        self, settings: CloudSettings, nodes: dict, hub: Hub, files: Any, engine_settings: Any, ledger: Any = None
    ):
        self.settings = settings
        self.lanes = [
            _Lane(self, nodes, hub, files, engine_settings, ledger) for _ in range(max(1, settings.max_parallel))
        ]
        self.cancelled: dict[str, dict] = {}  # deleted from the queue: /api/jobs says "cancelled"
        self.running = None  # see `pending`: a restart's ledger reads both

    @property
    def pending(self) -> list[tuple]:
        """Every unfinished prompt as a queue entry, the running ones first (what a restart drops)."""
        running = [(float("-inf"), lane.running[1], 0, lane.running) for lane in self.lanes if lane.running]
        return running + [entry for lane in self.lanes for entry in lane.pending]

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def abandon(self) -> None:
        for lane in self.lanes:
            lane.abandon()

    async def stop(self) -> None:
        for lane in self.lanes:
            await lane.stop()

    def remaining(self) -> int:
        return sum(lane.remaining() for lane in self.lanes)

    def status_data(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": self.remaining()}}}

    def queue_items(self) -> tuple[list, list]:
        running, pending = [], []
        for lane in self.lanes:
            r, p = lane.queue_items()
            running += r
            pending += p
        pending.sort(key=lambda item: item[3].get("create_time", 0))  # oldest first, as the cloud lists them
        return running, pending

    @property
    def history(self) -> dict:
        merged: dict = {}
        for lane in self.lanes:
            merged.update(lane.history)
        return merged

    def submit(self, body: dict) -> tuple[int, dict]:
        body = {k: v for k, v in body.items() if k not in ("number", "front")}  # ignored by the cloud
        lane = min(self.lanes, key=lambda e: e.remaining())
        return lane.submit(body)

    def delete(self, prompt_ids: list) -> list[str]:
        deleted = []
        for lane in self.lanes:
            for entry in list(lane.pending):
                if entry[1] in prompt_ids:
                    lane.delete([entry[1]])
                    self.cancelled[entry[1]] = {"prompt": entry[3][:5], "time": time.time()}
                    deleted.append(entry[1])
        return deleted

    def clear_queue(self) -> list[str]:
        return self.delete([entry[1] for lane in self.lanes for entry in lane.pending])

    def interrupt(self, prompt_id: Any = None) -> None:
        """The cloud interrupts every running job of the user (no per-prompt form)."""
        for lane in self.lanes:
            if lane.running is not None:
                lane.interrupt(None)

    def replay_node(self, sid: str) -> str | None:
        return next((n for lane in self.lanes if (n := lane.replay_node(sid)) is not None), None)


# -- the partner node ------------------------------------------------------------------------------


async def _partner(ctx: Any, i: dict) -> NodeResult:
    """Like a real API node: refuses to call its service without the user's Comfy API key."""
    await ctx.work()
    if not ctx.sensitive.get("api_key_comfy_org"):
        raise PermissionError("Unauthorized: Please login first to use this node (no api_key_comfy_org in extra_data)")
    return NodeResult((), {"text": [f"partner service answered: {i['prompt']}"]})


def partner_node() -> NodeClass:
    """``PartnerTextSim``: an output node that fails unless the prompt carried ``api_key_comfy_org``."""
    info = _info(
        "PartnerTextSim",
        "Partner Text (simulated API node)",
        "api node/text",
        {"prompt": ["STRING", {"multiline": True, "default": ""}]},
        output_node=True,
        python_module="comfy_api_nodes.nodes_sim",
        v3=True,
    )
    info["api_node"] = True
    return NodeClass(name="PartnerTextSim", info=info, run=_partner)


# -- routes ----------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


class CloudRoutes(_Routes):
    """The cloud's answers, reusing the local handlers where the cloud behaves the same."""

    sim: Simulator

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        cloud = self.sim.cloud
        if request.path in ("/ws", "/api/ws"):
            if request.query.get("token") != cloud.api_key:
                cloud.counts["401"] += 1
                return _error(401, "unauthorized", "the WebSocket needs ?token=<API key>")
        elif request.path not in PUBLIC and request.headers.get("X-API-Key") != cloud.api_key:
            cloud.counts["401"] += 1
            return _error(401, "unauthorized", "Unauthorized: invalid or missing X-API-Key")
        return await handler(request)

    async def post_prompt(self, request: web.Request) -> web.Response:
        cloud, engine = self.sim.cloud, self.sim.engine
        body = await request.json()
        if cloud.refuse is not None:
            status, code, message = REFUSALS[cloud.refuse]
            cloud.counts[str(status)] += 1
            return _error(status, code, message)
        if engine.remaining() >= cloud.max_parallel + cloud.max_queue:
            cloud.counts["429"] += 1
            headers = {"Retry-After": f"{cloud.retry_after:g}"} if cloud.retry_after is not None else None
            return _error(429, "too_many_requests", "concurrent job limit of your plan reached; retry later", headers)
        if cloud.own_ids:
            body.pop("prompt_id", None)
        status, payload = engine.submit(body)
        return web.json_response(payload, status=status)

    async def post_queue(self, request: web.Request) -> web.Response:
        engine = self.sim.engine  # the one serving when the request came in (a restart may follow)
        body = await request.json()
        deleted = engine.clear_queue() if body.get("clear") else []
        deleted += engine.delete(body.get("delete", []))
        return web.json_response({"deleted": deleted, "cleared": bool(body.get("clear"))})

    async def get_queue(self, request: web.Request) -> web.Response:
        """The cloud's item shape: ``[position, prompt_id, workflow, output_ids, {create_time}]``."""
        running, pending = self.sim.engine.queue_items()
        items = [
            [i + 1, item[1], item[2], item[4], {"create_time": item[3].get("create_time")}]
            for i, item in enumerate(running + pending)
        ]
        return web.json_response({"queue_running": items[: len(running)], "queue_pending": items[len(running) :]})

    async def user(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "active"})

    async def not_here(self, request: web.Request) -> web.Response:
        return _error(404, "not_found", f"{request.path} is not a Comfy Cloud route")

    # -- jobs --------------------------------------------------------------------------------

    def _job(self, prompt_id: str, full: bool) -> dict | None:
        engine = self.sim.engine
        running, pending = engine.queue_items()
        history = engine.history
        if prompt_id in engine.cancelled:
            gone = engine.cancelled[prompt_id]
            _, _, prompt, extra, _ = gone["prompt"]
            record: dict = {"id": prompt_id, "status": CANCELLED, "create_time": extra.get("create_time", 0) // 1000}
            if full:
                record.update(update_time=int(gone["time"]), workflow={"prompt": prompt, "extra_data": extra})
            return record
        found = (
            jobs.finished_job(prompt_id, history[prompt_id], full=full)
            if prompt_id in history
            else jobs.get_job(prompt_id, running, pending, {})
        )
        if found is None:
            return None
        job: dict = found
        job.pop("priority", None)  # not in the cloud's job schema
        job["create_time"] = int(job.get("create_time", 0)) // 1000  # seconds in the cloud
        if full:
            job["update_time"] = int(time.time())
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["job_id"], full=True)
        if job is None:
            return _error(404, "not_found", "Job not found")
        return web.json_response(job)

    async def job_status(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["job_id"], full=False)
        if job is None:
            return _error(404, "not_found", "Job not found")
        status = {"pending": "queued_waiting", "in_progress": "executing", "completed": "success", "failed": "error"}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return web.json_response(
            {
                "id": job["id"],
                "status": status.get(job["status"], job["status"]),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.get("create_time", 0))),
                "updated_at": stamp,
            }
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        wanted = set(query["status"].split(",")) if query.get("status") else None
        limit = int(query.get("limit", 100))
        offset = int(query.get("offset", 0))
        if not 1 <= limit <= 1000 or offset < 0:
            return _error(400, "bad_request", "limit must be 1-1000 and offset >= 0")
        engine = self.sim.engine
        running, pending = engine.queue_items()
        ids = [item[1] for item in running + pending] + list(engine.history) + list(engine.cancelled)
        listed = [job for pid in ids if (job := self._job(pid, full=False)) and (not wanted or job["status"] in wanted)]
        listed.sort(key=lambda j: j.get("create_time", 0), reverse=query.get("sort_order", "desc") == "desc")
        page = listed[offset : offset + limit]
        more = offset + len(page) < len(listed)
        return web.json_response(
            {"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(listed), "has_more": more}}
        )

    def _history_newest_first(self) -> list[tuple[str, dict]]:
        """Ordered by creation time, newest first (the spec): a prompt that ends lands among the
        others by when it was sent, not on top."""
        items = list(self.sim.engine.history.items())
        items.sort(key=lambda item: (item[1]["prompt"][3].get("create_time", 0), item[1]["prompt"][0]), reverse=True)
        return items

    async def history_v2(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            offset = int(query.get("offset", 0))
            max_items = int(query["max_items"]) if "max_items" in query else None
        except ValueError:
            return _error(400, "bad_request", "max_items and offset must be whole numbers")
        if offset < 0 or (max_items is not None and max_items < 0):
            return _error(400, "bad_request", "max_items and offset must be >= 0")
        self.sim.cloud.counts["history_v2"] += 1
        items = self._history_newest_first()
        end = None if max_items is None else offset + max_items
        listed = [_v2_entry(pid, entry) for pid, entry in items[offset:end]]
        if self.sim.cloud.bare_history:
            for entry in listed:
                del entry["prompt"]["extra_data"]
        return web.json_response({"history": listed})

    async def history_v2_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.sim.engine.history.get(prompt_id)
        if entry is None:
            return _error(404, "not_found", "Prompt not found")
        number, _, graph, extra, outputs = entry["prompt"]
        prompt = {"priority": number, "prompt_id": prompt_id, "prompt": graph, "extra_data": extra}
        prompt["outputs_to_execute"] = outputs
        return web.json_response({prompt_id: {"prompt": prompt, **{k: v for k, v in entry.items() if k != "prompt"}}})

    # -- assets ------------------------------------------------------------------------------

    async def asset_exists(self, request: web.Request) -> web.Response:
        digest = request.match_info["hash"]
        if not _HASH.fullmatch(digest) or not digest.startswith("blake3:"):
            return _error(400, "bad_request", "the hash must be blake3:<64 hex digits>")
        self.sim.cloud.counts["asset_head"] += 1
        path = self.sim.cloud.blobs.get(digest)
        return web.Response(status=200 if path is not None and path.exists() else 404)

    async def asset_from_hash(self, request: web.Request) -> web.Response:
        """An ``input``-tagged asset is a file LoadImage reads under the asset's name."""
        cloud = self.sim.cloud
        body = await request.json()
        digest, tags = body.get("hash"), body.get("tags")
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            return _error(400, "bad_request", "hash must be blake3:<hex> or sha256:<hex>")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            return _error(400, "bad_request", "tags must be a list of at least one string")
        source = cloud.blobs.get(digest)
        if source is None or not source.exists():
            return _error(404, "not_found", "Source asset with given hash not found")
        data = source.read_bytes()
        name = Path(str(body.get("name") or source.name)).name or source.name
        target = self.sim.files.dirs["input"] / name
        if target.exists() and target.read_bytes() != data:  # the name is taken by other content
            name, target = source.name, source
        created = not target.exists()
        if created:
            shutil.copyfile(source, target)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        asset = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{digest}/{name}")),
            "name": name,
            "asset_hash": digest,
            "size": len(data),
            "mime_type": body.get("mime_type") or mimetypes.guess_type(name)[0] or "application/octet-stream",
            "tags": tags,
            "created_at": stamp,
            "updated_at": stamp,
            "created_new": created,
        }
        cloud.assets.append(asset)
        return web.json_response(asset, status=201 if created else 200)

    # -- files -------------------------------------------------------------------------------

    async def view(self, request: web.Request) -> web.StreamResponse:
        """302 to a signed storage URL; ``subfolder`` is ignored (flat, content-addressed)."""
        query = request.rel_url.query
        name = Path(query.get("filename", "")).name
        kind = query.get("type", "output")
        if not name or kind not in self.sim.files.dirs:
            return _error(400, "bad_request", "filename and a known type are required")
        path = next((p for p in sorted(self.sim.files.dirs[kind].rglob("*")) if p.name == name and p.is_file()), None)
        if path is None:
            return _error(404, "not_found", "File not found or unauthorized")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        signature = secrets.token_hex(16)
        self.sim.storage.blobs[digest] = (path, signature)
        self.sim.cloud.counts["redirects"] += 1
        target = yarl.URL(self.sim.storage.url).with_path(f"/{digest}").with_query({"sig": signature, "name": name})
        raise web.HTTPFound(str(target))

    async def _upload(self, request: web.Request, mask: bool) -> web.Response:
        """Stored under the content's hash; ``subfolder`` and ``overwrite`` are ignored."""
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return _error(400, "bad_request", "an image file is required")
        data = image.file.read()
        suffix = Path(image.filename).suffix or ".png"
        name = hashlib.sha256(data).hexdigest() + suffix
        path = self.sim.files.dirs["input"] / name
        self.sim.cloud.counts["uploads" if path.exists() else "uploads_new"] += 1
        self.sim.cloud.counts["uploaded_bytes"] += len(data)
        if not path.exists():
            path.write_bytes(data)
        digest = _blake3(data)
        if digest is not None:
            self.sim.cloud.blobs[digest] = path
        return web.json_response({"name": name, "subfolder": post.get("subfolder", ""), "type": "input"})


def _v2_entry(prompt_id: str, entry: dict) -> dict:
    """A ``/api/history_v2`` list entry: ``prompt`` is a lightweight object (no graph, no
    ``outputs_to_execute``, the workflow removed from ``extra_pnginfo``), times in ms."""
    number, _, _, extra, _ = entry["prompt"]
    pnginfo = extra.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    if isinstance(pnginfo, dict):
        extra = {**extra, "extra_pnginfo": {k: v for k, v in pnginfo.items() if k != "workflow"}}
    listed = {"prompt_id": prompt_id, "create_time": extra.get("create_time")}
    if isinstance(workflow, dict) and workflow.get("id"):
        listed["workflow_id"] = workflow["id"]
    listed["prompt"] = {"priority": number, "prompt_id": prompt_id, "extra_data": extra}
    return {**listed, **{k: v for k, v in entry.items() if k != "prompt"}}


def _blake3(data: bytes) -> str | None:
    """The cloud's content hash of an upload; None when the ``blake3`` package is missing."""
    try:
        from blake3 import blake3
    except ImportError:
        return None
    return "blake3:" + blake3(data).hexdigest()


def build_cloud_app(sim: Simulator) -> web.Application:
    routes = CloudRoutes(sim)
    app = web.Application(
        client_max_size=UPLOAD_LIMIT,
        middlewares=[routes.fault_middleware, routes.auth_middleware, routes.error_middleware],
    )
    table = [
        ("GET", "/ws", routes.websocket),
        ("GET", "/api/prompt", routes.get_prompt),
        ("POST", "/api/prompt", routes.post_prompt),
        ("GET", "/api/queue", routes.get_queue),
        ("POST", "/api/queue", routes.post_queue),
        ("POST", "/api/interrupt", routes.interrupt),
        ("POST", "/api/history", routes.post_history),
        ("GET", "/api/history_v2", routes.history_v2),
        ("GET", "/api/history_v2/{prompt_id}", routes.history_v2_item),
        ("HEAD", "/api/assets/hash/{hash}", routes.asset_exists),
        ("POST", "/api/assets/from-hash", routes.asset_from_hash),
        ("GET", "/api/jobs", routes.list_jobs),
        ("GET", "/api/jobs/{job_id}", routes.get_job),
        ("GET", "/api/job/{job_id}/status", routes.job_status),
        ("GET", "/api/view", routes.view),
        ("POST", "/api/upload/image", routes.upload_image),
        ("POST", "/api/upload/mask", routes.upload_mask),
        ("GET", "/api/object_info", routes.object_info),
        ("GET", "/api/object_info/{node_class}", routes.object_info_one),
        ("GET", "/api/system_stats", routes.system_stats),
        ("GET", "/api/features", routes.features),
        ("GET", "/api/user", routes.user),
        ("POST", "/api/free", routes.not_here),
        ("GET", "/api/history", routes.not_here),
        ("GET", "/api/history/{prompt_id}", routes.not_here),
    ]
    for method, path, handler in table:
        app.router.add_route(method, path, handler)
    return app


# -- storage ---------------------------------------------------------------------------------------


class Storage:
    """The signed-URL host: another port, no API key expected, every request's headers recorded."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.blobs: dict[str, tuple[Path, str]] = {}
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str) -> None:
        app = web.Application()
        app.router.add_get("/{digest}", self.serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.sim.cloud.storage_requests.append(
            {"path": request.path, "query": dict(request.query), "headers": dict(request.headers)}
        )
        blob = self.blobs.get(request.match_info["digest"])
        if blob is None or request.query.get("sig") != blob[1]:
            return web.Response(status=403, text="SignatureDoesNotMatch")
        path = blob[0]
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=content_type)
