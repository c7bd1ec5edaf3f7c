"""WebSocket connections and who receives what, as ComfyUI's PromptServer delivers it.

A socket is registered under its ``clientId``; a second socket with the same id replaces the
first in the table, and when any socket's handler ends it removes whatever is registered under
its id (the upstream bug of trace g3, reproduced on purpose). Targeted messages for an id with
no socket are dropped: nothing is buffered. Each connection has its own outgoing queue and
writer task, so the engine never waits on a slow client and per-socket order is preserved.
Socket-level faults (drops, stalls, closes) are applied here.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .faults import Faults
from .ledger import Ledger

_CLOSE = object()  # writer sentinel: close the connection after what is queued
_OUTCOMES = frozenset({"execution_success", "execution_error", "execution_interrupted"})

SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
}


def text_frame(type_: str, data: Any) -> str:
    return json.dumps({"type": type_, "data": data})


class Conn:
    """One open WebSocket: its feature flags, fault state and ordered outgoing queue."""

    __slots__ = (
        "_faults",
        "_out",
        "_ready",
        "_transport",
        "_writer",
        "closing",
        "flags",
        "sent",
        "sid",
        "stalled",
        "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, sid: str, transport: Any, faults: Faults):
        self.ws = ws
        self.sid = sid
        self.flags: dict = {}
        self.sent = 0
        self.stalled = False
        self.closing = False
        self._faults = faults
        self._transport = transport
        self._out: deque = deque()
        self._ready = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    @property
    def wants_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))

    def push(self, payload: str | bytes, on_sent: Callable[[], None] | None = None) -> None:
        """Queue one frame, applying the per-socket faults (stall, close after K messages);
        ``on_sent`` is called once the frame has been written to the socket."""
        if self.stalled or self.closing:
            return
        self._out.append(payload if on_sent is None else (payload, on_sent))
        self.sent += 1
        faults = self._faults
        if faults.close_after is not None and self.sent >= faults.close_after:
            faults.counts["close_after"] += 1
            self.closing = True
            self._out.append(_CLOSE)
        elif faults.take_stall(self.sent):
            self.stall()
        self._ready.set()

    def stall(self) -> None:
        """Go silent: stay open, send nothing more, answer no pings."""
        if not self.stalled:
            self.stalled = True
            self._faults.counts["stall"] += 1

    def drop(self) -> None:
        """Close the connection now (TCP close, no WebSocket close frame), like a network drop."""
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    async def _write(self) -> None:
        ws, out = self.ws, self._out
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while out:
                    item = out.popleft()
                    if item is _CLOSE:
                        self._transport.close()
                        return
                    on_sent = None
                    if isinstance(item, tuple):
                        item, on_sent = item
                    if isinstance(item, str):
                        await ws.send_str(item)
                    else:
                        await ws.send_bytes(item)
                    if on_sent is not None:
                        on_sent()
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the handler notices and unregisters

    async def finish(self) -> None:
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass


class Hub:
    """The socket table and the delivery rules (broadcast, targeted, dropped)."""

    def __init__(self, faults: Faults, ledger: Ledger | None = None):
        self.faults = faults
        self.ledger = ledger
        self.sockets: dict[str, Conn] = {}
        self.open: set[Conn] = set()  # every live connection, registered or muted

    def register(self, ws: web.WebSocketResponse, sid: str, transport: Any) -> Conn:
        conn = Conn(ws, sid, transport, self.faults)
        self.sockets.pop(sid, None)
        self.sockets[sid] = conn
        self.open.add(conn)
        return conn

    async def unregister(self, conn: Conn) -> None:
        self.sockets.pop(conn.sid, None)  # by id, even if a newer socket holds it (trace g3)
        self.open.discard(conn)
        await conn.finish()

    def has(self, sid: str | None) -> bool:
        return bool(self.sockets) if sid is None else sid in self.sockets

    def wants_metadata(self, sid: str | None) -> bool:
        conn = self.sockets.get(sid) if sid is not None else None
        return conn is not None and conn.wants_metadata

    def send(self, type_: str, data: Any, sid: str | None, kind: str | None = None) -> None:
        """Send a JSON message to ``sid``'s socket, or to every socket when ``sid`` is None.

        ``kind`` names the message for drop faults when it differs from its type
        ("executing_done" for ``executing {node: null}``).
        """
        if sid is None:
            if self.sockets:
                frame = text_frame(type_, data)
                for each in list(self.sockets.values()):
                    each.push(frame)
            return
        conn = self.sockets.get(sid)
        faults, kind = self.faults, kind or type_
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if conn is None or ((faults.drop or faults.drop_for) and faults.drop_message(kind, prompt_id)):
            return
        on_sent = None
        if self.ledger is not None and prompt_id is not None and (kind == "executing_done" or type_ in _OUTCOMES):
            ledger = self.ledger

            def on_sent() -> None:
                ledger.told(prompt_id)

        conn.push(text_frame(type_, data), on_sent)

    def send_binary(self, event: int, payload: bytes, sid: str | None) -> None:
        frame = struct.pack(">I", event) + payload
        if sid is None:
            for each in list(self.sockets.values()):
                each.push(frame)
            return
        conn = self.sockets.get(sid)
        if conn is not None and not (self.faults.drop and self.faults.drop_message("preview")):
            conn.push(frame)

    def stall(self, sid: str | None = None) -> None:
        """Silence ``sid``'s socket (or the first registered one)."""
        conn = self.sockets.get(sid) if sid is not None else next(iter(self.sockets.values()), None)
        if conn is not None:
            conn.stall()

    def drop_all(self) -> int:
        conns = list(self.open)
        for conn in conns:
            conn.drop()
        return len(conns)
