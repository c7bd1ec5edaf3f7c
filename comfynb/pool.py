"""Several servers behind one Session: dispatch, health, failover.

Dispatch
    Prompts wait here, client-side, until a server has room: a server takes at most
    ``max_inflight`` of our prompts at once (2 each by default when there are several servers, so
    the next prompt is already queued when one ends; unlimited for a single server). A prompt goes
    to the server with the least outstanding work per unit of ``weight``: ``max(ours in flight
    there, its broadcast queue_remaining)``, since the server's count already includes our queued
    prompts and ours includes the ones it has not counted yet. So a slow server never holds a
    backlog a fast one could have taken. With capability routing (``/object_info``: node classes,
    and the model files each loader offers) a prompt only goes to servers that have what it uses;
    one that no server can run fails at once with :class:`~comfynb.errors.CapabilityError`.

Health
    A server is ``down`` when its start-up probe or a POST failed, or when its WebSocket stayed
    closed for ``down_after`` seconds and ``/system_stats`` does not answer either. A down server
    gets no new prompts and is probed with backoff; it rejoins (``up``) once it answers, after
    its capabilities are read again and the prompts moved away from it are cleaned up there.

Failover: every job keeps exactly one result
    While a server is down its jobs stay assigned to it: a short outage (a restart, a network
    blip) is handled by the normal reconciliation when it is back. Only once it has been down
    for ``failover_after`` seconds, and another server that can run the job is up, is a job moved:
    it is forgotten by the old server's tracker (its events are ignored from then on), recorded
    there as an *orphan*, and queued here again (same prompt_id, one more attempt, bounded by
    ``max_attempts`` so a prompt that kills every server it reaches ends as ``lost``). Whatever
    the old server still holds is dealt with when it rejoins, before it gets new work:

    - orphans still in its queue are deleted, and running ones interrupted: the copy the job
      follows now is the one elsewhere;
    - an orphan it finished with success while the job has no result yet gives the job that
      result (``job.server`` is the server it really ran on), and the other copy is deleted or
      interrupted wherever it is (a copy still being POSTed is removed when its reply arrives);
    - an orphan it finished after the job already ended elsewhere is left in its history:
      ``history_frame`` keeps one row per prompt_id, the session's own attribution first, then
      a success, then the earliest finish.

    A server down for ``give_up_after`` seconds ends the jobs it still holds (none could go
    elsewhere) as ``lost``, and its copies are dropped like orphans' if it comes back; jobs waiting
    client-side end the same way once every server has been down that long. So every job ends.

    A job ends once (the first settlement wins), so it can never get two results; what cannot be
    prevented is that a server cut off from us but still working runs a moved prompt during the
    outage. Once it is back, nothing of ours runs there twice. The journal follows a moved job to
    its new server, so ``resume`` looks for it there.

All of this runs on comfynb's private loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .capabilities import read_capabilities
from .errors import (
    Cancelled,
    CapabilityError,
    ComfyError,
    JobLost,
)
from .server import DOWN, UP, Server, discard
from .tracker import CANCELLED, ERROR, INTERRUPTED, LOST, SUCCESS, PromptState
from .transport import _split_url

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

AUTO_INFLIGHT = 2  # per server when there are several: one running, one queued behind it
_MAX_PROBE_DELAY = 5.0
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".pkl")


# -- options ---------------------------------------------------------------------------------------


def per_server(value: Any, urls: list[str], name: str, default: Any) -> list:
    """One value per server from a scalar, a list in URL order, or a dict by URL; ``"auto"``
    (and servers a dict leaves out) get ``default``."""
    if isinstance(value, Mapping):
        by_url = {_split_url(str(k))[0]: v for k, v in value.items()}
        unknown = set(by_url) - set(urls)
        if unknown:
            raise ValueError(f"{name} names {', '.join(sorted(unknown))}, which is not a server of this session")
        values = [by_url.get(u, "auto") for u in urls]
    elif value is None or isinstance(value, (int, float, str)):
        values = [value] * len(urls)
    else:
        values = list(value)
        if len(values) != len(urls):
            raise ValueError(f"{name} has {len(values)} values for {len(urls)} servers")
    return [default if isinstance(v, str) and v == "auto" else v for v in values]


# -- the pool --------------------------------------------------------------------------------------


class Pool:
    """Dispatch, health and failover for a session's servers (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        servers: list[Server],
        *,
        weights: Any = None,
        max_inflight: Any = "auto",
        capabilities: bool | None = None,
        down_after: float = 5.0,
        failover_after: float = 30.0,
        give_up_after: float | None = 300.0,
    ):
        urls = [s.url for s in servers]
        if len(set(urls)) != len(urls):
            raise ValueError("the same server URL is given twice")
        several = len(servers) > 1
        limits = per_server(max_inflight, urls, "max_inflight", AUTO_INFLIGHT if several else None)
        weights = per_server("auto" if weights is None else weights, urls, "weights", 1.0)
        for server, weight, limit in zip(servers, weights, limits):
            if not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"weights must be positive numbers, got {weight!r} for {server.url}")
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError(
                    f"max_inflight must be a whole number >= 1, None (no limit) or 'auto', "
                    f"got {limit!r} for {server.url}"
                )
            server.weight = float(weight)
            server.limit = limit
        self.session = session
        self.servers = servers
        self.route = several if capabilities is None else bool(capabilities)
        self.down_after = down_after
        self.failover_after = failover_after
        self.give_up_after = give_up_after
        self.pending: collections.deque[PromptState] = collections.deque()
        self.assigned: dict[str, Server] = {}  # prompt_id -> the server holding its live copy
        self._routes: dict[str, tuple[int, Any]] = {}  # prompt_id -> (generation, servers able | error)
        self._generation = 0  # bumped when a server's capabilities change
        self._started = False
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every server once; the monitor then watches them and probes those that are down."""
        await asyncio.gather(*(self._bring_up(s) for s in self.servers))
        self._started = True
        self._spawn(self._monitor())
        self.pump()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def up(self) -> list[Server]:
        return [s for s in self.servers if s.health == UP]

    def concurrency(self) -> int:
        """A sweep's default concurrency: enough to fill every server's in-flight limit, at least 8."""
        if any(s.limit is None for s in self.servers):
            return 8
        return max(8, sum(s.limit for s in self.servers))

    # -- dispatch ------------------------------------------------------------------------------------

    async def enqueue(self, state: PromptState, front: bool = False) -> None:
        """Hold a job client-side until a server has room (``front``: before the others)."""
        if front:
            self.pending.appendleft(state)
        else:
            self.pending.append(state)
        self.pump()

    def pump(self) -> None:
        """Send waiting jobs, in order, to the least loaded server with room that can run each."""
        if not self._started or not self.pending or self.session._closed:
            return
        if not any(s.ever_up for s in self.servers):  # none has ever answered: fail rather than wait
            error = self.servers[0].error
            while self.pending:
                self.session._settle_unsent(self.pending.popleft(), error)
            return
        if self._gone():
            while self.pending:
                state = self.pending.popleft()
                self._routes.pop(state.prompt_id, None)
                self.session._settle_unsent(
                    state,
                    JobLost(
                        f"every server has been down for {self.give_up_after:g} s ({_down(self.servers)}), so "
                        f"prompt {state.prompt_id} was given up"
                    ),
                    status=LOST,
                )
            return
        free = [s for s in self.up() if s.limit is None or s.load < s.limit]
        skipped = []
        while free and self.pending:
            state = self.pending.popleft()
            if state.done:  # cancelled while it waited
                self._routes.pop(state.prompt_id, None)
                continue
            able = self._able(state)
            if isinstance(able, CapabilityError):
                self._routes.pop(state.prompt_id, None)
                self.session._settle_unsent(state, able)
                continue
            choices = [s for s in free if s in able]
            if not choices:
                skipped.append(state)  # its servers are busy or down; later jobs may still go
                continue
            server = min(choices, key=_score)
            self._send(state, server)
            if server.limit is not None and server.load >= server.limit:
                free.remove(server)
        self.pending.extendleft(reversed(skipped))

    def _gone(self) -> bool:
        """Every server has been down for ``give_up_after`` s."""
        now = time.monotonic()
        return self.give_up_after is not None and all(
            s.health == DOWN and now - s.down_since >= self.give_up_after for s in self.servers
        )

    def _send(self, state: PromptState, server: Server) -> None:
        self.assign(state, server)
        state.posting = True
        server.spawn(server.submit(state), state)

    def assign(self, state: PromptState, server: Server) -> None:
        """Count a job against a server (dispatch, or a job adopted by ``resume``)."""
        self.assigned[state.prompt_id] = server
        server.load += 1
        state.server = server.url

    def _unassign(self, state: PromptState) -> None:
        server = self.assigned.pop(state.prompt_id, None)
        if server is not None:
            server.load -= 1

    def settled(self, state: PromptState) -> None:
        """A job ended: free its slot, count it for the server it ran on, send the next."""
        self._unassign(state)
        self._routes.pop(state.prompt_id, None)
        ran = next((s for s in self.servers if s.url == state.server), None)
        if ran is not None:
            if state.status == SUCCESS:
                ran.done += 1
            elif state.status in (ERROR, INTERRUPTED, LOST):
                ran.failed += 1
        self.pump()

    def _able(self, state: PromptState) -> list[Server] | CapabilityError:
        """The servers that can run a job (all of them without routing), cached per capability change."""
        if not self.route:
            return self.servers
        cached = self._routes.get(state.prompt_id)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        prompt = state.body["prompt"]
        able, missing = [], {}
        for server in self.servers:
            if server.caps is None:
                missing[server.url] = ["everything: it has not answered yet, so what it has is unknown"]
            elif lacking := server.caps.missing(prompt):
                missing[server.url] = lacking
            else:
                able.append(server)
        result: Any = able or CapabilityError(missing)
        self._routes[state.prompt_id] = (self._generation, result)
        return result

    # -- health --------------------------------------------------------------------------------------

    def unreachable(self, server: Server, error: BaseException) -> None:
        """A POST failed in transit. The job stays where it is (the server may have it):
        reconciliation finds it when the server rejoins, or failover moves it."""
        self._mark_down(server, error)

    def _mark_down(self, server: Server, error: BaseException) -> None:
        server.error = error
        if server.health == DOWN:
            return
        server.health, server.down_since = DOWN, time.monotonic()
        held = len(server.tracker.unfinished())
        log.warning(
            "%s is down (%s); %d job(s) there wait for it, or move after %g s",
            server.url,
            error,
            held,
            self.failover_after,
        )

    def _mark_up(self, server: Server) -> None:
        rejoined = server.ever_up
        server.health, server.ever_up = UP, True
        server.down_since = server.silent_since = None
        server.error = None
        if rejoined:
            log.info("%s answers again and rejoins the pool", server.url)
            server.request_reconcile()
        self.pump()

    async def _bring_up(self, server: Server) -> bool:
        """Probe, connect, read capabilities, clean up orphans; ``up`` only if all of that worked."""
        try:
            await server.start()
            if self.route:
                caps = await read_capabilities(server.transport)
                if server.caps is None or caps.classes != server.caps.classes or caps.choices != server.caps.choices:
                    server.caps = caps
                    self._generation += 1
            await self._reclaim(server)
        except ComfyError as exc:
            self._mark_down(server, exc)
            return False
        self._mark_up(server)
        return True

    async def _monitor(self) -> None:
        tick = min(0.25, self.down_after / 4, self.failover_after / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for server in self.servers:
                if server.health == UP:
                    connection = server.connection
                    if connection is None or connection.connected.is_set():
                        server.silent_since = None
                        continue
                    server.silent_since = server.silent_since or now
                    if now - server.silent_since >= self.down_after and not server.probing:
                        self._spawn(self._check(server))
                elif server.health == DOWN:
                    if not server.probing:
                        self._spawn(self._recover(server))
                    if now - server.down_since >= self.failover_after:
                        self._failover(server)
                    if self.give_up_after is not None and now - server.down_since >= self.give_up_after:
                        self._give_up(server)
            if self.pending:
                self.pump()  # jobs waiting client-side end if every server has been down too long

    async def _check(self, server: Server) -> None:
        """The socket has been closed for a while: does the server still answer HTTP?"""
        server.probing = True
        try:
            await server.transport.system_stats(retry=False)
            server.silent_since = time.monotonic()  # it answers: look again after another while
        except ComfyError as exc:
            self._mark_down(server, exc)
        finally:
            server.probing = False

    async def _recover(self, server: Server) -> None:
        """Probe a down server with backoff until it is back."""
        server.probing = True
        delay = self.session.backoff
        try:
            while not await self._bring_up(server):
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_PROBE_DELAY)
        finally:
            server.probing = False

    # -- failover --------------------------------------------------------------------------------------

    def _failover(self, server: Server) -> None:
        """Move the jobs of a server down for too long to servers that can run them."""
        for state in server.tracker.unfinished():
            if state.posting or state.finalizing:
                continue  # settles into one of the other cases by itself
            able = self._able(state)
            if isinstance(able, CapabilityError) or not any(s.health == UP for s in able if s is not server):
                continue  # nowhere else to go: wait for it
            self.resubmit(
                state, server, reason=f"{server.url} has been down for {self.failover_after:g} s", orphan=True
            )

    def _give_up(self, server: Server) -> None:
        """End the jobs of a server down for too long that no other server took: lost. Should it
        come back, it drops its copies (as for jobs moved away) before it gets new work."""
        for state in server.tracker.unfinished():
            if state.posting or state.finalizing:
                continue  # ends soon, as failed or finished, and is looked at again next time
            server.tracker.forget(state.prompt_id)
            server.orphans[state.prompt_id] = state
            server.settle(
                state,
                LOST,
                error=JobLost(
                    f"{server.url} has been down for {self.give_up_after:g} s ({server.error}) and no other "
                    f"server took prompt {state.prompt_id}; it was given up"
                ),
            )

    def resubmit(self, state: PromptState, server: Server, *, reason: str, orphan: bool) -> bool:
        """Queue a job again, to go wherever there is room (False: another process sharing the
        journal did that already). ``orphan``: the old server may still hold a copy, to be
        cleaned up when it rejoins."""
        session = self.session
        if state.cancel_requested or state.attempts >= session.max_attempts:
            if orphan:  # it ends here, but its copy there must still go when the server rejoins
                server.tracker.forget(state.prompt_id)
                server.orphans[state.prompt_id] = state
            if state.cancel_requested:
                server.settle(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
            else:
                server.settle(
                    state,
                    LOST,
                    error=JobLost(
                        f"prompt {state.prompt_id} could not be run: {reason}, after {state.attempts} submission(s) "
                        f"(max_attempts={session.max_attempts})"
                    ),
                )
            return True
        if session.journal is not None and not session.journal.may_resubmit(state):
            return False
        log.warning(
            "%s: submitting prompt %s again (attempt %d of %d)",
            reason,
            state.prompt_id,
            state.attempts + 1,
            session.max_attempts,
        )
        server.tracker.forget(state.prompt_id)
        if orphan:
            server.orphans[state.prompt_id] = state
        self._unassign(state)
        state.resubmitting()
        state.server = None
        self.pending.appendleft(state)  # it has waited longest
        self.pump()
        return True

    async def _reclaim(self, server: Server) -> None:
        """On a rejoining server, remove the copies of jobs moved away, or take a result it has."""
        while server.orphans:  # more may be moved away while we look
            ids = list(server.orphans)
            await server.transport.delete_queued(ids)  # first, so none of them starts meanwhile
            running, _ = await server._queue()
            for pid in ids:
                state = server.orphans[pid]
                if pid in running:
                    log.info("interrupting %s on %s: it runs elsewhere now", pid, server.url)
                    await server.transport.interrupt(pid)
                elif not state.done:
                    entry = await server.transport.get_history(pid)
                    if ((entry or {}).get("status") or {}).get("status_str") == SUCCESS:
                        self._adopt_result(state, server, entry)
                del server.orphans[pid]

    def _adopt_result(self, state: PromptState, server: Server, entry: dict) -> None:
        """The old server delivered after all: the job takes that result; the other copy goes."""
        if state.done:  # the other copy ended it while we read this history
            return
        other = self.assigned.get(state.prompt_id)
        log.info("%s finished %s while it was cut off; keeping that result", server.url, state.prompt_id)
        state.server = server.url
        server._finish(state, entry)
        if other is not None and other is not server and not state.posting:
            other.spawn(discard(other, state.prompt_id))

    # -- views -----------------------------------------------------------------------------------------

    def frame(self):
        """One row per server: url, state, in-flight, queue_remaining, done, failed, and why it is down."""
        import pandas as pd

        now = time.monotonic()
        rows = [
            {
                "url": s.url,
                "state": s.health,
                "inflight": s.load,
                "queue_remaining": s.tracker.queue_remaining,
                "done": s.done,
                "failed": s.failed,
                "weight": s.weight,
                "max_inflight": s.limit,
                "down_for": None if s.down_since is None else now - s.down_since,
                "error": None if s.error is None else f"{type(s.error).__name__}: {s.error}",
            }
            for s in self.servers
        ]
        return pd.DataFrame(
            rows,
            columns=[
                "url",
                "state",
                "inflight",
                "queue_remaining",
                "done",
                "failed",
                "weight",
                "max_inflight",
                "down_for",
                "error",
            ],
        )

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in comfynb (please report)", exc_info=task.exception())


def _down(servers: list[Server]) -> str:
    return "; ".join(f"{s.url}: {s.error}" for s in servers)


def _score(server: Server) -> float:
    """Outstanding work after one more prompt, per unit of weight."""
    outstanding = max(server.load, server.tracker.queue_remaining or 0)
    return (outstanding + 1) / server.weight
