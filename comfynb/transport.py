"""Typed async HTTP calls to one ComfyUI server.

Every call has a timeout; idempotent calls are retried with exponential backoff and jitter;
failures map to one exception hierarchy (:mod:`comfynb.errors`). Credentials live only in the
aiohttp session's default headers: they are scrubbed from every message we build and aiohttp
exceptions (whose request info holds the headers) are never chained. Runs on the private loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json as _json
import logging
import mimetypes
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp
import yarl

from . import cloud
from .errors import (
    ComfyError,
    HTTPStatusError,
    NodeError,
    PaymentRequired,
    ProtocolError,
    QueueFull,
    ServerUnavailable,
    Timeout,
    TooLarge,
    ValidationError,
)
from .secrets import Secrets

log = logging.getLogger(__name__)

_HINT = "is ComfyUI running? start one with `comfynb sim`"
_NOT_COMFY = "answers but is not ComfyUI"
_TLS_HINT = "pass verify_ssl=False only if you trust this server"
_AUTH_HINT = "check the credentials given to comfynb (headers, token, auth, api_key)"
_BODY_LIMIT = 2000
_KINDS = {"json": "an answer", "view": "an output file read into memory", "file": "an output file saved to disk"}
_MAX_DELAY = 5.0
_FIRST_RETRY = 0.015


def retry_delay(attempt: int, backoff: float) -> float:
    """Seconds before retry number ``attempt`` (from 1), jittered by +-50 %.

    Most failures are one dropped request (a proxy's 502, a reset connection), so the first retries
    come within tens of milliseconds (15, then 60 ms); from there the pause grows from ``backoff``,
    doubling, up to 5 s. Two quick tries matter: at 2 % failures, one request in 2,500 fails twice,
    and a sweep of a few hundred prompts makes thousands of requests.
    """
    quick = _FIRST_RETRY * 4 ** (attempt - 1)
    base = quick if quick < backoff else backoff * 2 ** max(0, attempt - 3)
    return min(base, _MAX_DELAY) * random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` bounds each socket read, and the wait for an answer's headers; ``total``
    one whole HTTP call (per attempt). A body must also arrive at ``min_rate`` bytes per second or
    more, measured over each ``rate_window`` (None: no minimum), so a server trickling an answer
    ends with an error even with ``total=None``."""

    connect: float = 10.0
    read: float = 30.0
    total: float | None = 60.0
    ws_heartbeat: float = 10.0  # ping interval; no pong within half of it closes the socket
    min_rate: float | None = 1024.0
    rate_window: float = 10.0


_MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bytes: the largest answer of each kind comfynb accepts, so a broken or hostile server cannot
    exhaust memory or disk. ``json``: any JSON answer (history, queue, object_info...); ``view``: an
    output file read into memory (``ImageRef.data``); ``file``: an output file streamed to disk
    (``save``); ``ws_frame``: one WebSocket message."""

    json: int = 64 * _MB
    view: int = 64 * _MB
    file: int = 2048 * _MB
    ws_frame: int = 32 * _MB


class NotSupported(HTTPStatusError):
    """The server lacks an optional API (``/api/jobs`` only exists since Dec 2025, PR #11054)."""


def validation_error(body: dict) -> ValidationError:
    """A ValidationError from a ``/prompt`` body: a 400, or a 200 whose ``node_errors`` dropped outputs."""
    error = body.get("error")
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict):
        error = {}
    node_errors = []
    raw_nodes = body.get("node_errors")
    for node_id, entry in (raw_nodes if isinstance(raw_nodes, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        class_type = str(entry.get("class_type") or "?")
        for err in entry.get("errors") or []:
            if not isinstance(err, dict):
                continue
            extra = err["extra_info"] if isinstance(err.get("extra_info"), dict) else {}
            node_errors.append(
                NodeError(
                    node_id=str(node_id),
                    class_type=class_type,
                    type=str(err.get("type") or ""),
                    message=str(err.get("message") or ""),
                    details=str(err.get("details") or ""),
                    input_name=extra.get("input_name"),
                    received=extra.get("received_value"),
                )
            )
    if error:
        message = f"the server rejected the prompt: {error.get('message') or 'invalid prompt'}"
        if error.get("details") and not node_errors:
            message += f" ({error['details']})"
    else:
        message = "some outputs of the prompt failed validation and will not run"
    return ValidationError(message, type=str(error.get("type") or ""), node_errors=node_errors, raw=body)


_INVALID = object()
_INHERITED: list[aiohttp.ClientSession] = []  # kept alive, never touched, in a forked child


def _loads(body: bytes) -> Any:
    """JSON or _INVALID; no exception, so nothing holding the body gets chained to our errors."""
    try:
        return _json.loads(body)
    except ValueError:
        return _INVALID


def _split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """Base URL without userinfo/query/fragment, and the userinfo as (login, password)."""
    if "://" not in url:
        url = "http://" + url
    u = yarl.URL(url)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme.lower(), u.scheme.lower())
    if scheme not in ("http", "https") or not u.host:
        # never echo the URL: it may carry a password
        raise ValueError(f"a ComfyUI URL must look like http(s)://host:port, got scheme {u.scheme!r}")
    auth = (u.user or "", u.password or "") if (u.user or u.password) else None
    base = u.with_user(None).with_query(None).with_fragment(None).with_scheme(scheme)
    return str(base).rstrip("/"), auth


class Transport:
    """HTTP and WebSocket access to one server; ``url`` is the base URL without credentials."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict | None = None,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: float | Timeouts = Timeouts(),
        retries: int = 3,
        backoff: float = 0.2,
        verify_ssl: bool = True,
        limits: Limits = Limits(),
        profile: cloud.Profile = cloud.LOCAL,
        partner_key: str | None = None,
        max_queue_wait: float | None = None,
    ):
        base, url_auth = _split_url(url)
        auth = auth or url_auth
        headers = {str(k): str(v) for k, v in (headers or {}).items()}
        given = [auth is not None, token is not None, any(k.lower() == "authorization" for k in headers)]
        if sum(given) > 1:
            raise ValueError("give only one of auth (or user:password in the URL), token, or an Authorization header")
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if auth is not None:
            encoded = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {encoded}"
        self.profile = profile
        self._partner_key = partner_key  # added to each POST /prompt body, never stored (see post_prompt)
        self._busy_said = -float("inf")  # when a 429 was last reported at WARNING level
        self.max_queue_wait = max_queue_wait  # seconds a POST may be refused as busy (None: no bound)
        self.url = base
        self._ws_url = "ws" + base[len("http") :] + "/ws"  # http -> ws, https -> wss
        self._headers = headers
        self._secrets = Secrets.of([url], headers=headers, auth=auth, token=token, api_keys=[partner_key])
        if not isinstance(timeout, Timeouts):
            timeout = Timeouts(connect=min(10.0, timeout), read=timeout, total=timeout)
        self.timeouts = timeout
        self.limits = limits
        self.retries = max(0, retries)
        self.backoff = backoff
        self._ssl = bool(verify_ssl)
        self.jobs_api: bool | None = None  # learnt from the first get_job()
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._session_pid: int | None = None
        self._closed = False  # closed: a later call (an image read lazily) gets a session of its own

    def __repr__(self) -> str:
        hidden = " (credentials hidden)" if self._headers else ""
        return f"<Transport {self.url}{hidden}>"

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._session_pid == os.getpid():
            await session.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _ws_auth(self) -> dict:
        """Comfy Cloud authenticates the WebSocket by a ``token`` query parameter (its docs)."""
        return {"token": self._headers["X-API-Key"]} if self.profile.cloud else {}

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._session_pid != os.getpid():
            # forked: the parent's session is not ours to use, nor to let the GC close: closing its
            # sockets would unregister them from the epoll set the child shares with the parent
            _INHERITED.append(self._session)
            self._session = None
        if self._session is None or self._session.closed:
            self._session = self._new_session()
            self._session_loop, self._session_pid = loop, os.getpid()
        elif self._session_loop is not loop:
            raise RuntimeError("a Transport is bound to the event loop it first ran on (comfynb's private loop)")
        return self._session

    def _new_session(self) -> aiohttp.ClientSession:
        t = self.timeouts
        return aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read),
            connector=aiohttp.TCPConnector(ssl=self._ssl),
        )

    def _scrub(self, text: str) -> str:
        return self._secrets.scrub(text)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        return self._scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    def _connection_error(self, exc: BaseException, what: str, attempts: int) -> Exception:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, aiohttp.ClientSSLError):
            return ServerUnavailable(
                f"TLS failure talking to {self.url} ({what}): {self._describe(exc)}; {_TLS_HINT}", url=self.url
            )
        if isinstance(exc, TimeoutError):
            t = self.timeouts
            return Timeout(
                f"{what} at {self.url} timed out{tries} "
                f"(timeouts: connect {t.connect:g} s, read {t.read:g} s, total {t.total or 'none'} s)"
            )
        return ServerUnavailable(
            f"cannot talk to ComfyUI at {self.url}: {what} failed{tries} ({self._describe(exc)}); {_HINT}",
            url=self.url,
        )

    def _status_error(self, method: str, path: str, status: int, body: bytes) -> HTTPStatusError:
        text = self._scrub(body[:_BODY_LIMIT].decode("utf-8", errors="replace"))
        message = f"{method} {self.url}{path} -> HTTP {status}"
        if text.strip():
            message += f": {text[:200].strip()}"
        if status in (401, 403):
            message += f"; {_AUTH_HINT}"
        return HTTPStatusError(message, url=self.url + path, status=status, body=text)

    def _decode(self, method: str, path: str, body: bytes) -> Any:
        if not body.strip():
            return None
        data = _loads(body)
        if data is _INVALID:
            snippet = self._scrub(body[:80].decode("utf-8", errors="replace"))
            raise ProtocolError(
                f"{self.url} {_NOT_COMFY}: {method} {path} returned non-JSON ({snippet!r})", url=self.url
            )
        return data

    def _shape_error(self, method: str, path: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self.url} {_NOT_COMFY}: {method} {path} did not return {expected}", url=self.url)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        json: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        retry: bool,
        kind: str = "json",
        headers_out: dict | None = None,
    ) -> tuple[int, bytes]:
        """One call with bounded retries; returns (status, body) of the last answer (and its
        headers in ``headers_out``). The body of a 200 is bounded by ``limits.<kind>``. Redirects
        are not followed: see :meth:`view`."""
        path = self.profile.path(path)
        opts = {"params": params, "json": json, "form": form, "retry": retry, "kind": kind, "headers_out": headers_out}
        if self._closed:
            async with self._new_session() as session:
                return await self._attempts(session, method, path, **opts)
        return await self._attempts(self._client(), method, path, **opts)

    async def _attempts(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str | yarl.URL,  # a URL: a redirect target, whose signed query must stay as it is
        *,
        params: dict | None,
        json: Any,
        form: Callable[[], aiohttp.FormData] | None,
        retry: bool,
        kind: str,
        headers_out: dict | None = None,
    ) -> tuple[int, bytes]:
        url = path if isinstance(path, yarl.URL) else self.url + path
        target = cloud.describe_target(path) if isinstance(path, yarl.URL) else None  # no signature in messages
        label: str = target if target is not None else str(path)  # for messages
        shown: str = target if target is not None else str(url)  # for the debug log
        attempts = 1 + self.retries if retry else 1
        attempt = 0
        while True:
            attempt += 1
            error: Exception | None = None
            try:
                # with total=None, the answer's headers still come within `read` s, however slowly they trickle
                head = self.timeouts.read if self.timeouts.total is None and form is None else None
                async with asyncio.timeout(head):
                    resp = await session.request(
                        method,
                        url,
                        params=params,
                        json=json,
                        data=form() if form else None,
                        ssl=self._ssl,
                        allow_redirects=False,  # a redirect to another host must not get our credentials
                    )
                try:
                    ok = resp.status == 200
                    body = await self._read(resp, method, label, kind if ok else "json")
                except BaseException:
                    resp.close()  # a half-read connection is not reused
                    raise
                resp.release()
                if headers_out is not None:
                    headers_out.clear()
                    headers_out.update(resp.headers)
                if resp.status >= 300:
                    body = self._secrets.scrub_bytes(body)
                if (resp.status < 500 and resp.status != 429) or attempt == attempts:
                    return resp.status, body
                failure = f"HTTP {resp.status}"
                if resp.status == 429:  # honour the server's Retry-After
                    busy = cloud.busy_delay(resp.headers.get("Retry-After"), -1.0)
                    if busy >= 0:
                        log.debug("%s %s: HTTP 429, retry %d/%d in %.2f s", method, shown, attempt, attempts - 1, busy)
                        await asyncio.sleep(busy)
                        continue
            except ComfyError:
                raise  # too large or too slow: an answer, not a failure that a retry mends
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failure = self._describe(exc)
                # a certificate does not get better by retrying
                if attempt == attempts or isinstance(exc, aiohttp.ClientSSLError):
                    error = self._connection_error(exc, f"{method} {label}", attempt)
            if error is not None:
                raise error  # outside the except block: aiohttp's exception, with the headers, is not chained
            delay = retry_delay(attempt, self.backoff)
            log.debug("%s %s failed (%s); retry %d/%d in %.2f s", method, shown, failure, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)

    async def _read(
        self, resp: aiohttp.ClientResponse, method: str, path: str, kind: str, out: BinaryIO | None = None
    ) -> bytes:
        """The body, at most ``limits.<kind>`` bytes and at ``timeouts.min_rate`` or faster; with
        ``out``, written there as it arrives (never held whole in memory) and ``b""`` returned."""
        limit = getattr(self.limits, kind)
        what = f"{method} {self.url}{path}"
        if resp.content_length is not None and resp.content_length > limit:
            raise self._too_large(what, kind, limit, resp.content_length)
        t = self.timeouts
        loop = asyncio.get_running_loop()
        need = t.min_rate * t.rate_window if t.min_rate else 0
        deadline = loop.time() + t.rate_window if need else None
        size = window = 0
        buf = bytearray()
        try:
            while True:
                timer = asyncio.timeout_at(deadline)
                try:
                    async with timer:
                        chunk = await resp.content.readany()
                except TimeoutError:
                    if not timer.expired():
                        raise
                    chunk = None  # the window ended without data
                if chunk == b"":
                    break
                if chunk:
                    size += len(chunk)
                    window += len(chunk)
                    if size > limit:
                        raise self._too_large(what, kind, limit)
                    if out is not None:
                        out.write(chunk)
                    else:
                        buf += chunk
                if deadline is not None and loop.time() >= deadline:
                    if window < need:
                        raise Timeout(
                            f"{what} is too slow: {window} bytes in the last {t.rate_window:g} s, below "
                            f"Timeouts.min_rate={t.min_rate:g} bytes/s; a stalled or hostile server "
                            "(lower min_rate for a slow link)"
                        )
                    deadline, window = loop.time() + t.rate_window, 0
        except BaseException:
            buf.clear()  # the error's traceback holds this frame: it must not hold the body too
            raise
        return bytes(buf)

    def _too_large(self, what: str, kind: str, limit: int, declared: int | None = None) -> TooLarge:
        size = f"{declared / _MB:.0f} MB" if declared is not None else f"more than {limit / _MB:g} MB"
        return TooLarge(
            f"{what} sent {size}, over the {limit / _MB:g} MB allowed for {_KINDS[kind]} "
            f"(Limits.{kind}); if the server really sends that much, raise it: Session(..., limits=Limits({kind}=...))",
            url=self.url,
        )

    # -- API --------------------------------------------------------------------------------

    async def request_json(
        self, method: str, path: str, *, params: dict | None = None, json: Any = None, retry: bool | None = None
    ) -> Any:
        """Call a route answering JSON (or an empty body -> None). Retries GETs by default."""
        if retry is None:
            retry = method.upper() == "GET"
        status, body = await self._send(method, path, params=params, json=json, retry=retry)
        if status != 200:
            raise self._status_error(method, path, status, body)
        return self._decode(method, path, body)

    async def call_json(
        self, method: str, path: str, *, json: Any = None, retry: bool | None = None
    ) -> tuple[int, Any]:
        """(status, decoded body) of a call whose answers the caller tells apart (200, 201, 404...);
        the body is None unless the status is 2xx. Retries GETs and HEADs by default."""
        if retry is None:
            retry = method.upper() in ("GET", "HEAD")
        status, body = await self._send(method, path, json=json, retry=retry)
        return status, self._decode(method, path, body) if 200 <= status < 300 else None

    async def post_prompt(self, body: dict) -> dict:
        """POST /prompt exactly once: the caller checks for a duplicate before trying again.

        A 429 (the server refused: busy, queue full) is not a try: the same body is sent again
        after ``Retry-After`` (or a growing pause) for up to ``max_queue_wait`` s, then
        :class:`QueueFull` is raised. A refusal for the account (402, or a 429 saying the plan is
        unpaid or inactive) raises :class:`PaymentRequired` at once: waiting would not mend it.
        Either way the prompt was not accepted. The partner-node key, if any, is added to this POST
        only, so no stored body, journal or history holds it."""
        delay = self.backoff
        busy_since: float | None = None
        while True:
            answer: dict = {}
            status, raw = await self._send(
                "POST", "/prompt", json=cloud.with_partner_key(body, self._partner_key), retry=False, headers_out=answer
            )
            if status not in (402, 429):
                break
            reason = self._scrub(raw[:200].decode("utf-8", errors="replace")).strip() or "no reason given"
            problem = cloud.account_problem(status, raw)
            if problem is not None:
                raise PaymentRequired(
                    f"{self.url} refused prompt {body.get('prompt_id')} for the account (HTTP {status}: {reason}): "
                    f"{problem}; the prompt was not run. {cloud.ACCOUNT_FIX}",
                    url=self.url,
                    status=status,
                )
            now = time.monotonic()
            busy_since = now if busy_since is None else busy_since
            left = None if self.max_queue_wait is None else self.max_queue_wait - (now - busy_since)
            if left is not None and left <= 0:
                raise QueueFull(
                    f"{self.url} answered busy (HTTP 429: {reason}) to prompt {body.get('prompt_id')} for "
                    f"{now - busy_since:.0f} s, max_queue_wait={self.max_queue_wait:g} s; the prompt was not run. "
                    "Submit it again later, or wait longer: Session(..., max_queue_wait=None waits for ever)",
                    url=self.url,
                    status=429,
                )
            wait = cloud.busy_delay(answer.get("Retry-After"), delay)
            wait = wait if left is None else min(wait, left)  # one last try when the bound is reached
            delay = min(delay * 2, cloud.MAX_BUSY_WAIT)
            loud = now - self._busy_said >= cloud.BUSY_WARNING_EVERY  # at WARNING once a minute, else INFO
            self._busy_said = now if loud else self._busy_said
            log.log(
                logging.WARNING if loud else logging.INFO,
                "%s is busy (HTTP 429: %s); prompt %s is sent again in %.1f s",
                self.url,
                reason,
                body.get("prompt_id"),
                wait,
            )
            await asyncio.sleep(wait)
        if status == 400:
            data = _loads(raw)
            if isinstance(data, dict) and ("error" in data or "node_errors" in data):
                raise validation_error(data)
        if status != 200:
            raise self._status_error("POST", "/prompt", status, raw)
        data = self._decode("POST", "/prompt", raw)
        if not isinstance(data, dict) or "prompt_id" not in data:
            raise self._shape_error("POST", "/prompt", "a prompt_id")
        return data

    async def get_history(self, prompt_id: str) -> Any:
        """The history entry, or None where ComfyUI answers ``{}`` (unknown, queued, running, evicted).
        The entry is as the server sent it: :func:`comfynb.history.check_entry` checks its shape.
        Comfy Cloud has no ``/history/{id}``: its ``/api/jobs/{id}`` record is read instead."""
        if self.profile.cloud:
            return cloud.history_entry(await self.get_job(prompt_id))
        path = f"/history/{quote(prompt_id, safe='')}"
        data = await self.request_json("GET", path)
        if not isinstance(data, dict):
            raise self._shape_error("GET", path, "an object")
        return data.get(prompt_id)

    async def get_history_page(self, max_items: int, offset: int | None = None) -> dict:
        if self.profile.cloud:
            raise NotSupported(
                f"{self.url} (Comfy Cloud) has no paged /history; its /api/history_v2 is read by "
                "comfynb.cloudapi.read_history (history_frame), a job's outcome through /api/jobs/{id}",
                url=self.url,
                status=404,
            )
        params = {"max_items": str(max_items)}
        if offset is not None:
            params["offset"] = str(offset)
        data = await self.request_json("GET", "/history", params=params)
        if not isinstance(data, dict):
            raise self._shape_error("GET", "/history", "an object")
        return data

    async def get_queue(self) -> tuple[list[str], list[str]]:
        """(running ids, pending ids in execution order): the server's heap array is not sorted."""
        data = await self.request_json("GET", "/queue")
        try:
            running = [str(item[1]) for item in data["queue_running"]]
            pending = sorted(data["queue_pending"], key=lambda item: (item[0], str(item[1])))
            return running, [str(item[1]) for item in pending]
        except (KeyError, TypeError, IndexError):
            pass
        raise self._shape_error("GET", "/queue", "queue_running and queue_pending")

    async def get_job(self, prompt_id: str) -> dict | None:
        """``/api/jobs/{id}``, or None if the server does not know the id.

        Raises :class:`NotSupported` on servers without the jobs API (and sets ``jobs_api`` False).
        A Comfy Cloud job that was cancelled counts as unknown, like a deleted prompt on a local server.
        """
        path = f"/api/jobs/{quote(prompt_id, safe='')}"
        if self.jobs_api is False:
            raise NotSupported(f"{self.url} has no jobs API", url=self.url + path, status=404)
        status, body = await self._send("GET", path, retry=True)
        if status == 404:
            data = _loads(body)
            if self.profile.cloud or (isinstance(data, dict) and data.get("error") == "Job not found"):
                self.jobs_api = True
                return None
            self.jobs_api = False
            raise NotSupported(
                f"{self.url} has no jobs API (ComfyUI older than Dec 2025)", url=self.url + path, status=404, body=""
            )
        if status != 200:
            raise self._status_error("GET", path, status, body)
        data = self._decode("GET", path, body)
        if not isinstance(data, dict):
            raise self._shape_error("GET", path, "a job object")
        self.jobs_api = True
        if self.profile.cloud and data.get("status") == "cancelled":
            return None  # deleted from its queue: gone, as a deleted prompt is on a local server
        return data

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts; deleting twice is harmless, so this is retried."""
        if prompt_ids:
            await self.request_json("POST", "/queue", json={"delete": list(prompt_ids)}, retry=True)

    async def interrupt(self, prompt_id: str | None) -> None:
        """Interrupt ``prompt_id`` if it is running.

        ``None`` interrupts whatever runs: never retried, as a late retry could hit the next prompt.
        """
        if self.profile.cloud:  # its /api/interrupt stops every running job of the account
            log.warning(
                "%s (Comfy Cloud) cannot interrupt one job without stopping all of yours; prompt %s runs to its end",
                self.url,
                prompt_id,
            )
            return
        body = {"prompt_id": prompt_id} if prompt_id is not None else None
        await self.request_json("POST", "/interrupt", json=body, retry=prompt_id is not None)

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """An output file, into memory (at most ``limits.view`` bytes)."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        answer: dict = {}
        status, body = await self._send("GET", "/view", params=params, retry=True, kind="view", headers_out=answer)
        if status in cloud.REDIRECTS and answer.get("Location"):
            return await self._follow(yarl.URL(self.url).join(yarl.URL(answer["Location"])))
        if status != 200:
            raise self._status_error("GET", "/view", status, body)
        return body

    async def download(self, filename: str, subfolder: str, type: str, path: str | os.PathLike) -> int:
        """GET /view streamed to ``path`` through a temporary file beside it (renamed when complete,
        removed on failure), so a large video never sits in memory. Returns the bytes written."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        folder = os.path.dirname(os.path.abspath(path))
        attempts = 1 + self.retries
        for attempt in range(1, attempts + 1):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".comfynb-", suffix=".part")
            error: Exception | None = None
            try:
                with os.fdopen(fd, "wb") as out:
                    async with self._view_response(params) as resp:
                        if resp.status != 200:
                            body = await self._read(resp, "GET", "/view", "json")
                            raise self._status_error("GET", "/view", resp.status, body)
                        await self._read(resp, "GET", "/view", "file", out)  # at most limits.file
                        size = out.tell()
                os.replace(tmp, path)
                return size
            except HTTPStatusError as exc:
                if exc.status < 500 or attempt == attempts:
                    error = exc
            except (TooLarge, Timeout) as exc:  # too large or too slow: retrying would not mend it
                error = exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt == attempts:
                    error = self._connection_error(exc, "GET /view", attempt)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if error is not None:
                raise error  # not chained: aiohttp's exception holds the request headers
            await asyncio.sleep(retry_delay(attempt, self.backoff))
        raise AssertionError("unreachable")  # every path above returns or raises

    async def view_small(self, filename: str, subfolder: str, type: str, limit: int) -> bytes | None:
        """The file's bytes if it has at most ``limit`` bytes, else None (reading stops there):
        a notebook inlines small media and points its players at ``/view`` for the rest."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        error: Exception | None = None
        try:
            async with self._view_response(params) as resp:
                if resp.status != 200:
                    raise self._status_error("GET", "/view", resp.status, await resp.read())
                if (resp.content_length or 0) > limit:
                    return None
                data = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > limit:
                        return None
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = self._connection_error(exc, "GET /view", 1)
        raise error  # not chained: aiohttp's exception holds the request headers

    async def _follow(self, target: yarl.URL) -> bytes:
        """Fetch a redirect target (Comfy Cloud: a signed storage URL). Another origin gets a
        session of its own, without our headers: the signed URL carries its own authorization."""
        where = cloud.describe_target(target)
        if target.scheme not in ("http", "https"):
            raise ProtocolError(f"{self.url} redirected /view to an unsupported URL ({target.scheme}:)", url=self.url)
        async with contextlib.AsyncExitStack() as stack:
            session = await self._session_for(target, stack)
            status, body = await self._attempts(
                session, "GET", target, params=None, json=None, form=None, retry=True, kind="view"
            )
        if status != 200:
            raise HTTPStatusError(
                f"GET {where} (where {self.url} redirected /view) -> HTTP {status}", url=where, status=status
            )
        return body

    async def _session_for(self, target: yarl.URL, stack: contextlib.AsyncExitStack) -> aiohttp.ClientSession:
        """The session to fetch a redirect target with: ours on our own origin, else one without
        any of our headers (closed with ``stack``)."""
        if cloud.same_origin(target, yarl.URL(self.url)):
            return self._client() if not self._closed else await stack.enter_async_context(self._new_session())
        t = self.timeouts
        return await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )
        )

    @contextlib.asynccontextmanager
    async def _view_response(self, params: dict) -> AsyncIterator[aiohttp.ClientResponse]:
        """The streaming answer of ``/view``. A redirect (Comfy Cloud: a signed storage URL) is
        followed once, without our credentials when it leaves our origin."""
        async with contextlib.AsyncExitStack() as stack:
            session = self._client() if not self._closed else await stack.enter_async_context(self._new_session())
            resp = await stack.enter_async_context(
                session.get(self.url + self.profile.path("/view"), params=params, ssl=self._ssl, allow_redirects=False)
            )
            if resp.status in cloud.REDIRECTS and resp.headers.get("Location"):
                target = yarl.URL(self.url).join(yarl.URL(resp.headers["Location"]))
                if target.scheme not in ("http", "https"):
                    raise ProtocolError(f"{self.url} redirected /view to an unsupported URL", url=self.url)
                session = await self._session_for(target, stack)
                resp = await stack.enter_async_context(session.get(target, ssl=self._ssl, allow_redirects=False))
            yield resp

    async def upload_image(
        self,
        data: bytes,
        filename: str,
        *,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
        original_ref: dict | None = None,
    ) -> dict:
        """Upload an input file (image, video, audio); use the returned ``name``. Retried: the server
        dedups identical content. With ``original_ref`` (``{filename, subfolder, type}`` of an image
        on the server) it goes to ``/upload/mask``: the upload's alpha is applied to that image."""
        path = "/upload/image" if original_ref is None else "/upload/mask"

        def form() -> aiohttp.FormData:
            f = aiohttp.FormData()
            mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            f.add_field("image", data, filename=filename, content_type=mime)
            f.add_field("type", type)
            f.add_field("subfolder", subfolder)
            f.add_field("overwrite", "true" if overwrite else "false")
            if original_ref is not None:
                f.add_field("original_ref", _json.dumps(original_ref))
            return f

        status, body = await self._send("POST", path, form=form, retry=True)
        if status != 200:
            raise self._status_error("POST", path, status, body)
        result = self._decode("POST", path, body)
        if not isinstance(result, dict) or "name" not in result:
            raise self._shape_error("POST", path, "the uploaded name")
        return result

    async def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" if node_class is None else f"/object_info/{quote(node_class, safe='')}"
        data = await self.request_json("GET", path)
        if not isinstance(data, dict):
            raise self._shape_error("GET", path, "an object")
        return data

    async def system_stats(self, retry: bool = True) -> dict:
        """Also the probe for "is this ComfyUI?": anything unexpected is a ProtocolError.
        ``retry=False`` for health probes, which have their own backoff."""
        status, body = await self._send("GET", "/system_stats", retry=retry)
        if status in (404, 405):
            raise ProtocolError(f"{self.url} {_NOT_COMFY}: GET /system_stats -> HTTP {status}", url=self.url)
        if status != 200:
            raise self._status_error("GET", "/system_stats", status, body)
        data = self._decode("GET", "/system_stats", body)
        if not isinstance(data, dict) or not isinstance(data.get("system"), dict):
            raise self._shape_error("GET", "/system_stats", "system stats")
        if self.profile.cloud:  # public there: the key is checked by a route that needs it
            try:
                await self.request_json("GET", "/user", retry=retry)
            except HTTPStatusError as exc:
                if exc.status != 429:  # busy is alive
                    raise
        return data

    async def ws_connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        """Open ``/ws?clientId=``: messages up to ``limits.ws_frame`` (big ``executed`` payloads, PNG
        frames; a bigger one ends the socket, which reconnects), pings to spot stalls."""
        error: Exception
        try:
            return await self._client().ws_connect(
                self._ws_url,
                params={"clientId": client_id, **self._ws_auth()},
                max_msg_size=self.limits.ws_frame,
                heartbeat=self.timeouts.ws_heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.timeouts.connect),
                ssl=self._ssl,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                error = HTTPStatusError(
                    f"WebSocket upgrade at {self.url}/ws refused (HTTP {exc.status}); {_AUTH_HINT}, "
                    "or a mismatched Origin header",
                    url=self.url + "/ws",
                    status=exc.status,
                )
            else:
                error = ProtocolError(f"{self.url} {_NOT_COMFY}: no WebSocket at /ws (HTTP {exc.status})", url=self.url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = self._connection_error(exc, "WebSocket connect", 1)
        raise error  # not chained: aiohttp's exception holds the request headers
