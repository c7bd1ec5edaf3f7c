"""Session: submit prompts to ComfyUI servers and get every result back, exactly once.

A Session owns one :class:`_Server` per URL (transport, WebSocket, tracker, watchdog), all on the
private loop; :mod:`comfynb.pool` decides which server takes each prompt and moves jobs off a
server that is down. The socket is trusted for speed, never for correctness: a job ends only when
its history (or the jobs API) says how, and whenever the socket may have missed something (reconnect,
silence, a queue that shrank without a completion) the server is asked directly, with one
``/queue`` call for all jobs and a per-job lookup only for those that left the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import yarl

from . import _loop
from . import frames as _frames
from . import sweep as _sweep
from .connection import Connection
from .errors import (
    Cancelled,
    ComfyError,
    ExecutionError,
    HTTPStatusError,
    Interrupted,
    JobLost,
    ProtocolError,
    Timeout,
    TransportError,
    ValidationError,
)
from .jobs import Job
from .journal import Journal
from .pool import STARTING, UP, Pool, discard
from .results import Result
from .tracker import (
    CANCELLED,
    ERROR,
    INTERRUPTED,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCESS,
    PromptState,
    Tracker,
)
from .transport import NotSupported, Timeouts, Transport
from .workflow import Workflow

log = logging.getLogger(__name__)

_HISTORY_READS = 6  # /history/{id} reads before asking the jobs API (0.05 s .. 0.8 s apart)
_HISTORY_BACKOFF = 0.05
_MAX_GRACE = 0.5  # how long a final `executing` may lag behind the `status` that precedes it
_UNKNOWN = "unknown"
_FINISHED = "finished"
_OUTCOME_MESSAGES = {SUCCESS: "execution_success", ERROR: "execution_error", INTERRUPTED: "execution_interrupted"}
_PROGRESS = (True, False, None, "auto", "widget", "text")

# Called as hook(session, job_or_sweep) for everything a session starts. The notebook layer
# (comfynb.progress) adds its display here, so this module never imports it.
submit_hooks: list = []


class Session:
    """Submit workflows to one or more ComfyUI servers; every job ends with its own result or a clear error.

    ``url`` is one URL or a list. With several, each job goes to the server with the least
    outstanding work per unit of ``weights`` (a number per server: a list, or a dict by URL),
    each holding at most ``max_inflight`` of our prompts (``"auto"``: 2 each with several
    servers, no limit with one; None: no limit) while the others wait client-side;
    ``capabilities`` (default: on with several servers) sends a workflow only to servers whose
    ``/object_info`` lists its node classes and model files. A server is down once it fails to
    answer (a POST, or HTTP after its socket stayed closed for ``down_after`` s); after
    ``failover_after`` s down its jobs run elsewhere (see :mod:`comfynb.pool`).

    ``resubmit_lost``: a prompt the server forgot (restart) is submitted again, up to
    ``max_attempts`` submissions in all, else it ends as ``lost``. ``reconcile_after``: seconds of
    socket silence, while jobs are unfinished, before the server is asked directly.
    ``progress``: "auto" shows live progress (widgets in a Jupyter kernel, else a text line on
    stderr), "widget" or "text" force one, False shows nothing.
    ``journal`` (a SQLite path) records every submission, so ``resume(sweep_id)`` can finish a sweep
    after a crash or a server restart. Construction does not block; ``with``/``async with`` wait until the servers answer.
    """

    def __init__(
        self,
        url: str | Iterable[str],
        *,
        headers: dict | None = None,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: float | Timeouts = Timeouts(),
        retries: int = 3,
        backoff: float = 0.2,
        progress: str = "auto",
        resubmit_lost: bool = True,
        max_attempts: int = 3,
        reconcile_after: float = 5.0,
        verify_ssl: bool = True,
        max_events: int = 1000,
        journal: str | os.PathLike | Journal | None = None,
        weights: Iterable[float] | Mapping[str, float] | None = None,
        max_inflight: int | str | Iterable[int | str | None] | Mapping[str, int | str | None] | None = "auto",
        capabilities: bool | None = None,
        down_after: float = 5.0,
        failover_after: float = 30.0,
    ):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("Session needs at least one server URL")
        self.client_id = uuid.uuid4().hex
        if progress not in _PROGRESS:
            raise ValueError(f"progress must be 'auto', 'widget', 'text' or False, not {progress!r}")
        self.progress = progress
        self.resubmit_lost = resubmit_lost
        self.max_attempts = max(1, max_attempts)
        self.reconcile_after = reconcile_after
        self.retries = max(0, retries)
        self.backoff = backoff
        self.events: collections.deque = collections.deque(maxlen=max_events)
        self.simulator: Any = None  # set by Session.simulated(): the first simulator
        self.simulators: list = []
        self.journal = Journal(journal) if isinstance(journal, (str, os.PathLike)) else journal
        self._uploads: dict = {}  # (server, content-addressed name) -> name on the server
        self._sweeps: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._sim_context: Any = None
        self._secrets = _secrets(urls, headers, auth, token)
        self._servers = [
            _Server(
                self,
                Transport(u, headers=headers, auth=auth, token=token, timeout=timeout, retries=retries,
                          backoff=backoff, verify_ssl=verify_ssl),
            )
            for u in urls
        ]
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pool = Pool(self, self._servers, weights=weights, max_inflight=max_inflight,
                          capabilities=capabilities, down_after=down_after, failover_after=failover_after)
        self._started = _loop.submit(self._pool.start())

    @classmethod
    def simulated(cls, n: int = 1, **options: Any) -> Session:
        """A session on ``n`` embedded ComfyUI simulators (no GPU), closed with the session.

        Keywords that :class:`Session` takes configure the session; all others go to each
        :class:`comfynb.sim.Simulator` (``node_time``, ``faults``, ``seed``, ...). With ``root``
        and several servers, each gets a subfolder. ``session.simulators`` lists them.
        """
        from .sim import Simulator

        if n < 1:
            raise ValueError("n must be at least 1")
        own = inspect.signature(cls).parameters
        session_options = {k: options.pop(k) for k in list(options) if k in own and k != "url"}
        root = options.pop("root", None)
        roots = [os.path.join(root, f"server{i}") for i in range(n)] if root is not None and n > 1 else [root] * n
        sims = [Simulator(**options, root=r) for r in roots]
        stack = contextlib.ExitStack()
        try:
            for sim in sims:
                stack.enter_context(sim.running())
            session = cls([sim.url for sim in sims], **session_options)
        except BaseException:
            stack.close()
            raise
        session.simulator, session.simulators, session._sim_context = sims[0], sims, stack
        return session

    # -- submitting -----------------------------------------------------------------------

    def submit(self, workflow: Any, *, tags: str | Mapping | None = None, front: bool = False) -> Job:
        """Queue a workflow (a Workflow, an API-format dict, JSON text or a path); returns at once.

        ``tags`` (a string or a JSON-able dict) travel with the prompt in
        ``extra_data["comfynb"]``, so results can be found in the server's history later.
        """
        if self._closed:
            raise ComfyError("this session is closed")
        prompt = (workflow if isinstance(workflow, Workflow) else Workflow.load(workflow)).to_api()
        prompt_id = str(uuid.uuid4())
        tag_dict = self._tags(tags)
        state = PromptState(prompt_id, self._body(prompt, prompt_id, tag_dict, front), tag_dict)
        state.posting = True  # from now until the server accepted it (or it was dropped)
        job = Job(state, self._request_cancel)
        with self._lock:
            self._jobs[prompt_id] = job
        _loop.submit(self._pool.enqueue(state, front))
        return self._announce(job)

    def _announce(self, item: Any) -> Any:
        for hook in submit_hooks:
            hook(self, item)
        return item

    def _body(self, prompt: dict, prompt_id: str, tags: dict | None, front: bool = False) -> dict:
        """The POST /prompt body: our client_id, our prompt_id, tags in ``extra_data["comfynb"]``."""
        extra = {"comfynb": tags} if tags is not None else {}
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id, "extra_data": extra}
        if front:
            body["front"] = True
        return body

    def _hold(self) -> Job:
        """A ``pending`` job without a prompt yet, sent by :meth:`_send_held` when a sweep slot opens:
        thousands of them cost little, and cancelling one just drops it."""
        if self._closed:
            raise ComfyError("this session is closed")
        state = PromptState(str(uuid.uuid4()), None, None)
        job = Job(state, self._request_cancel)
        with self._lock:
            self._jobs[state.prompt_id] = job
        return job

    def _send_held(self, job: Job, prompt: dict, tags: Mapping) -> None:
        """Send a held job (on the loop). ``prompt`` is an API-format graph the caller checked; it is
        not copied, so a sweep can share the nodes its prompts have in common."""
        state = job._state
        if state.done:
            return
        state.tags = self._tags(tags)
        state.body = self._body(prompt, state.prompt_id, state.tags)
        state.progress.nodes_total = len(state.body["prompt"])
        _loop.submit(self._pool.enqueue(state))

    def _adopt(self, prompt_id: str, *, server: str, prompt: dict | None, tags: dict | None, attempts: int,
               entry: dict | None = None, status: str | None = None) -> Job:
        """A job for a prompt sent earlier, maybe by another process (on the loop; used by resume).

        With ``entry`` or a final ``status`` it ends at once, as recorded. Otherwise the server is
        asked: the job is collected from history, followed while queued or running, or sent again
        (same prompt_id) if the server lost it.
        """
        with self._lock:
            job = self._jobs.get(prompt_id)
        if job is not None:
            return job
        srv = next((s for s in self._servers if s.url == server), None)
        if srv is None:
            raise ComfyError(f"prompt {prompt_id} was sent to {server}, which is not a server of this session")
        state = PromptState(prompt_id, None if prompt is None else self._body(prompt, prompt_id, tags), tags)
        state.sent, state.attempts = True, attempts
        self._pool.assign(state, srv)
        srv.tracker.register(state)
        job = Job(state, self._request_cancel)
        with self._lock:
            self._jobs[prompt_id] = job
        if entry is not None:
            srv._finish(state, entry)
        elif status is not None:
            error = Cancelled if status == CANCELLED else ComfyError
            srv.settle(state, status, error=error(f"prompt {prompt_id} ended as {status} in an earlier session"))
        else:
            srv.spawn(srv.finalize(state))
        return job

    # -- sweeps, input images, history (the logic lives in sweep.py and frames.py) ----------------

    def sweep(self, workflow: Any, *, grid: Mapping | None = None, zip: Mapping | None = None,
              rows: Iterable[Mapping] | None = None, concurrency: int | None = None, tag: str | None = None,
              seeds: int | Iterable[int] | None = None) -> _sweep.Sweep:
        """One prompt per row of a grid, of aligned lists (``zip``) or of explicit ``rows``, at most
        ``concurrency`` on the servers at once (default: 8, or enough to fill every server's
        ``max_inflight``); ``await sweep`` (or ``sweep.result()``) for the frame.

        Addresses are checked before anything is sent. ``seeds=n`` adds a seed axis (the
        workflow's seed, +1, ...), or give a list. Images as values are uploaded once each.
        """
        if concurrency is None:
            concurrency = self._pool.concurrency()
        return self._announce(_sweep.start(self, workflow, grid=grid, zip=zip, rows=rows,
                                           concurrency=concurrency, tag=tag, seeds=seeds))

    def resume(self, sweep_id: str) -> _sweep.Sweep:
        """Finish a sweep recorded in this session's journal: see :func:`comfynb.sweep.resume`."""
        return self._announce(_sweep.resume(self, sweep_id))

    def upload(self, image: Any) -> str:
        """Send an input image (PIL image, path or bytes) unless already sent; the name for a LoadImage input."""
        return _loop.run_sync(self._upload(image))

    async def aupload(self, image: Any) -> str:
        return await _loop.wrap(_loop.submit(self._upload(image)))

    async def _upload(self, image: Any) -> str:
        return (await _sweep.upload_everywhere(self, [image]))[id(image)]

    def history_frame(self, tag: str | None = None, sweep_id: str | None = None, limit: int | None = None):
        """The results frame rebuilt from the servers' history alone (works in a new process): every
        server that is up is read, and a prompt found on two (moved by failover) gives one row."""
        return _frames.history_frame(self, tag=tag, sweep_id=sweep_id, limit=limit)

    async def ahistory_frame(self, tag: str | None = None, sweep_id: str | None = None, limit: int | None = None):
        return await _frames.ahistory_frame(self, tag=tag, sweep_id=sweep_id, limit=limit)

    def _tags(self, tags: str | Mapping | None) -> dict | None:
        if tags is None:
            return None
        if isinstance(tags, str):
            tags = {"tag": tags}
        elif not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a string or a dict, not {type(tags).__name__}")
        try:
            text = json.dumps(dict(tags))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"tags must be JSON-serialisable: {exc}") from None
        if any(secret in text for secret in self._secrets):
            raise ValueError("tags contain a credential of this session; they are stored on the server in clear")
        return json.loads(text)

    def _settle_unsent(self, state: PromptState, error: BaseException) -> None:
        """Fail a job that no server took (none answers, or none can run it)."""
        state.posting = False
        _settle(state, ERROR, error=error)

    def _request_cancel(self, state: PromptState) -> None:
        _loop.get_loop().call_soon_threadsafe(self._cancel, state)

    def _cancel(self, state: PromptState) -> None:
        if state.done:
            return
        state.cancel_requested = True
        server = next((s for s in self._servers if s.url == state.server), None)
        if not state.sent:  # never left the client: drop it (whoever is about to send checks `done`)
            (server.settle if server else _settle)(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
        elif server is not None:
            server.spawn(server.cancel(state), state)

    # -- lifecycle --------------------------------------------------------------------------

    async def _ready(self) -> None:
        await asyncio.wrap_future(self._started)
        if not self._pool.up():
            raise self._servers[0].error
        for s in self._servers:
            if s.health != UP:
                log.warning("server %s is down for now (%s); it joins when it answers", s.url, s.error)

    async def _aclose(self) -> None:
        self._closed = True
        try:
            await asyncio.wrap_future(self._started)
        except Exception:  # a start that failed has nothing to close
            pass
        await self._pool.close()
        for s in self._servers:
            await s.close()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            state = job._state
            where = f"; it may still run on {state.server}" if state.sent else ""
            _settle(state, CANCELLED, error=Cancelled(f"the session was closed before job {state.prompt_id} ended{where}"))

    def close(self) -> None:
        """Close sockets and HTTP sessions (and the embedded simulator); unfinished jobs end as cancelled."""
        if not self._closed:
            _loop.run_sync(self._aclose())
        self._stop_simulator()

    async def aclose(self) -> None:
        if not self._closed:
            await _loop.wrap(_loop.submit(self._aclose()))
        if self._sim_context is not None:
            await asyncio.to_thread(self._stop_simulator)

    def _stop_simulator(self) -> None:
        context, self._sim_context = self._sim_context, None
        if context is not None:
            context.__exit__(None, None, None)

    def __enter__(self) -> Session:
        try:
            _loop.run_sync(self._ready())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Session:
        try:
            await _loop.wrap(_loop.submit(self._ready()))
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- looking at jobs --------------------------------------------------------------------

    @property
    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def job(self, prompt_id: str) -> Job:
        with self._lock:
            return self._jobs[prompt_id]

    def status(self):
        """A pandas DataFrame with one row per job of this session."""
        import pandas as pd

        now = time.time()
        health = {server.url: server.health for server in self._servers}
        rows = []
        for job in self.jobs:
            s = job._state
            p = s.progress
            rows.append({
                "prompt_id": s.prompt_id,
                "status": s.status,
                "server": s.server,
                "server_state": health.get(s.server),
                "age": now - s.submitted_at,
                "last_event": s.last_event,
                "since_event": None if s.last_event_at is None else now - s.last_event_at,
                "events": s.events,
                "attempts": s.attempts,
                "number": s.number,
                "nodes": f"{p.nodes_done}/{p.nodes_total}",
                "step": f"{p.value}/{p.max}" if p.max else "",
                "tags": s.tags,
                "error": None if s.error is None else f"{type(s.error).__name__}: {s.error}",
            })
        columns = ["prompt_id", "status", "server", "server_state", "age", "last_event", "since_event", "events",
                   "attempts", "number", "nodes", "step", "tags", "error"]
        return pd.DataFrame(rows, columns=columns)

    def servers(self):
        """A pandas DataFrame with one row per server: url, state (up/down), inflight (our prompts
        there now), queue_remaining (as it broadcasts), done, failed, weight, max_inflight, and for a
        down server how long it has been down and why."""
        return self._pool.frame()

    def check(self, prompt_id: str) -> dict:
        """Ask the server about one prompt now (and settle our job if it has ended); returns what it says."""
        return _loop.run_sync(self._check(prompt_id))

    async def acheck(self, prompt_id: str) -> dict:
        return await _loop.wrap(_loop.submit(self._check(prompt_id)))

    async def _check(self, prompt_id: str) -> dict:
        await asyncio.wrap_future(self._started)
        with self._lock:
            job = self._jobs.get(prompt_id)
        state = job._state if job else None
        servers = self._pool.up()
        if state is not None and state.server is not None:
            servers = [s for s in self._servers if s.url == state.server]
        report: dict = {"prompt_id": prompt_id, "local_status": state.status if state else None,
                        "server": None, "queue": None, "history": None, "job": None}
        for server in servers:
            report.update(await server.ask(prompt_id))
            if report["queue"] or report["history"] or report["job"]:
                break
        if state is not None and state.sent and not state.done and servers:
            server = servers[0]
            if report["queue"]:
                server.tracker.place(state, report["queue"])
            elif not state.posting:
                await server.finalize(state)
            report["local_status"] = state.status
        return report

    def __repr__(self) -> str:
        counts = collections.Counter(job.status for job in self.jobs)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
        urls = ", ".join(s.url + ("" if s.health == UP else f" ({s.health})") for s in self._servers)
        closed = " closed" if self._closed else ""
        return f"<Session {urls}{closed}: {summary}>"


class _Server:
    """One server as the session sees it: transport, socket, tracker, watchdog and reconciliation."""

    def __init__(self, session: Session, transport: Transport):
        self.session = session
        self.transport = transport
        self.url = transport.url
        self.tracker = Tracker(on_complete=self._on_complete)
        self.connection: Connection | None = None
        # dispatch and health, kept by comfynb.pool
        self.health = STARTING
        self.ever_up = False
        self.error: BaseException | None = None  # why it is (or was last) down
        self.down_since: float | None = None
        self.silent_since: float | None = None  # socket closed since (while up)
        self.probing = False
        self.load = 0  # unfinished jobs dispatched here
        self.weight = 1.0
        self.limit: int | None = None
        self.caps: Any = None  # pool.Capabilities, once read
        self.orphans: dict[str, PromptState] = {}  # jobs moved away while it was down
        self.done = self.failed = 0
        self.grace = min(_MAX_GRACE, session.reconcile_after)
        self._tasks: set[asyncio.Task] = set()
        self._reconciling = False
        self._reconcile_again = False
        self._check_socket = False
        self._last_reconcile = time.monotonic()
        self._retry_at: float | None = None  # a lookup failed: reconcile again at this time
        self._meta: Any = None  # the last history entry's `meta`, shared by equal ones

    async def start(self) -> None:
        """Probe the server (raises if it does not answer); connect the socket the first time,
        or hurry its reconnect when the server is back. Only the first probe retries: the pool
        probes a down server again with its own backoff."""
        await self.transport.system_stats(retry=self.connection is None)
        t = self.transport.timeouts
        if self.connection is not None:
            self.connection.wake()
            try:
                await asyncio.wait_for(self.connection.connected.wait(), t.connect)
            except TimeoutError:
                pass  # the pool's monitor notices if it stays closed
            return
        try:  # learn now whether the server has the jobs API (it tells unknown from queued)
            await self.transport.get_job(str(uuid.uuid4()))
        except (NotSupported, TransportError, Timeout):
            pass
        self.connection = Connection(
            self.transport,
            self.session.client_id,
            on_event=self._on_event,
            on_preview=self._on_preview,
            on_frame=self._on_frame,
            on_connect=self._on_connect,
            close_timeout=min(2.0, t.ws_heartbeat),
        )
        self.connection.start()
        self.spawn(self._watch())
        try:
            await asyncio.wait_for(self.connection.connected.wait(), t.connect)
        except TimeoutError:
            log.warning("no WebSocket to %s yet; jobs are tracked by polling until it connects", self.url)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()
        await self.transport.close()

    def spawn(self, coro, state: PromptState | None = None) -> None:
        """Run ``coro`` in the background; should it fail on a bug, ``state``'s job fails with it
        instead of waiting forever."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("internal error in comfynb (please report)", exc_info=task.exception())
                if state is not None:
                    self.settle(state, ERROR, error=task.exception())

        task.add_done_callback(done)

    def settle(self, state: PromptState, status: str, *, result: Result | None = None,
               error: BaseException | None = None) -> None:
        if _settle(state, status, result=result, error=error):
            if self.session.journal is not None:
                self.session.journal.on_settle(state)
            if self.tracker.running == state.prompt_id:
                self.tracker.running = None
            self.session._pool.settled(state)

    # -- socket callbacks (on the loop, must not block) ---------------------------------------

    def _on_event(self, event: Any) -> None:
        self.session.events.append((time.time(), self.url, event))
        self.tracker.feed(event)

    def _on_preview(self, preview: Any) -> None:
        self.session.events.append((time.time(), self.url, preview))
        self.tracker.feed_preview(preview)

    def _on_frame(self, frame: Any) -> None:
        self.session.events.append((time.time(), self.url, frame))

    def _on_connect(self) -> None:
        self.tracker.connected()
        if self.connection.connects > 1:
            log.info("reconnected to %s; reconciling unfinished jobs", self.url)
        self.request_reconcile()

    def _on_complete(self, state: PromptState) -> None:
        self.spawn(self.finalize(state), state)

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, state: PromptState) -> None:
        """POST the prompt (registered first, so no event can arrive for an unknown id)."""
        self.tracker.register(state)
        try:
            try:
                await asyncio.wait_for(self.connection.connected.wait(), self.transport.timeouts.connect)
            except TimeoutError:
                pass  # post anyway: reconciliation finds the job when the socket is back
            if state.done:  # cancelled while waiting
                return
            state.sent = True
            state.attempts += 1
            if self.session.journal is not None:
                self.session.journal.on_post(state, self.url)
            reply = await self._post(state)
        except ComfyError as exc:
            state.posting = False
            if state.completed:  # the reply was lost, yet our socket saw the prompt finish
                await self.finalize(state)
            elif isinstance(exc, ValidationError) or (
                    isinstance(exc, HTTPStatusError) and exc.status < 500 and exc.status != 429):
                self.settle(state, ERROR, error=exc)  # refused: it would be refused again
            else:  # unanswered: the server may have it, so it is not sent elsewhere yet
                self.session._pool.unreachable(self, exc)
            return
        finally:
            state.posting = False
        if state.done:  # meanwhile another server's copy gave the job its result
            await discard(self, state.prompt_id)
            return
        state.number = reply.get("number", state.number)
        state.node_errors = reply.get("node_errors") or {}
        if state.status == PENDING:
            state.status = QUEUED
        if state.cancel_requested:
            await self.cancel(state)
        elif state.completed:  # it ended before the reply came (a cached prompt is that fast)
            await self.finalize(state)

    async def _post(self, state: PromptState) -> dict:
        """POST /prompt; after a failure in transit, POST again only once the server is known
        not to have this prompt_id, so nothing ever runs twice because of us."""
        delay = self.session.backoff
        last: Exception | None = None
        for attempt in range(self.session.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
                try:
                    if await self._knows(state.prompt_id):
                        log.info("POST of %s failed in transit but the server has it", state.prompt_id)
                        return {}
                except (TransportError, Timeout) as exc:
                    last = exc
                    continue
            try:
                return await self.transport.post_prompt(state.body)
            except ValidationError:
                raise
            except HTTPStatusError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                last = exc
            except (TransportError, Timeout) as exc:
                last = exc
        raise last

    async def _knows(self, prompt_id: str) -> bool:
        if self.transport.jobs_api is not False:
            try:
                return await self.transport.get_job(prompt_id) is not None
            except NotSupported:
                pass
        # queue first: a prompt stays in the queue until its history is written
        running, pending = await self.transport.get_queue()
        if prompt_id in running or prompt_id in pending:
            return True
        return await self.transport.get_history(prompt_id) is not None

    # -- ending a job ---------------------------------------------------------------------------

    async def finalize(self, state: PromptState) -> None:
        """Settle a job that completed or left the queue, from what the server recorded."""
        if state.done or state.posting:  # a (re)submission in flight: its own completion follows
            return
        if state.finalizing:
            state.again = True
            return
        state.finalizing = True
        try:
            while True:
                state.again = False
                where, entry = await self._lookup(state)
                if where == _FINISHED:
                    self._finish(state, entry)
                elif where == _UNKNOWN:
                    self._lost(state)
                    break  # settled, or submitted again: what the old run said no longer counts
                else:
                    self.tracker.place(state, where)
                    if state.cancel_requested:  # a cancel that came while we looked
                        self.spawn(self.cancel(state), state)
                if state.done or not state.again:
                    break
        except (TransportError, Timeout) as exc:
            log.warning("could not read the outcome of %s from %s (%s); will retry", state.prompt_id, self.url, exc)
            self._retry_at = time.monotonic() + self.grace  # the watchdog reconciles then
        finally:
            state.finalizing = False

    async def _lookup(self, state: PromptState) -> tuple[str, dict | None]:
        """Where the prompt is: finished (with its history entry), queued, running or unknown.

        History first, retried with backoff while it is missing or a success lacks the outputs
        that `executed` messages announced; the jobs API settles doubts where the server has it.
        """
        pid = state.prompt_id
        delay = _HISTORY_BACKOFF
        entry = None
        for attempt in range(_HISTORY_READS):
            entry = await self.transport.get_history(pid)
            if _complete(entry, state):
                return _FINISHED, entry
            last = attempt == _HISTORY_READS - 1
            if self.transport.jobs_api is not False and (last or not state.completed):
                try:
                    job = await self.transport.get_job(pid)
                except NotSupported:
                    job = None
                if self.transport.jobs_api:
                    if job is None:
                        if entry is None and not state.completed:
                            return _UNKNOWN, None
                        break
                    status = job.get("status")
                    if status == "pending":
                        return QUEUED, None
                    if status == "in_progress":
                        return RUNNING, None
                    entry = entry if _outcome_of(entry) else _entry_from_job(job)
                    if _complete(entry, state):
                        return _FINISHED, entry
            if not last:
                await asyncio.sleep(delay)
                delay *= 2
        if _outcome_of(entry):  # a success whose outputs never showed: take them from the events
            return _FINISHED, {**entry, "outputs": {**state.outputs, **(entry.get("outputs") or {})}}
        if state.completed and state.outcome is not None and (state.outputs or state.outcome != SUCCESS):
            return _FINISHED, _entry_from_events(state)  # finished, then forgotten (restart)
        return _UNKNOWN, None

    def _share_echo(self, entry: dict, body: dict | None) -> dict:
        """Point a history entry at equal objects we already hold: the graph nodes and tags we sent
        (a sweep shares unchanged nodes between its prompts), the previous entry's ``meta``, and
        interned strings, so thousands of finished jobs do not hold thousands of copies."""
        entry = _interned(entry)
        prompt = entry.get("prompt")
        if isinstance(prompt, list) and len(prompt) > 3 and body:
            graph, extra = prompt[2], prompt[3]
            ours = body.get("prompt") or {}
            if isinstance(graph, dict):
                for nid, node in graph.items():
                    if ours.get(nid) == node:
                        graph[nid] = ours[nid]
            tags = (body.get("extra_data") or {}).get("comfynb")
            if isinstance(extra, dict) and tags is not None and extra.get("comfynb") == tags:
                extra["comfynb"] = tags
        if entry.get("meta") == self._meta:
            entry["meta"] = self._meta
        else:
            self._meta = entry.get("meta")
        return entry

    def _finish(self, state: PromptState, entry: dict) -> None:
        state.history = entry = self._share_echo(entry, state.body)
        result = Result.from_history(state.prompt_id, entry, server=self.url, fetcher=self.transport.view)
        if result.status == SUCCESS:
            self.settle(state, SUCCESS, result=result)
            return
        data = _message(entry, "execution_interrupted")
        if result.status == INTERRUPTED:
            error = Interrupted(
                f"prompt {state.prompt_id} was interrupted at node {data.get('node_id')} ({data.get('node_type')})",
                prompt_id=state.prompt_id,
                node_id=data.get("node_id"),
            )
            self.settle(state, INTERRUPTED, error=error)
            return
        data = _message(entry, "execution_error")
        error = ExecutionError(
            prompt_id=state.prompt_id,
            node_id=data.get("node_id"),
            node_type=data.get("node_type"),
            exception_type=str(data.get("exception_type") or "unknown"),
            exception_message=str(data.get("exception_message") or "the server recorded an error without details"),
            traceback=data.get("traceback"),
            raw=data,
        )
        self.settle(state, ERROR, error=error)

    def _lost(self, state: PromptState) -> None:
        """The server does not know the prompt (restart, eviction, or our own queue delete)."""
        if state.cancel_requested:
            self.settle(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
        elif self.session.resubmit_lost and state.attempts < self.session.max_attempts:
            reason = f"{self.url} no longer knows prompt {state.prompt_id} (restarted?)"
            if not self.session._pool.resubmit(state, self, reason=reason, orphan=False):
                log.info("prompt %s was sent again by another process; following it", state.prompt_id)
                state.attempts += 1
                self.tracker.place(state, QUEUED)
        else:
            policy = "resubmit_lost is off" if not self.session.resubmit_lost else "no attempts left"
            self.settle(state, LOST, error=JobLost(
                f"{self.url} no longer knows prompt {state.prompt_id} (server restarted?) after "
                f"{state.attempts} submission(s); {policy}"))

    async def cancel(self, state: PromptState) -> None:
        """Queued: delete it from the server's queue. Running: interrupt it by prompt_id."""
        if state.done or state.posting or state.finalizing:
            return  # whoever holds the job looks at cancel_requested when done
        pid = state.prompt_id
        try:
            if state.status != RUNNING:
                await self.transport.delete_queued([pid])
            running, pending = await self._queue()
            if pid in pending:
                await self.transport.delete_queued([pid])
            elif pid in running:
                await self.transport.interrupt(pid)  # it ends through its own final events
                return
            await self.finalize(state)  # deleted (-> cancelled) or it had already ended
        except (TransportError, Timeout) as exc:
            log.warning("could not cancel %s on %s: %s", pid, self.url, exc)

    # -- reconciliation ---------------------------------------------------------------------------

    def request_reconcile(self, *, check_socket: bool = False) -> None:
        self._check_socket |= check_socket
        if self._reconciling:
            self._reconcile_again = True
        else:
            self._reconciling = True
            self.spawn(self._reconcile())

    async def _reconcile(self) -> None:
        try:
            again = True
            while again:
                self._reconcile_again = False
                check_socket, self._check_socket = self._check_socket, False
                try:
                    await self._reconcile_once(check_socket)
                except (TransportError, Timeout) as exc:
                    log.warning("reconciliation with %s failed: %s", self.url, exc)
                again = self._reconcile_again
        finally:
            self._reconciling = False

    async def _reconcile_once(self, check_socket: bool) -> None:
        """ONE /queue call places every job; only jobs that left the queue are looked up."""
        self.tracker.shrink_at = self._retry_at = None
        self._last_reconcile = time.monotonic()
        jobs = [s for s in self.tracker.unfinished() if s.sent and not s.posting and not s.finalizing]
        if not jobs:
            return
        log.debug("reconciling %d job(s) with %s", len(jobs), self.url)
        heard = self.tracker.queue_remaining
        running_ids, pending_ids = await self._queue()
        left = []
        for state in jobs:
            if state.prompt_id in running_ids:
                self.tracker.place(state, RUNNING)
            elif state.prompt_id in pending_ids:
                self.tracker.place(state, QUEUED)
            else:
                left.append(state)
        if left:
            log.info("%d job(s) left the queue of %s without a final message; looking them up", len(left), self.url)
        missed = any(not s.completed and not s.cancel_requested for s in left)
        if check_socket and (missed or (heard is not None and heard != len(running_ids) + len(pending_ids))):
            self.connection.replace("it stayed silent while the server's queue changed")
        for state in left:
            self.spawn(self.finalize(state), state)

    async def _watch(self) -> None:
        """Reconcile after an unexplained queue shrink or a failed lookup, or when the socket is
        silent while jobs wait."""
        tick = self.grace / 2
        while True:
            await asyncio.sleep(tick)
            if not self.load or self.health != UP:
                continue
            now = time.monotonic()
            shrink, retry = self.tracker.shrink_at, self._retry_at
            if (shrink is not None and now - shrink >= self.grace) or (retry is not None and now >= retry):
                self.request_reconcile()
            elif (now - self.connection.last_message >= self.session.reconcile_after
                  and now - self._last_reconcile >= self.session.reconcile_after):
                self.request_reconcile(check_socket=True)

    async def _queue(self) -> tuple[set[str], set[str]]:
        """Running and pending prompt ids in ONE call: ``/api/jobs`` (ids only) where the server
        has it, else ``/queue`` (which carries every queued graph too)."""
        if not self.transport.jobs_api:
            running, pending = await self.transport.get_queue()
            return set(running), set(pending)
        data = await self.transport.request_json("GET", "/api/jobs", params={"status": "in_progress,pending"})
        try:
            listed = [(job["id"], job["status"]) for job in data["jobs"]]
        except (KeyError, TypeError):
            raise ProtocolError(f"{self.url} answered /api/jobs without a job list", url=self.url) from None
        return ({pid for pid, status in listed if status == "in_progress"},
                {pid for pid, status in listed if status == "pending"})

    async def ask(self, prompt_id: str) -> dict:
        """What this server says about a prompt: queue position, history status, jobs API record."""
        running, pending = await self._queue()
        queue = RUNNING if prompt_id in running else QUEUED if prompt_id in pending else None
        entry = await self.transport.get_history(prompt_id)
        job = None
        if self.transport.jobs_api is not False:
            try:
                job = await self.transport.get_job(prompt_id)
            except NotSupported:
                pass
        history = (entry.get("status") or {}).get("status_str") if entry else None
        return {"server": self.url, "queue": queue, "history": history, "job": job}


# -- helpers ------------------------------------------------------------------------------------


def _settle(state: PromptState, status: str, *, result: Result | None = None,
            error: BaseException | None = None) -> bool:
    """End a job once; later calls are ignored (False)."""
    if state.done:
        return False
    state.status = status
    state.error = error
    state.finished_at = time.time()
    state.release()
    if error is None:
        state.future.set_result(result)
    else:
        state.future.set_exception(error)
    return True


def _interned(value: Any) -> Any:
    """JSON data with interned strings: the keys and words every history entry repeats
    ("prompt_id", "timestamp", "output"...) are then held once, not once per entry."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value


def _outcome_of(entry: dict | None) -> bool:
    """Whether a history entry records how the prompt ended."""
    if not entry:
        return False
    status = entry.get("status") or {}
    if status.get("status_str") in (SUCCESS, ERROR):
        return True
    return any(m[0] in _OUTCOME_MESSAGES.values() for m in status.get("messages") or () if m)


def _complete(entry: dict | None, state: PromptState) -> bool:
    """Ended, and not a success missing the outputs our socket saw being produced."""
    if not _outcome_of(entry):
        return False
    return entry.get("outputs") or not state.outputs or (entry.get("status") or {}).get("status_str") != SUCCESS


def _message(entry: dict, name: str) -> dict:
    for message in (entry.get("status") or {}).get("messages") or ():
        if message and message[0] == name and isinstance(message[1], dict):
            return message[1]
    return {}


def _entry_from_job(job: dict) -> dict:
    """A history-shaped entry from an ``/api/jobs/{id}`` record."""
    workflow = job.get("workflow") or {}
    status = job.get("execution_status")
    if not status:
        ok = job.get("status") == "completed"
        messages = [] if ok else [["execution_error", job.get("execution_error") or {}]]
        status = {"status_str": SUCCESS if ok else ERROR, "completed": ok, "messages": messages}
    prompt = [job.get("priority"), job.get("id"), workflow.get("prompt") or {}, workflow.get("extra_data") or {}, []]
    return {"prompt": prompt, "outputs": job.get("outputs") or {}, "status": status, "meta": {}}


def _entry_from_events(state: PromptState) -> dict:
    """The history our socket witnessed, for a prompt the server finished and then forgot."""
    body = state.body
    ok = state.outcome == SUCCESS
    status = {
        "status_str": SUCCESS if ok else ERROR,
        "completed": ok,
        "messages": [[_OUTCOME_MESSAGES[state.outcome], state.outcome_data or {}]],
    }
    prompt = [state.number, state.prompt_id, body["prompt"], body["extra_data"], list(state.outputs)]
    return {"prompt": prompt, "outputs": dict(state.outputs), "status": status, "meta": {}}


def _secrets(urls: list[str], headers: dict | None, auth: tuple[str, str] | None, token: str | None) -> list[str]:
    """Credential values that must never be sent in clear as tags."""
    values = [str(v) for v in (headers or {}).values()]
    values += [token or "", auth[1] if auth else ""]
    values += [yarl.URL(u if "://" in u else "http://" + u).password or "" for u in urls]
    return [v for v in values if len(v) >= 4]
