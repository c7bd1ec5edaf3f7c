"""Session: submit prompts to ComfyUI servers and get every result back, exactly once.

A Session owns one :class:`comfynb.server.Server` per URL (transport, WebSocket, tracker,
watchdog, reconciliation), all on the private loop; :mod:`comfynb.pool` decides which server
takes each prompt and moves jobs off a server that is down. The session itself holds the jobs,
the public API (submit, sweeps, status, check, close) and the bridge to the caller's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import os
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
from .errors import Cancelled, ComfyError
from .jobs import Job
from .journal import Journal
from .pool import Pool
from .server import DOWN, UP, Server, settle_once
from .tracker import CANCELLED, ERROR, PromptState
from .transport import Timeouts, Transport
from .workflow import Workflow

log = logging.getLogger(__name__)

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
    ``failover_after`` s down its jobs run elsewhere (see :mod:`comfynb.pool`). Jobs that nowhere
    else can take end as ``lost`` once their server has been down for ``give_up_after`` s, and so
    do jobs waiting client-side when every server has (None: wait for a server however long).

    ``resubmit_lost``: a prompt the server forgot (restart) is submitted again, up to
    ``max_attempts`` submissions in all, else it ends as ``lost``. ``reconcile_after``: seconds
    without a message about our unfinished jobs (a silent socket, or one busy with other clients'
    broadcasts only) before the server is asked directly.
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
        give_up_after: float | None = 300.0,
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
            Server(
                self,
                Transport(
                    u,
                    headers=headers,
                    auth=auth,
                    token=token,
                    timeout=timeout,
                    retries=retries,
                    backoff=backoff,
                    verify_ssl=verify_ssl,
                ),
            )
            for u in urls
        ]
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pool = Pool(
            self,
            self._servers,
            weights=weights,
            max_inflight=max_inflight,
            capabilities=capabilities,
            down_after=down_after,
            failover_after=failover_after,
            give_up_after=give_up_after,
        )
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
        self._add(job)
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
        self._add(job)
        return job

    def _add(self, job: Job) -> None:
        """Record a new job, unless the session closed meanwhile (close ends the jobs it finds here)."""
        with self._lock:
            if self._closed:
                raise ComfyError("this session is closed")
            self._jobs[job.prompt_id] = job

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

    def _adopt(
        self,
        prompt_id: str,
        *,
        server: str,
        prompt: dict | None,
        tags: dict | None,
        attempts: int,
        entry: dict | None = None,
        status: str | None = None,
    ) -> Job:
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

    def sweep(
        self,
        workflow: Any,
        *,
        grid: Mapping | None = None,
        zip: Mapping | None = None,
        rows: Iterable[Mapping] | None = None,
        concurrency: int | None = None,
        tag: str | None = None,
        seeds: int | Iterable[int] | None = None,
    ) -> _sweep.Sweep:
        """One prompt per row of a grid, of aligned lists (``zip``) or of explicit ``rows``, at most
        ``concurrency`` on the servers at once (default: 8, or enough to fill every server's
        ``max_inflight``); ``await sweep`` (or ``sweep.result()``) for the frame.

        Addresses are checked before anything is sent. ``seeds=n`` adds a seed axis (the
        workflow's seed, +1, ...), or give a list. Images as values are uploaded once each.
        """
        if concurrency is None:
            concurrency = self._pool.concurrency()
        return self._announce(
            _sweep.start(self, workflow, grid=grid, zip=zip, rows=rows, concurrency=concurrency, tag=tag, seeds=seeds)
        )

    def resume(self, sweep_id: str) -> _sweep.Sweep:
        """Finish a sweep recorded in this session's journal: see :func:`comfynb.sweep.resume`."""
        return self._announce(_sweep.resume(self, sweep_id))

    def upload(self, image: Any) -> str:
        """Send an input image (PIL image, path or bytes) unless already sent; the name for a LoadImage input."""
        return _loop.run_sync(self._upload(image))

    async def aupload(self, image: Any) -> str:
        return await _loop.run_async(self._upload(image))

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

    def _settle_unsent(self, state: PromptState, error: BaseException, status: str = ERROR) -> None:
        """Fail a job that no server took (none answers, or none can run it)."""
        state.posting = False
        settle_once(state, status, error=error)

    def _request_cancel(self, state: PromptState) -> None:
        _loop.get_loop().call_soon_threadsafe(self._cancel, state)

    def _cancel(self, state: PromptState) -> None:
        if state.done:
            return
        state.cancel_requested = True
        server = next((s for s in self._servers if s.url == state.server), None)
        if not state.sent:  # not on a server: drop it (whoever is about to send checks `done`)
            error = Cancelled(f"job {state.prompt_id} was cancelled")
            if server is not None:
                server.settle(state, CANCELLED, error=error)
            elif settle_once(state, CANCELLED, error=error) and self.journal is not None:
                self.journal.on_settle(state)  # it may have been sent before (moved off a down server)
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
        with self._lock:
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
            settle_once(
                state, CANCELLED, error=Cancelled(f"the session was closed before job {state.prompt_id} ended{where}")
            )

    def close(self) -> None:
        """Close sockets and HTTP sessions (and the embedded simulator); unfinished jobs end as cancelled."""
        if not self._closed:
            _loop.run_sync(self._aclose())
        self._stop_simulator()

    async def aclose(self) -> None:
        if not self._closed:
            await _loop.run_async(self._aclose())
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
            await _loop.run_async(self._ready())
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
            rows.append(
                {
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
                }
            )
        columns = [
            "prompt_id",
            "status",
            "server",
            "server_state",
            "age",
            "last_event",
            "since_event",
            "events",
            "attempts",
            "number",
            "nodes",
            "step",
            "tags",
            "error",
        ]
        return pd.DataFrame(rows, columns=columns)

    def down_servers(self) -> list[str]:
        """URLs of the servers marked down right now; cheap enough for a progress view to ask often."""
        return [s.url for s in self._servers if s.health == DOWN]

    def servers(self):
        """A pandas DataFrame with one row per server: url, state (up/down), inflight (our prompts
        there now), queue_remaining (as it broadcasts), done, failed, weight, max_inflight, and for a
        down server how long it has been down and why."""
        return self._pool.frame()

    def check(self, prompt_id: str) -> dict:
        """Ask the server about one prompt now (and settle our job if it has ended); returns what it says."""
        return _loop.run_sync(self._check(prompt_id))

    async def acheck(self, prompt_id: str) -> dict:
        return await _loop.run_async(self._check(prompt_id))

    async def _check(self, prompt_id: str) -> dict:
        await asyncio.wrap_future(self._started)
        with self._lock:
            job = self._jobs.get(prompt_id)
        state = job._state if job else None
        servers = self._pool.up()
        if state is not None and state.server is not None:
            servers = [s for s in self._servers if s.url == state.server]
        report: dict = {
            "prompt_id": prompt_id,
            "local_status": state.status if state else None,
            "server": None,
            "queue": None,
            "history": None,
            "job": None,
        }
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


# -- helpers ------------------------------------------------------------------------------------


_CREDENTIAL_HEADERS = ("auth", "cookie", "key", "token", "secret", "password", "session")


def _secrets(urls: list[str], headers: dict | None, auth: tuple[str, str] | None, token: str | None) -> list[str]:
    """Credential values that must never be sent in clear as tags: the token, passwords, and the
    values of headers whose name says they carry one (other headers, like ``X-Mode: true``, do not)."""
    values = [str(v) for k, v in (headers or {}).items() if any(w in str(k).lower() for w in _CREDENTIAL_HEADERS)]
    values += [token or "", auth[1] if auth else ""]
    values += [yarl.URL(u if "://" in u else "http://" + u).password or "" for u in urls]
    return [v for v in values if len(v) >= 4]
