"""One ComfyUI server as a session sees it: transport, WebSocket, tracker, watchdog, reconciliation.

The socket is trusted for speed, never for correctness: a job ends only when its history (or the
jobs API) says how, and whenever the socket may have missed something (reconnect, silence, a queue
that shrank without a completion) the server is asked directly, with one ``/queue`` call for all
jobs and a per-job lookup only for those that left the queue. Which server takes a prompt, and
moving jobs off a server that is down, is :mod:`comfynb.pool`'s business; it calls back into the
:class:`Server` through ``session._pool``. All of this runs on the private loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

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
from .transport import NotSupported, Transport

if TYPE_CHECKING:
    from .session import Session

# The session logged all of this before the server had a module of its own: users filter on it.
log = logging.getLogger("comfynb.session")

STARTING, UP, DOWN = "starting", "up", "down"  # health, kept by comfynb.pool

_HISTORY_READS = 6  # /history/{id} reads before asking the jobs API (0.05 s .. 0.8 s apart)
_HISTORY_BACKOFF = 0.05
_MAX_GRACE = 0.5  # how long a final `executing` may lag behind the `status` that precedes it
_UNKNOWN = "unknown"
_FINISHED = "finished"
_OUTCOME_MESSAGES = {SUCCESS: "execution_success", ERROR: "execution_error", INTERRUPTED: "execution_interrupted"}


class Server:
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
        self.caps: Any = None  # capabilities.Capabilities, once read
        self.orphans: dict[str, PromptState] = {}  # jobs moved away while it was down
        self.done = self.failed = 0
        self.grace = min(_MAX_GRACE, session.reconcile_after)
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
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
        self._closed = True  # from now on nothing new starts (the socket's events spawn work)
        if self.connection is not None:
            await self.connection.close()
        for task in list(self._tasks):
            task.cancel()
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
                    self.settle(state, ERROR, error=task.exception())

        task.add_done_callback(done)

    def settle(
        self, state: PromptState, status: str, *, result: Result | None = None, error: BaseException | None = None
    ) -> None:
        if settle_once(state, status, result=result, error=error):
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
                isinstance(exc, HTTPStatusError) and exc.status < 500 and exc.status != 429
            ):
                self.settle(state, ERROR, error=exc)  # refused: it would be refused again
            else:  # unanswered: the server may have it, so it is not sent elsewhere yet
                state.post_error = exc
                self.session._pool.unreachable(self, exc)
            return
        finally:
            state.posting = False
        if state.done:  # meanwhile another server's copy gave the job its result
            await discard(self, state.prompt_id)
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
            now = time.monotonic()
            state.unread_since = state.unread_since or now
            give_up = self.session._pool.give_up_after
            if give_up is not None and now - state.unread_since >= give_up:
                self.settle(
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
            log.warning("could not read the outcome of %s from %s (%s); will retry", state.prompt_id, self.url, exc)
            self._retry_at = now + self.grace  # the watchdog reconciles then
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
            why = (
                "its last POST went unanswered: " + str(state.post_error)
                if state.post_error is not None
                else "server restarted?"
            )
            self.settle(
                state,
                LOST,
                error=JobLost(
                    f"{self.url} no longer knows prompt {state.prompt_id} ({why}) after "
                    f"{state.attempts} submission(s); {policy}"
                ),
            )

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
        if check_socket and (missed or (heard is not None and heard != len(running_ids) + len(pending_ids))):
            self.connection.replace("it stayed silent while the server's queue changed")
        for state in left:
            self.spawn(self.finalize(state), state)

    async def _watch(self) -> None:
        """Reconcile after an unexplained queue shrink or a failed lookup, or when nothing was
        heard of our jobs for a while (a socket kept busy by other clients' broadcasts can still
        have lost all of ours); the socket is replaced if it was silent and missed something."""
        tick = self.grace / 2
        while True:
            await asyncio.sleep(tick)
            if not self.load or self.health != UP:
                continue
            now = time.monotonic()
            shrink, retry = self.tracker.shrink_at, self._retry_at
            if (shrink is not None and now - shrink >= self.grace) or (retry is not None and now >= retry):
                self.request_reconcile()
            elif (
                now - self.tracker.heard_at >= self.session.reconcile_after
                and now - self._last_reconcile >= self.session.reconcile_after
            ):
                self.request_reconcile(check_socket=now - self.connection.last_message >= self.session.reconcile_after)

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
        return (
            {pid for pid, status in listed if status == "in_progress"},
            {pid for pid, status in listed if status == "pending"},
        )

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


def settle_once(
    state: PromptState, status: str, *, result: Result | None = None, error: BaseException | None = None
) -> bool:
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


async def discard(server: Server, prompt_id: str) -> None:
    """Remove a copy we no longer want from a server: delete it if queued, interrupt it if running."""
    try:
        await server.transport.delete_queued([prompt_id])
        running, _ = await server._queue()
        if prompt_id in running:
            await server.transport.interrupt(prompt_id)
    except (TransportError, Timeout) as exc:
        log.warning("could not remove the extra copy of %s from %s: %s", prompt_id, server.url, exc)
