"""Record a simulator run with plain aiohttp clients, in the trace record format of :mod:`.trace`.

Only ``aiohttp`` is used (the comfynb client is not imported): each socket is an
``aiohttp`` WebSocket with a reader task that appends every received frame to the shared
record list; HTTP calls are appended as ``src: "http"`` records.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

WAIT = 5.0  # generous upper bound for any single wait; tests normally finish in ms


def new_client_id(label: str) -> str:
    """Same pattern as the recorder: ``<first letter of label>-<8 hex>``."""
    return f"{label[0]}-{uuid.uuid4().hex[:8]}"


def msg_is(type_: str, **data: Any) -> Callable[[dict], bool]:
    """Predicate on a received record: text message of ``type_`` whose data matches ``data``."""

    def pred(rec: dict) -> bool:
        if "msg" not in rec or rec["msg"].get("type") != type_:
            return False
        d = rec["msg"].get("data") or {}
        return all(d.get(k, object()) == v for k, v in data.items())

    return pred


class Socket:
    def __init__(self, live: Live, label: str, client_id: str):
        self.live = live
        self.label = label
        self.client_id = client_id
        self.frames: list[dict] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Condition()
        self.closed = False

    @property
    def src(self) -> str:
        return f"ws:{self.label}"

    async def _reader(self) -> None:
        assert self.ws is not None
        try:
            async for m in self.ws:
                rec: dict[str, Any] = {"t": self.live.now(), "src": self.src}
                if m.type == aiohttp.WSMsgType.TEXT:
                    rec["msg"] = json.loads(m.data)
                elif m.type == aiohttp.WSMsgType.BINARY:
                    data: bytes = m.data
                    rec.update(
                        binary=True,
                        len=len(data),
                        first8=data[:8].hex(),
                        event_type=struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None,
                    )
                    if rec["event_type"] == 4 and len(data) >= 8:
                        (n,) = struct.unpack(">I", data[4:8])
                        try:
                            rec["metadata"] = json.loads(data[8 : 8 + n].decode())
                        except ValueError:
                            rec["metadata"] = None
                    rec["payload"] = data  # kept for tests that decode the image; ignored by trace.py
                else:
                    continue
                self.live.records.append(rec)
                self.frames.append(rec)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed = True
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, pred: Callable[[dict], bool], *, count: int = 1, timeout: float = WAIT) -> dict:
        """Wait until ``count`` received frames match ``pred``; return the last of them."""

        async def _wait() -> dict:
            async with self._changed:
                while True:
                    hits = [r for r in self.frames if pred(r)]
                    if len(hits) >= count:
                        return hits[count - 1]
                    if self.closed:
                        raise AssertionError(f"{self.label}: socket closed while waiting")
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            got = [r.get("msg", {}).get("type", "binary") for r in self.frames]
            raise AssertionError(f"{self.label}: timed out waiting; received so far: {got}") from None

    async def wait_done(self, prompt_id: str, timeout: float = WAIT) -> dict:
        return await self.wait_for(msg_is("executing", node=None, prompt_id=prompt_id), timeout=timeout)

    async def send_json(self, msg: dict) -> None:
        assert self.ws is not None
        self.live.records.append({"t": self.live.now(), "src": self.src, "event": "sent", "msg": msg})
        await self.ws.send_str(json.dumps(msg))

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, WAIT)
        self.live.records.append({"t": self.live.now(), "src": self.src, "event": "close", "close_code": None})


class Live:
    """One scenario run against a simulator: shared record list, HTTP session, sockets."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.records: list[dict] = []
        self.sockets: dict[str, Socket] = {}
        self._t0 = time.monotonic()
        self.http: aiohttp.ClientSession | None = None

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    async def __aenter__(self) -> Live:
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for s in list(self.sockets.values()):
            if s.ws is not None and not s.ws.closed:
                await s.ws.close()
            if s._task is not None and not s._task.done():
                try:
                    await asyncio.wait_for(s._task, WAIT)
                except Exception:
                    s._task.cancel()
        assert self.http is not None
        await self.http.close()

    def note(self, text: str) -> None:
        self.records.append({"t": self.now(), "src": "note", "text": text})

    # ---------------------------------------------------------------- websockets
    async def connect(
        self, label: str, client_id: str | None = None, *, feature_flags: dict | None = None, wait_status: bool = True
    ) -> Socket:
        """Open ``/ws?clientId=``; optionally send ``feature_flags`` as the first frame (trace a2/i/k)."""
        assert self.http is not None
        sock = Socket(self, label, client_id or new_client_id(label))
        self.sockets[label] = sock
        sock.ws = await self.http.ws_connect(f"{self.url}/ws?clientId={sock.client_id}", max_msg_size=0)
        self.records.append({"t": self.now(), "src": sock.src, "event": "open", "client_id": sock.client_id})
        if feature_flags is not None:
            await sock.send_json({"type": "feature_flags", "data": feature_flags})
        sock._task = asyncio.ensure_future(sock._reader())
        if wait_status:
            await sock.wait_for(msg_is("status"))
        return sock

    # ---------------------------------------------------------------- HTTP
    async def request(
        self, method: str, path: str, *, json_body: Any = None, raw: str | None = None, record: bool = True
    ) -> dict:
        assert self.http is not None
        rec: dict[str, Any] = {"t": self.now(), "src": "http", "method": method, "path": path}
        if json_body is not None:
            rec["req"] = json_body
        if raw is not None:
            rec["req_raw"] = raw
        if record:
            self.records.append(rec)  # appended at request time: keeps request order
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            kwargs["json"] = json_body
        elif raw is not None:
            kwargs["data"] = raw
            kwargs["headers"] = {"Content-Type": "application/json"}
        async with self.http.request(method, self.url + path, **kwargs) as resp:
            data = await resp.read()
            rec["status"] = resp.status
            rec["headers"] = {
                k: resp.headers[k]
                for k in ("Content-Type", "Content-Length", "Content-Disposition")
                if k in resp.headers
            }
            rec["body_len"] = len(data)
            ct = resp.headers.get("Content-Type", "")
            if data and ct.startswith("application/json"):
                rec["body"] = json.loads(data)
            elif data and ct.startswith("text/"):
                rec["body_text"] = data.decode("utf-8", "replace")
            elif data:
                rec["payload"] = data
        rec["t_done"] = self.now()
        return rec

    async def get(self, path: str, **kw: Any) -> dict:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> dict:
        return await self.request("POST", path, json_body=body, **kw)

    async def post_prompt(self, body: dict, **kw: Any) -> str:
        rec = await self.post("/prompt", body, **kw)
        assert rec["status"] == 200, rec
        return rec["body"]["prompt_id"]

    async def post_prompts_concurrently(self, bodies: list[dict]) -> list[str]:
        """POST several prompts at once (trace c1/c2).

        The recorder logged the concurrent responses in queue-number order; the server's
        arrival order is what matters, so records are re-sorted by the returned ``number``.
        """
        start = len(self.records)
        recs = await asyncio.gather(*(self.post("/prompt", b) for b in bodies))
        batch = [r for r in self.records[start:] if r["src"] == "http"]
        others = [r for r in self.records[start:] if r["src"] != "http"]
        batch.sort(key=lambda r: r["body"]["number"])
        self.records[start:] = batch + others
        return [r["body"]["prompt_id"] for r in recs]

    # ---------------------------------------------------------------- helpers
    async def wait_history(self, prompt_id: str, timeout: float = WAIT) -> dict:
        """Poll ``/history/{id}`` without recording (the recorder's own polling is not in traces)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = await self.get(f"/history/{prompt_id}", record=False)
            if rec.get("body"):
                return rec["body"]
            await asyncio.sleep(0.01)
        raise AssertionError(f"history for {prompt_id} never appeared")

    async def wait_statuses_like(self, trace_records: list[dict]) -> None:
        """Wait until every open socket has received as many ``status`` messages as the socket
        with the same label in the trace (the last broadcasts may trail the done message)."""
        for label, sock in self.sockets.items():
            if sock.closed or (sock.ws is not None and sock.ws.closed):
                continue
            n = sum(
                1
                for r in trace_records
                if r["src"] == f"ws:{label}" and "event" not in r and r.get("msg", {}).get("type") == "status"
            )
            if n:
                await sock.wait_for(msg_is("status"), count=n)

    async def settle(self, seconds: float = 0.05) -> None:
        """Grace period so that unexpected extra frames would be recorded before comparing."""
        await asyncio.sleep(seconds)
