"""One ComfyUI server as a session sees it: transport, WebSocket, tracker, watchdog, reconciliation.

The socket is trusted for speed, never for correctness: a job ends only when its history (or the
jobs API) says how, or, if the server is gone, when our socket witnessed the whole ending. Whenever
the socket may have missed something (reconnect, a sign that one of ours ended unseen, silence)
the server is asked directly, with one ``/queue`` call for all jobs and a per-job lookup only for
those that left the queue.

A :class:`Server` knows nothing above it. It gets its policy as a :class:`~comfynb.settings.Settings`
value and reports facts to a :class:`Listener` (the pool): how a job ended, that the server forgot a
job, that it does not answer. It never decides where a job goes next. All of this runs on the
private loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from typing import Any, Protocol

from . import chaining, wsoutputs
from .connection import Connection
from .errors import (
    ComfyError,
    ExecutionError,
    HTTPStatusError,
    Interrupted,
    ProtocolError,
    Refused,
    ServerUnavailable,
    Timeout,
    TransportError,
    ValidationError,
)
from .history import check_entry, entry_problem
from .reads import HistoryReads
from .results import Result
from .settings import Settings
from .tracker import (
    ERROR,
    INTERRUPTED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCESS,
    PromptState,
    Tracker,
)
from .transport import NotSupported, Transport, retry_delay

# The session logged all of this before the server had a module of its own: users filter on it.
log = logging.getLogger("comfynb.session")

STARTING, UP, DOWN = "starting", "up", "down"  # health, kept by the pool: a DOWN server is sent no POST

_HISTORY_READS = 8  # /history/{id} reads before asking the jobs API (0.01 s .. 0.64 s apart)
_HISTORY_BACKOFF = 0.01  # a read that raced the write is retried almost at once
_RETRY_AFTER = 0.5  # a failed lookup is tried again this much later (the watchdog ticks at half of it)
_UNKNOWN = "unknown"
_FINISHED = "finished"
_OUTCOME_MESSAGES = {SUCCESS: "execution_success", ERROR: "execution_error", INTERRUPTED: "execution_interrupted"}
_POST_SETTLE_MIN, _POST_SETTLE_MAX = 0.5, 5.0  # how long an unanswered POST may still be handled


class Listener(Protocol):
    """What a server reports upward. The listener alone decides a job's fate (see :mod:`comfynb.jobs`)."""

    def heard(self, server: Server, item: Any) -> None:
        """Every event, preview and binary frame the socket delivered (for the session's event buffer)."""

    def posting(self, server: Server, state: PromptState) -> None:
        """A POST of ``state`` is about to leave the client (the journal records it first)."""

    def ended(
        self,
        server: Server,
        state: PromptState,
        status: str,
        *,
        result: Result | None = None,
        error: BaseException | None = None,
    ) -> None:
        """How a job held by this server ended: from its history, or from what our socket saw."""

    def forgotten(self, server: Server, state: PromptState) -> None:
        """The server does not know a prompt it was given (restarted, evicted, or deleted by us)."""

    def unreachable(self, server: Server, error: BaseException) -> None:
        """A POST got no answer: the server may still have the prompt."""


