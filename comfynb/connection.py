"""One WebSocket per server, kept open for the life of a session.

The socket always uses the session's one ``clientId``, so prompts queued before a reconnect keep
receiving their (later) messages on the new socket. Because the server mutes a reused id when
the previous handler exits after the new socket registered (protocol §6.5), the old socket is
closed and awaited before every reconnect. Messages missed in between are never replayed: the
owner is told after every connect so it can reconcile with the server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .errors import ComfyError, TransportError
from .events import FEATURE_FLAGS, Preview, parse_binary, parse_text
from .transport import Transport

log = logging.getLogger(__name__)


class Connection:
    """Connect, announce feature flags, read and dispatch frames, reconnect with backoff.

    ``on_event`` gets every parsed text frame, ``on_preview`` every preview frame, and
    ``on_connect`` is called after each successful (re)connect. They run on the private loop and
    must not block.
    """

    def __init__(
        self,
        transport: Transport,
        client_id: str,
        *,
        on_event: Callable[[Any], None],
        on_preview: Callable[[Preview], None],
        on_frame: Callable[[Any], None],
        on_connect: Callable[[], None],
        backoff: float = 0.05,
        max_backoff: float = 5.0,
        close_timeout: float = 2.0,
    ):
        self.transport = transport
        self.client_id = client_id
        self._on_event = on_event
        self._on_preview = on_preview
        self._on_frame = on_frame
        self._on_connect = on_connect
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_message = time.monotonic()  # any frame, of any prompt: the socket is alive
        self.last_error: BaseException | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None  # held so the task is not garbage-collected
        self._closing = False
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"comfynb ws {self.transport.url}")

    def wake(self) -> None:
        """Reconnect now instead of after the backoff (the server is known to be back)."""
        self._wake.set()

    def replace(self, reason: str) -> None:
        """Drop the current socket (stalled or muted); the read loop reconnects."""
        ws = self._ws
        if ws is not None and not ws.closed:
            log.warning("replacing the WebSocket to %s: %s", self.transport.url, reason)
            self._closer = asyncio.get_running_loop().create_task(self._close_ws(ws))

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._ws is not None:
            await self._close_ws(self._ws)

    async def _run(self) -> None:
        delay = self._backoff
        while not self._closing:
            ws = None
            try:
                ws = await self.transport.ws_connect(self.client_id)
                self._ws = ws
                await ws.send_json(FEATURE_FLAGS)  # must be the first frame we send
                self.connects += 1
                self.last_message = time.monotonic()
                self.connected.set()
                self._on_connect()
                if await self._read(ws):
                    delay = self._backoff  # it worked for a while: reconnect quickly
            except (ComfyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.last_error = exc
                log.info("WebSocket to %s failed: %s", self.transport.url, exc)
            except Exception as exc:  # anything else: still reconnect, the socket must live on
                self.last_error = exc
                log.exception("WebSocket to %s failed unexpectedly", self.transport.url)
            finally:
                self.connected.clear()
                if ws is not None:
                    # The same clientId is reused next: the old socket must be gone first.
                    await self._close_ws(ws)
            if self._closing:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.5, 1.0))
                delay = self._backoff
            except TimeoutError:
                delay = min(delay * 2, self._max_backoff)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Dispatch frames until the socket ends; True if anything arrived."""
        received = False
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                self.last_message = time.monotonic()
                received = True
                try:
                    self._dispatch(msg)
                except Exception:  # a bug in a handler must not take the socket down
                    log.exception("could not handle a message from %s", self.transport.url)
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a missed pong ends up here too)
                if msg.type is aiohttp.WSMsgType.ERROR:
                    self.last_error = TransportError(f"WebSocket to {self.transport.url} failed: {msg.data}")
                    if (
                        isinstance(msg.data, aiohttp.WebSocketError)
                        and msg.data.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    ):
                        log.warning(
                            "%s sent a WebSocket frame over the %d bytes allowed (Limits.ws_frame); it was refused "
                            "and the socket reconnects (raise it with Session(..., limits=Limits(ws_frame=...)))",
                            self.transport.url,
                            self.transport.limits.ws_frame,
                            extra={"server": self.transport.url},
                        )
                log.info("WebSocket to %s ended (%s)", self.transport.url, msg.type.name)
                return received

    def _dispatch(self, msg: aiohttp.WSMessage) -> None:
        if msg.type is aiohttp.WSMsgType.TEXT:
            event = parse_text(msg.data)
            if event is not None:
                self._on_event(event)
            return
        frame = parse_binary(msg.data)
        if isinstance(frame, Preview):
            self._on_preview(frame)
        elif frame is not None:
            self._on_frame(frame)

    async def _close_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close and wait; a stalled server gets ``close_timeout`` before the TCP link is cut."""
        try:
            await asyncio.wait_for(ws.close(), self._close_timeout)
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
