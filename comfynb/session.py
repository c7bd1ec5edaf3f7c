"""Session: submit prompts to ComfyUI servers and get every result back, exactly once.

Layers, top to bottom (imports point down; events flow up through named listener interfaces):
the Session holds the jobs, the public API (submit, sweeps, status, check, close) and the bridge
to the caller's thread; its :class:`~comfynb.pool.Pool` dispatches, watches health, moves jobs off
a server that is down and alone settles every job; each :class:`~comfynb.server.Server` follows one
ComfyUI (transport, WebSocket, tracker, reconciliation) and reports facts to the pool. The session
hands its policy down as one :class:`~comfynb.settings.Settings` value, and hears back through
:class:`_Record` (event buffer and journal). Everything below the session runs on the private loop.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from . import _loop
from . import cloud as _cloud
from . import frames as _frames
from . import sweep as _sweep
from . import uploads as _uploads
from . import wsoutputs as _wsoutputs
from .burst import Burst
from .embedded import extra_pnginfo
from .errors import Cancelled, ComfyError
from .jobs import Job
from .journal import Journal
from .pool import Pool
from .results import FileRef, InputName
from .secrets import Secrets, check_tags
from .server import DOWN, UP
from .settings import Settings
from .tracker import CANCELLED, ERROR, PromptState
from .transport import Limits, Timeouts, Transport
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
    broadcasts only) before the server is asked directly. ``on_missing_outputs``: when the socket
    dropped while a SaveImageWebsocket node ran (its images exist nowhere else), ``"rerun"`` the
    prompt (within ``max_attempts``), ``"raise"`` :class:`~comfynb.errors.OutputsMissing`, or
    ``"keep"`` the result with ``result.missing`` naming the nodes in doubt.
    ``progress``: "auto" shows live progress (widgets in a Jupyter kernel, else a text line on
    stderr), "widget" or "text" force one, False shows nothing.
    ``journal`` (a SQLite path) records every submission, so ``resume(sweep_id)`` can finish a sweep
    after a crash or a server restart. ``limits`` bounds the size of each kind of answer
    (:class:`comfynb.transport.Limits`), ``timeout`` the time and the minimum rate (:class:`Timeouts`).
    Construction does not block; ``with``/``async with`` wait until the servers answer.

    Comfy Cloud (:mod:`comfynb.cloud`): ``https://cloud.comfy.org`` or a URL marked
    ``cn.Cloud(url, max_jobs=)`` is a cloud backend, authenticated with ``api_key`` (or
    ``COMFY_CLOUD_API_KEY``); in a session with local servers the cloud only takes the overflow
    (``burst_after``, ``max_cloud_jobs`` per sweep: :mod:`comfynb.burst`). ``api_key_comfy_org``
    (or ``COMFY_API_KEY``) is sent in each POST's ``extra_data`` for partner (API) nodes. A POST
    refused as busy (HTTP 429) is sent again until ``max_queue_wait`` s have passed (None: forever),
    then its job ends with :class:`~comfynb.errors.QueueFull`; a refusal for the account (unpaid
    plan, no credits) ends it at once with :class:`~comfynb.errors.PaymentRequired`.
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
        on_missing_outputs: str = "rerun",
        limits: Limits = Limits(),
        api_key: str | None = None,
        api_key_comfy_org: str | None = None,
        burst_after: int = 0,
        max_cloud_jobs: int | None = None,
        max_queue_wait: float | None = 3600.0,
    ):
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("Session needs at least one server URL")
        self.client_id = uuid.uuid4().hex
        if progress not in _PROGRESS:
            raise ValueError(f"progress must be 'auto', 'widget', 'text' or False, not {progress!r}")
        self.progress = progress
        if on_missing_outputs not in _wsoutputs.POLICIES:
            raise ValueError(f"on_missing_outputs must be one of {_wsoutputs.POLICIES}, not {on_missing_outputs!r}")
        self.settings = Settings(
            retries=max(0, retries),
            backoff=backoff,
            resubmit_lost=resubmit_lost,
            max_attempts=max(1, max_attempts),
            reconcile_after=reconcile_after,
            down_after=down_after,
            failover_after=failover_after,
            give_up_after=give_up_after,
            on_missing_outputs=on_missing_outputs,
            max_queue_wait=max_queue_wait,
        )
        self.events: collections.deque = collections.deque(maxlen=max_events)
        self.simulator: Any = None  # set by Session.simulated(): the first simulator
        self.simulators: list = []
        self.journal = Journal(journal) if isinstance(journal, (str, os.PathLike)) else journal
        self._uploads: dict = {}  # (server, content-addressed name) -> name on the server
        self._sweeps: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._live_sweeps: set[_sweep.Sweep] = set()  # sweeps with rows not ended: held whatever the caller does
        self._sim_context: Any = None
        profiles = [_cloud.profile_of(u) for u in urls]  # Comfy Cloud backends: see comfynb.cloud
        cloud_key, partner_key = _cloud.keys(profiles, api_key, api_key_comfy_org)
        self._secrets = Secrets.of(urls, headers=headers, auth=auth, token=token, api_keys=[cloud_key, partner_key])
        transports = [
            Transport(
                u,
                headers=_cloud.headers_for(p, headers, cloud_key),
                auth=auth,
                token=token,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                verify_ssl=verify_ssl,
                limits=limits,
                profile=p,
                partner_key=partner_key,
                max_queue_wait=self.settings.max_queue_wait,
            )
            for u, p in zip(urls, profiles)
        ]
        # prompt_id -> its Job while unfinished; once finished, a weak reference to it (see _release)
        self._jobs: dict[str, Job | weakref.ref[Job]] = {}
        self._gone: collections.deque[str] = collections.deque()  # ids of finished jobs let go
        self._lock = threading.Lock()
        self._closed = False
        self._record = _Record(self.events, self.journal)
        self._pool = Pool(
            transports,
            self.client_id,
            self.settings,
            self._record,
            weights=weights,
            max_inflight=_cloud.inflight(urls, profiles, max_inflight),
            capabilities=capabilities,
        )
        self._servers = self._pool.servers
        self._pool.burst = self._burst = Burst(burst_after, max_cloud_jobs, held=self._held_rows)
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
            if sims[0].cloud is not None:  # Simulator(cloud=True): a Comfy Cloud backend with its key
                session_options.setdefault("api_key", sims[0].cloud.api_key)
            session = cls([_cloud.simulated_url(sim) for sim in sims], **session_options)
        except BaseException:
            stack.close()
            raise
        session.simulator, session.simulators, session._sim_context = sims[0], sims, stack
        _simulated.add(session)
        return session

    # -- submitting -----------------------------------------------------------------------

    def submit(self, workflow: Any, *, tags: str | Mapping | None = None, front: bool = False) -> Job:
        """Queue a workflow (a Workflow, an API-format dict, JSON text or a path); returns at once.

        ``tags`` (a string or a JSON-able dict) travel with the prompt in
        ``extra_data["comfynb"]``, so results can be found in the server's history later.
        """
        if self._closed:
            raise ComfyError("this session is closed")
        wf = workflow if isinstance(workflow, Workflow) else Workflow.load(workflow)
        prompt = wf.to_api()
        prompt_id = str(uuid.uuid4())
        tag_dict = self._tags(tags)
        state = PromptState(prompt_id, self._body(prompt, prompt_id, tag_dict, front, wf.ui_workflow()), tag_dict)
        state.posting = True  # from now until the server accepted it (or it was dropped)
        job = Job(state, self._request_cancel)
        self._add(job)
        _loop.submit(self._pool.enqueue(state, front))
        return self._announce(job)

    def _announce(self, item: Any) -> Any:
        for hook in submit_hooks:
            hook(self, item)
        return item

    def _body(
        self, prompt: dict, prompt_id: str, tags: dict | None, front: bool = False, ui: dict | None = None
    ) -> dict:
        """The POST /prompt body: our client_id, our prompt_id, tags in ``extra_data["comfynb"]``; the UI
        workflow and the tags in ``extra_pnginfo``, so every output file carries them."""
        extra = {"comfynb": tags} if tags is not None else {}
        extra.update(extra_pnginfo(tags, ui))
        body: dict[str, Any] = {
            "prompt": prompt,
            "client_id": self.client_id,
            "prompt_id": prompt_id,
            "extra_data": extra,
        }
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
            while self._gone:  # finished jobs let go since the last one was added
                prompt_id = self._gone.popleft()
                held = self._jobs.get(prompt_id)
                if isinstance(held, weakref.ref) and held() is None:
                    del self._jobs[prompt_id]
        job._state.future.add_done_callback(functools.partial(self._release, job.prompt_id))

    def _release(self, prompt_id: str, _: object = None) -> None:
        """A finished job stays in ``session.jobs`` while anything else holds it (a variable, a
        sweep, a progress view), then the session lets it go, as dask's Client does with futures:
        a long-lived kernel running sweep after sweep keeps the memory of what it keeps, not of
        everything it ever ran. What was let go is still in the servers' history and the journal
        (``history_frame``, ``resume``)."""
        with self._lock:
            job = self._jobs.get(prompt_id)
            if isinstance(job, Job):
                # the callback may run in any thread, amid anything (the cyclic GC): it only notes the id
                self._jobs[prompt_id] = weakref.ref(job, lambda _: self._gone.append(prompt_id))

    def _job(self, prompt_id: str) -> Job | None:
        with self._lock:
            held = self._jobs.get(prompt_id)
        return held() if isinstance(held, weakref.ref) else held

    def _send_held(self, job: Job, prompt: dict, tags: Mapping, ui: dict | None = None) -> None:
        """Send a held job (on the loop). ``prompt`` is an API-format graph the caller checked; it is
        not copied, so a sweep can share the nodes its prompts have in common."""
        state = job._state
        if state.done:
            return
        state.tags = self._tags(tags)
        state.body = self._body(prompt, state.prompt_id, state.tags, ui=ui)
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
        ui: dict | None = None,
    ) -> Job:
        """A job for a prompt sent earlier, maybe by another process (on the loop; used by resume).

        With ``entry`` or a final ``status`` it ends at once, as recorded. Otherwise the server is
        asked: the job is collected from history, followed while queued or running, or sent again
        (same prompt_id) if the server lost it.
        """
        job = self._job(prompt_id)
        if job is not None:
            return job
        state = PromptState(prompt_id, None if prompt is None else self._body(prompt, prompt_id, tags, ui=ui), tags)
        state.attempts = attempts
        job = Job(state, self._request_cancel)
        self._pool.adopt(state, server, entry=entry, status=status)
        self._add(job)
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
        max_rows: int | None = _sweep.MAX_ROWS,
        check: bool = True,
    ) -> _sweep.Sweep:
        """One prompt per row of a grid, of aligned lists (``zip``) or of explicit ``rows``, at most
        ``concurrency`` on the servers at once (default: 8, or enough to fill every server's
        ``max_inflight``); ``await sweep`` (or ``sweep.result()``) for the frame.

        Addresses are checked before anything is sent, and with ``check`` every row's values against
        the server's ``/object_info`` (one error lists all bad rows). ``seeds=n`` adds a seed axis (the
        workflow's seed, +1, ...), or give a list. Images as values are uploaded once each.
        Rows are built as they are sent; more than ``max_rows`` (None: no limit) is refused.
        """
        if concurrency is None:
            concurrency = self._pool.concurrency()
        return self._announce(
            _sweep.start(
                self,
                workflow,
                grid=grid,
                zip=zip,
                rows=rows,
                concurrency=concurrency,
                tag=tag,
                seeds=seeds,
                max_rows=max_rows,
                check=check,
            )
        )

    def _held_rows(self) -> int:
        """Sweep rows not released to the pool yet: they wait client-side too (for bursting)."""
        return sum(max(0, sweep._remaining - len(sweep._flying)) for sweep in list(self._sweeps.values()))

    def resume(self, sweep_id: str) -> _sweep.Sweep:
        """Finish a sweep recorded in this session's journal: see :func:`comfynb.sweep.resume`."""
        return self._announce(_sweep.resume(self, sweep_id))

    def upload(self, file: Any) -> str:
        """Send an input file to every server unless already sent; the name for a loader input.

        ``file``: a PIL image, a path (images, videos, audio: its extension is kept), bytes (images,
        or video/audio recognised by their first bytes), or an output ``FileRef`` of an earlier job.
        """
        return _loop.run_sync(self._upload(file))

    async def aupload(self, file: Any) -> str:
        return await _loop.run_async(self._upload(file))

    async def _upload(self, file: Any) -> str:
        return (await _sweep.upload_everywhere(self, [file]))[id(file)]

    def upload_mask(self, mask: Any, original: Any) -> str:
        """Paint ``mask`` onto ``original`` through ``/upload/mask``; the name for a LoadImage input
        whose MASK output is then the mask.

        ``mask``: an ``L`` image or 2-D array (white / 1.0 = masked), an RGBA image (its alpha, as in
        ComfyUI's mask editor: transparent = masked), or a path or PNG bytes of one. ``original``:
        an output ``FileRef`` (sent to its server) or a name returned by :meth:`upload` (sent to
        every server, which all hold it).
        """
        return _loop.run_sync(self._upload_mask(mask, original))

    async def aupload_mask(self, mask: Any, original: Any) -> str:
        return await _loop.run_async(self._upload_mask(mask, original))

    async def _upload_mask(self, mask: Any, original: Any) -> str:
        await self._ready()
        data, ref = _uploads.mask_payload(mask), _uploads.original_ref(original)
        holder = getattr(original, "server", None)
        servers = [s for s in self._pool.up() if holder is None or s.url == holder]
        if not servers:
            raise ComfyError(f"the server holding {ref['filename']} ({holder}) is not up in this session")
        names = [await _uploads.upload_mask(s.transport, data, ref) for s in servers]
        if holder is None:
            return names[0]
        # only the holder has it: a name that routes jobs there (or is copied to where they run)
        sub, _, filename = names[0].rpartition("/")
        copy = FileRef(filename, sub, "input", "", holder, servers[0].transport.view)
        return InputName(names[0], server=holder, ref=copy)

    def history_frame(self, tag: str | None = None, sweep_id: str | None = None, limit: int | None = None):
        """The results frame rebuilt from the servers' history alone (works in a new process): every
        server that is up is read, and a prompt found on two (moved by failover) gives one row."""
        return _loop.run_sync(self._history_frame(tag=tag, sweep_id=sweep_id, limit=limit))

    async def ahistory_frame(self, tag: str | None = None, sweep_id: str | None = None, limit: int | None = None):
        return await _loop.run_async(self._history_frame(tag=tag, sweep_id=sweep_id, limit=limit))

    async def _history_frame(self, **query: Any):
        await asyncio.wrap_future(self._started)
        up = []
        for server in self._servers:
            if server.health == UP:
                up.append(server.transport)
            else:
                log.warning("history_frame: %s is down, its history is not included", server.url)
        if not up:
            raise self._servers[0].error or ComfyError("no server answers")
        prefer = {job.prompt_id: job.server for job in self.jobs if job.done()}
        return await _frames.collect_history(up, journal=self.journal, prefer=prefer, **query)

    def _tags(self, tags: str | Mapping | None) -> dict | None:
        return check_tags(tags, self._secrets)  # TagError if not JSON or holding a credential

    def _settle_unsent(self, state: PromptState, error: BaseException, status: str = ERROR) -> None:
        """End a job that no server took (a sweep whose sending failed); from any thread."""
        _loop.get_loop().call_soon_threadsafe(self._pool.drop, state, error, status)

    def _request_cancel(self, state: PromptState) -> None:
        _loop.get_loop().call_soon_threadsafe(self._pool.cancel, state)

    # -- lifecycle --------------------------------------------------------------------------

    async def _ready(self) -> None:
        await asyncio.wrap_future(self._started)
        if not self._pool.up():
            raise self._servers[0].error or ComfyError("no server answers")
        for s in self._servers:
            if s.health != UP:
                log.warning("server %s is down for now (%s); it joins when it answers", s.url, s.error)

    async def _aclose(self, cancel: bool) -> None:
        with self._lock:
            self._closed = True
        try:
            await asyncio.wrap_future(self._started)
        except Exception:  # a start that failed has nothing to close
            pass

        def error_for(state: PromptState) -> Cancelled:
            where = ""
            if state.sent:
                where = f"; it was stopped on {state.server}" if cancel else f"; it may still run on {state.server}"
            return Cancelled(f"the session was closed before job {state.prompt_id} ended{where}")

        if cancel:
            await self._pool.end_all(error_for)
        else:  # they may still run: the journal keeps them open, for resume to follow
            self._record.journal = None
        await self._pool.close()
        for job in self.jobs:  # held by a sweep, or left unfinished with cancel=False
            self._pool.drop(job._state, error_for(job._state), CANCELLED)

    def close(self, cancel: bool = True) -> None:
        """Close sockets and HTTP sessions (and the embedded simulator); unfinished jobs end as cancelled.

        ``cancel`` (default): our prompts still queued on a server are deleted there and the one
        running is interrupted, since nobody would collect their results. ``cancel=False`` leaves
        them running; ``history_frame`` or ``resume`` (with a journal) collect them later.
        """
        if not self._closed:
            _loop.run_sync(self._aclose(cancel))
        self._stop_simulator()

    async def aclose(self, cancel: bool = True) -> None:
        if not self._closed:
            await _loop.run_async(self._aclose(cancel))
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
        """This session's unfinished jobs, and its finished ones still held somewhere (a variable, a
        sweep, a view), in submission order; finished jobs nothing holds are let go (see the
        servers' history, ``history_frame``)."""
        with self._lock:
            held = list(self._jobs.values())
        jobs = (job() if isinstance(job, weakref.ref) else job for job in held)
        return [job for job in jobs if job is not None]

    def job(self, prompt_id: str) -> Job:
        job = self._job(prompt_id)
        if job is None:
            raise KeyError(
                f"no job {prompt_id!r} in this session (never submitted here, or finished and no longer held: "
                "session.history_frame() or session.check() read it from the server)"
            )
        return job

    def status(self):
        """A pandas DataFrame with one row per job in :attr:`jobs` (unfinished, or still held)."""
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
        job = self._job(prompt_id)
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


_simulated: weakref.WeakSet[Session] = weakref.WeakSet()


@atexit.register
def _stop_simulators() -> None:
    """Simulators of sessions left open stop at exit while threads still run: one stopped later,
    when its session is collected during interpreter teardown, would wait for a frozen thread."""
    for session in list(_simulated):
        session._stop_simulator()


class _Record:
    """The pool's listener: the session's event buffer and its journal, nothing more."""

    def __init__(self, events: collections.deque, journal: Journal | None):
        self.events = events
        self.journal = journal

    def heard(self, url: str, item: Any) -> None:
        self.events.append((time.time(), url, item))

    def posting(self, state: PromptState, url: str) -> None:
        if self.journal is not None:
            self.journal.on_post(state, url)

    def settled(self, state: PromptState) -> None:
        if self.journal is not None:
            self.journal.on_settle(state)

    def may_resubmit(self, state: PromptState) -> bool:
        return self.journal is None or self.journal.may_resubmit(state)