class Server:
    """One server: transport, socket, tracker, watchdog and reconciliation (see the module docstring)."""

    def __init__(self, transport: Transport, client_id: str, settings: Settings, listener: Listener):
        self.transport = transport
        # history entries of finished prompts, read together when many are
        self.reads = HistoryReads(transport, on_entry=self._entry_seen)
        self.client_id = client_id
        self.settings = settings
        self.listener = listener
        self.url = transport.url
        self.tracker = Tracker(on_complete=self._on_complete, on_sign=self._on_sign)
        self.connection: Connection | None = None
        # dispatch and health, kept by the pool
        self.health = STARTING
        self.ever_up = False
        self.error: BaseException | None = None  # why it is (or was last) down
        self.down_since: float | None = None
        self.silent_since: float | None = None  # socket closed since (while up)
        self.probing = False
        self.load = 0  # unfinished jobs dispatched here
        self.weight = 1.0
        self.limit: int | None = None
        self.caps: Any = None  # capabilities.Capabilities, once read
        self.orphans: dict[str, PromptState] = {}  # jobs moved away while it was down
        self.done = self.failed = 0
        self.retry_after = min(_RETRY_AFTER, settings.reconcile_after) or _RETRY_AFTER
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._reconciling = False
        self._reconcile_again = False
        self._check_socket = False
        self._last_reconcile = time.monotonic()
        self._retry_at: float | None = None  # a lookup failed: reconcile again at this time
        self._sign: asyncio.TimerHandle | None = None  # a pending quick check after a sign
        self._signs: set[tuple[PromptState, int] | None] = set()  # the jobs (and runs) signs were about
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
            self.client_id,
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
        self._closed = True  # from now on nothing new starts (the socket's events spawn work)
        if self._sign is not None:
            self._sign.cancel()
        if self.connection is not None:
            await self.connection.close()
        for task in list(self._tasks):
            task.cancel()
        self.reads.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()

    def spawn(self, coro, state: PromptState | None = None) -> None:
        """Run ``coro`` in the background; should it fail on a bug, ``state``'s job fails with it
        instead of waiting forever. Once the server is closed, nothing is started."""
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("internal error in comfynb (please report)", exc_info=task.exception())
                if state is not None:
                    self.end(state, ERROR, error=task.exception())

        task.add_done_callback(done)

    def end(
        self, state: PromptState, status: str, *, result: Result | None = None, error: BaseException | None = None
    ) -> None:
        """Report how a job ended; the listener settles it (once)."""
        if self.tracker.running == state.prompt_id:
            self.tracker.running = None
        self.listener.ended(self, state, status, result=result, error=error)

    # -- socket callbacks (on the loop, must not block) ---------------------------------------

    def _on_event(self, event: Any) -> None:
        self.listener.heard(self, event)
        self.tracker.feed(event)

    def _on_preview(self, preview: Any) -> None:
        self.listener.heard(self, preview)
        self.tracker.feed_preview(preview)

    def _on_frame(self, frame: Any) -> None:
        self.listener.heard(self, frame)

    def _on_connect(self) -> None:
        self.tracker.connected()
        if self.connection is not None and self.connection.connects > 1:
            log.info("reconnected to %s; reconciling unfinished jobs", self.url)
        self.request_reconcile()

    def _on_complete(self, state: PromptState) -> None:
        self.spawn(self.finalize(state), state)

    def _on_sign(self, state: PromptState | None) -> None:
        """One of ours probably ended without its final message: ask the server unless that
        message arrives within ``sign_delay`` (it normally follows at once)."""
        self._signs.add(None if state is None else (state, state.attempts))
        if self._sign is None and not self._closed:
            self._sign = asyncio.get_running_loop().call_later(self.settings.sign_delay, self._signed)

    def _signed(self) -> None:
        self._sign = None
        signs, self._signs = self._signs, set()
        look_up = []
        for sign in signs:
            if sign is None:  # the queue emptied: every job of ours there must have ended
                if any(s.accepted and not s.completed and not s.posting for s in self.tracker.unfinished()):
                    self.request_reconcile()
                    return
                continue
            state, attempts = sign
            # about the same run still (a rerun under the same prompt_id would find the old history)
            if (
                state.attempts == attempts
                and not (state.completed or state.done or state.posting)
                and self.holds(state)
            ):
                look_up.append(state)
        for state in look_up:
            if self.transport.jobs_api:  # it tells running from unknown: ask about this one job alone
                self.spawn(self.finalize(state), state)
            else:  # /history alone cannot: place it through the queue first
                self.request_reconcile()
                return

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, state: PromptState) -> None:
        """POST the prompt (registered first, so no event can arrive for an unknown id)."""
        self.tracker.register(state)
        try:
            try:
                if self.connection is not None:
                    await asyncio.wait_for(self.connection.connected.wait(), self.transport.timeouts.connect)
            except TimeoutError:
                pass  # post anyway: reconciliation finds the job when the socket is back
            if state.done:  # cancelled while waiting
                return
            if not await chaining.localize(self, state):  # files of other servers' outputs copied here
                return
            reply = await self._post(state)
        except ComfyError as exc:
            state.posting = False
            if state.completed:  # the reply was lost, yet our socket saw the prompt finish
                await self.finalize(state)
            elif isinstance(exc, (ValidationError, Refused)) or (
                isinstance(exc, HTTPStatusError) and exc.status < 500 and exc.status != 429
            ):
                self.end(state, ERROR, error=exc)  # refused: it would be refused again
            else:  # unanswered (the server may have it, so it stays here), or never sent (marked down first)
                if state.sent:
                    state.post_error = exc
                self.listener.unreachable(self, exc)
            return
        finally:
            state.posting = False
        state.accepted = True
        if state.done:  # meanwhile another server's copy gave the job its result
            await self.remove([state.prompt_id])
            return
        state.post_error = None
        state.number = reply.get("number", state.number)
        state.node_errors = reply.get("node_errors") or {}
        if state.status == PENDING:
            state.status = QUEUED
        if state.cancel_requested:
            await self.cancel(state)
        elif state.completed:  # it ended before the reply came (a cached prompt is that fast)
            await self.finalize(state)

    async def _post(self, state: PromptState) -> dict:
        """POST /prompt so that the prompt runs once, whatever is lost on the way.

        Nothing is posted to a server marked down (a late retry would land a copy there that
        failover has already sent elsewhere). After a POST went unanswered, the server is asked
        whether it has the prompt_id (queue, jobs API, history), and asked again once it has had
        time to finish handling the first POST, before the next one; if a second copy appears in
        the queue anyway, it is deleted.
        """
        last: Exception | None = None
        unanswered = 0.0  # how long the last POST went without an answer (0: it was answered)
        if self.health == DOWN:
            raise ServerUnavailable(f"{self.url} was marked down before the prompt was sent", url=self.url)
        state.sent = True
        state.attempts += 1
        self.listener.posting(self, state)
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(retry_delay(attempt, self.settings.backoff))
                try:
                    known = await self._knows(state.prompt_id)
                    if not known and unanswered:
                        # the first POST may still be in the server's hands (validating a big graph)
                        await asyncio.sleep(min(_POST_SETTLE_MAX, max(_POST_SETTLE_MIN, 2 * unanswered)))
                        known = await self._knows(state.prompt_id)
                except (TransportError, Timeout) as exc:
                    last = exc
                    continue
                if known:
                    log.info("POST of %s went unanswered but the server has it", state.prompt_id)
                    return {}
                if self.health == DOWN and last is not None:  # marked down meanwhile: no late copy lands there
                    raise last
            started = time.monotonic()
            try:
                reply = await self.transport.post_prompt(state.body or {})
            except ValidationError:
                raise
            except HTTPStatusError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                last, unanswered = exc, 0.0
            except (TransportError, Timeout) as exc:
                last, unanswered = exc, time.monotonic() - started
            else:
                self._follow(state, reply)
                if attempt:
                    await self._drop_duplicate(state.prompt_id)
                return reply
        assert last is not None
        raise last

    def _follow(self, state: PromptState, reply: dict) -> None:
        """A server that ignores our prompt_id (older than client-chosen ids) gave its own: the job
        follows that id (it is never POSTed again for this one); events under it are ours from now."""
        theirs = str(reply.get("prompt_id"))
        if theirs == state.prompt_id:
            return
        log.warning(
            "%s ignored our prompt_id %s and named the prompt %s; following its id",
            self.url,
            state.prompt_id,
            theirs,
            extra={"prompt_id": state.prompt_id, "server": self.url},
        )
        self.tracker.forget(state.prompt_id)
        state.prompt_id = theirs
        if state.body is not None:
            state.body["prompt_id"] = theirs
        self.tracker.register(state)
        self.request_reconcile()  # what it said under the new id before we knew it was lost

    async def _drop_duplicate(self, prompt_id: str) -> None:
        """After a repeated POST: if both copies made it into the queue, delete one."""
        try:
            running, pending = await self.transport.get_queue()
            copies = running.count(prompt_id) + pending.count(prompt_id)
            if copies > 1 and prompt_id in pending:
                log.warning("%s holds two copies of %s; deleting one", self.url, prompt_id)
                await self.transport.delete_queued([prompt_id])  # removes one pending copy
        except (TransportError, Timeout) as exc:
            log.warning("could not check %s for a second copy of %s: %s", self.url, prompt_id, exc)

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

    def _entry_seen(self, prompt_id: str, entry: Any) -> None:
        """A window read brought the history entry of a prompt of ours nobody asked about yet (its
        final message was lost, or is on its way): it ended, and its record is in hand. Settle it
        now: a restart a moment later would make the server forget it ran, and it would be sent
        again."""
        state = self.tracker.jobs.get(prompt_id)
        if state is None or state.done or state.posting or state.finalizing or not state.accepted:
            return
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(prompt, list) or not prompt or prompt[0] != state.number:
            return  # not this run's (a prompt_id sent again), or a record we cannot place
        if entry_problem(entry) is None and _complete(entry, state):
            self._finish(state, entry)

    def holds(self, state: PromptState) -> bool:
        """Whether this server follows the job (not moved elsewhere since)."""
        return self.tracker.jobs.get(state.prompt_id) is state

    async def finalize(self, state: PromptState) -> None:
        """Settle a job that completed or left the queue, from what the server recorded."""
        if state.done or state.posting or not self.holds(state):  # posting: its own completion follows
            return
        if state.finalizing:
            state.again = True
            return
        state.finalizing = True
        try:
            while True:
                state.again = False
                where, entry = await self._lookup(state)
                state.unread_since = None
                if state.done or not self.holds(state):  # ended or moved while we looked
                    break
                if where == _FINISHED and entry is not None:
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
            if _witnessed(state) and not isinstance(exc, HTTPStatusError):
                # the server went away (restart, crash), but our socket saw the whole ending
                log.info(
                    "could not read the history of %s from %s (%s); settling it from the events seen",
                    state.prompt_id,
                    self.url,
                    exc,
                    extra={"prompt_id": state.prompt_id, "server": self.url},
                )
                self._finish(state, _entry_from_events(state))
                return
            now = time.monotonic()
            state.unread_since = state.unread_since or now
            give_up = self.settings.give_up_after
            if give_up is not None and now - state.unread_since >= give_up:
                self.end(
                    state,
                    ERROR,
                    error=TransportError(
                        f"could not read the outcome of prompt {state.prompt_id} from {self.url} for {give_up:g} s "
                        f"({exc}); it may still have finished there: session.check() or history_frame() can tell "
                        "once the server answers",
                        url=self.url,
                    ),
                )
                return
            log.warning(
                "could not read the outcome of %s from %s (%s); will retry",
                state.prompt_id,
                self.url,
                exc,
                extra={"prompt_id": state.prompt_id, "server": self.url},
            )
            self._retry_at = now + self.retry_after  # the watchdog reconciles then
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
            entry = await self.reads.get(pid)
            if entry_problem(entry) is not None:  # malformed: outcome() ends the job with a ProtocolError
                return _FINISHED, entry
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
                    if entry_problem(entry) is not None or _complete(entry, state):
                        return _FINISHED, entry
            if not last:
                await asyncio.sleep(delay)
                delay *= 2
        if entry is not None and _outcome_of(entry):  # a success whose outputs never showed: take them from the events
            return _FINISHED, {**entry, "outputs": {**state.outputs, **(entry.get("outputs") or {})}}
        if _witnessed(state):
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
        status, result, error = self.outcome(state, entry)
        self.end(state, status, result=result, error=error)

    def outcome(self, state: PromptState, entry: dict) -> tuple[str, Result | None, BaseException | None]:
        """How a history entry says the prompt ended: (status, result or None, error or None)."""
        problem = entry_problem(entry, self.url, state.prompt_id)
        if problem is not None:  # the server's record has an impossible shape: this job ends with it
            return ERROR, None, problem
        state.history = entry = self._share_echo(entry, state.body)
        result = Result.from_history(state.prompt_id, entry, server=self.url, fetcher=self.transport.view)
        result = wsoutputs.attach(result, state, self.url)
        if result.status == SUCCESS:
            return SUCCESS, result, None
        if result.status == INTERRUPTED:
            data = _message(entry, "execution_interrupted")
            error: BaseException = Interrupted(
                f"prompt {state.prompt_id} was interrupted at node {data.get('node_id')} ({data.get('node_type')})",
                prompt_id=state.prompt_id,
                node_id=data.get("node_id"),
            )
            return INTERRUPTED, None, error
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
        return ERROR, None, error

    def _lost(self, state: PromptState) -> None:
        """The server does not know the prompt (restart, eviction, or our own queue delete)."""
        self.listener.forgotten(self, state)

    async def cancel(self, state: PromptState) -> None:
        """Queued: delete it from the server's queue. Running: interrupt it by prompt_id."""
        if state.done or state.posting or state.finalizing:
            return  # whoever holds the job looks at cancel_requested when done
        pid = state.prompt_id
        try:
            if state.status != RUNNING:
                await self.transport.delete_queued([pid])
            running, pending = await self.queue()
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
        self._retry_at = None
        self._last_reconcile = time.monotonic()
        jobs = [s for s in self.tracker.unfinished() if s.sent and not s.posting and not s.finalizing]
        if not jobs:
            return
        log.debug("reconciling %d job(s) with %s (check_socket=%s)", len(jobs), self.url, check_socket)
        heard = self.tracker.queue_remaining
        running_ids, pending_ids = await self.queue()
        jobs = [s for s in jobs if self.holds(s) and not s.done and not s.posting]  # some may have moved meanwhile
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
        changed = missed or (heard is not None and heard != len(running_ids) + len(pending_ids))
        if check_socket and changed and self.connection is not None:
            self.connection.replace("it stayed silent while the server's queue changed")
        for state in left:
            self.spawn(self.finalize(state), state)

    async def _watch(self) -> None:
        """Reconcile after a failed lookup, or when nothing was heard of our jobs for a while (the
        last resort: a socket kept busy by other clients' broadcasts can still have lost all of
        ours); the socket is replaced if it was silent and missed something."""
        tick = self.retry_after / 2
        while True:
            await asyncio.sleep(tick)
            if not self.load or self.health != UP:
                continue
            now = time.monotonic()
            if self._retry_at is not None and now >= self._retry_at:
                self.request_reconcile()
            elif (
                now - self.tracker.heard_at >= self.settings.reconcile_after
                and now - self._last_reconcile >= self.settings.reconcile_after
            ):
                heard = self.connection.last_message if self.connection is not None else now
                self.request_reconcile(check_socket=now - heard >= self.settings.reconcile_after)

    async def remove(self, prompt_ids: list[str]) -> None:
        """Remove copies we no longer want: delete them if queued, interrupt the one running."""
        try:
            await self.transport.delete_queued(prompt_ids)
            running, _ = await self.queue()
            for pid in running.intersection(prompt_ids):
                await self.transport.interrupt(pid)
        except (TransportError, Timeout) as exc:
            log.warning("could not remove %d prompt(s) of ours from %s: %s", len(prompt_ids), self.url, exc)

    async def queue(self) -> tuple[set[str], set[str]]:
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
        return (
            {pid for pid, status in listed if status == "in_progress"},
            {pid for pid, status in listed if status == "pending"},
        )

    async def ask(self, prompt_id: str) -> dict:
        """What this server says about a prompt: queue position, history status, jobs API record."""
        running, pending = await self.queue()
        queue = RUNNING if prompt_id in running else QUEUED if prompt_id in pending else None
        entry = await self.transport.get_history(prompt_id)
        job = None
        if self.transport.jobs_api is not False:
            try:
                job = await self.transport.get_job(prompt_id)
            except NotSupported:
                pass
        history = (
            (entry.get("status") or {}).get("status_str")
            if entry is not None and check_entry(entry, self.url, prompt_id)
            else None
        )
        return {"server": self.url, "queue": queue, "history": history, "job": job}


# -- helpers ------------------------------------------------------------------------------------


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


def _witnessed(state: PromptState) -> bool:
    """Our socket saw the prompt end and how (a success with the outputs it produced)."""
    return state.completed and state.outcome is not None and bool(state.outputs or state.outcome != SUCCESS)


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
    if entry is None or not _outcome_of(entry):
        return False
    return entry.get("outputs") or not state.outputs or (entry.get("status") or {}).get("status_str") != SUCCESS


def _message(entry: dict, name: str) -> dict:
    for message in (entry.get("status") or {}).get("messages") or ():
        if message and message[0] == name and isinstance(message[1], dict):
            return message[1]
    return {}


def _entry_from_job(job: dict) -> dict:
    """A history-shaped entry from an ``/api/jobs/{id}`` record."""
    given = job.get("workflow")
    workflow: dict = given if isinstance(given, dict) else {}
    status = job.get("execution_status")
    if not status:
        ok = job.get("status") == "completed"
        messages = [] if ok else [["execution_error", job.get("execution_error") or {}]]
        status = {"status_str": SUCCESS if ok else ERROR, "completed": ok, "messages": messages}
    prompt: list = [
        job.get("priority"),
        job.get("id"),
        workflow.get("prompt") or {},
        workflow.get("extra_data") or {},
        [],
    ]
    return {"prompt": prompt, "outputs": job.get("outputs") or {}, "status": status, "meta": {}}


def _entry_from_events(state: PromptState) -> dict:
    """The history our socket witnessed, for a prompt the server finished and then forgot."""
    body = state.body or {"prompt": {}, "extra_data": {}}
    ok = state.outcome == SUCCESS
    status = {
        "status_str": SUCCESS if ok else ERROR,
        "completed": ok,
        "messages": [[_OUTCOME_MESSAGES[state.outcome or ERROR], state.outcome_data or {}]],
    }
    prompt = [state.number, state.prompt_id, body["prompt"], body["extra_data"], list(state.outputs)]
    return {"prompt": prompt, "outputs": dict(state.outputs), "status": status, "meta": {}}
