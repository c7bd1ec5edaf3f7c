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

    Three rules make a second run impossible by construction where the old server restarted or
    died: a server marked down is sent no POST (a late retry cannot land a copy there); a job is
    moved only right after a probe of its server failed (it was asked first); and a job whose
    ending our socket saw is never moved or sent again (it settles from what was seen). What
    cannot be prevented is that a server cut off from us but still working (a partition) runs a
    moved prompt during the outage. Once it is back, nothing of ours runs there twice. The
    journal follows a moved job to its new server, so ``resume`` looks for it there.

Who decides a job's fate
    The pool alone settles jobs (:meth:`Pool._settle`): its servers report facts through the
    :class:`~comfynb.server.Listener` interface (ended, forgotten, unreachable) and the pool decides
    (settle, resubmit, move, give up). The session reaches a job only through the pool (cancel,
    drop, adopt, close). The pool reports upward through :class:`Listener` (journal, event buffer).

All of this runs on comfynb's private loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from . import chaining, wsoutputs
from .burst import Burst
from .capabilities import read_capabilities
from .errors import Cancelled, CapabilityError, ComfyError, JobLost
from .history import entry_problem
from .results import Result
from .server import DOWN, UP, Server
from .settings import Settings
from .tracker import CANCELLED, ERROR, INTERRUPTED, LOST, QUEUED, SUCCESS, PromptState
from .transport import Transport, _split_url

log = logging.getLogger(__name__)

AUTO_INFLIGHT = 2  # per server when there are several: one running, one queued behind it
_MAX_PROBE_DELAY = 5.0


class Listener(Protocol):
    """What the pool reports to the layer above it (the session: journal, event buffer)."""

    def heard(self, url: str, item: Any) -> None:
        """Every raw event, preview and frame, with the URL of the server it came from."""

    def posting(self, state: PromptState, url: str) -> None:
        """A POST of ``state`` to ``url`` is about to leave the client."""

    def settled(self, state: PromptState) -> None:
        """A job ended (its status, result or error are set)."""

    def may_resubmit(self, state: PromptState) -> bool:
        """Whether this process may send a job again (False: another process sharing the journal did)."""


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
    """Dispatch, health, failover and the fate of every job (see the module docstring).

    It builds one :class:`~comfynb.server.Server` per transport and is their listener.
    """

    def __init__(
        self,
        transports: list[Transport],
        client_id: str,
        settings: Settings,
        listener: Listener,
        *,
        weights: Any = None,
        max_inflight: Any = "auto",
        capabilities: bool | None = None,
    ):
        urls = [t.url for t in transports]
        if len(set(urls)) != len(urls):
            raise ValueError("the same server URL is given twice")
        several = len(transports) > 1
        limits = per_server(max_inflight, urls, "max_inflight", AUTO_INFLIGHT if several else None)
        weights = per_server("auto" if weights is None else weights, urls, "weights", 1.0)
        self.servers = [Server(t, client_id, settings, self) for t in transports]
        for server, weight, limit in zip(self.servers, weights, limits):
            if not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"weights must be positive numbers, got {weight!r} for {server.url}")
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError(
                    f"max_inflight must be a whole number >= 1, None (no limit) or 'auto', "
                    f"got {limit!r} for {server.url}"
                )
            server.weight = float(weight)
            server.limit = limit
        self.settings = settings
        self.listener = listener
        self.route = several if capabilities is None else bool(capabilities)
        self.pending: collections.deque[PromptState] = collections.deque()
        self.assigned: dict[str, Server] = {}  # prompt_id -> the server holding its live copy
        self._routes: dict[str, tuple[int, Any]] = {}  # prompt_id -> (generation, servers able | error)
        self._generation = 0  # bumped when a server's capabilities change
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self.burst: Burst | None = None  # set by the session: the cloud takes only the overflow

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every server once; the monitor then watches them and probes those that are down."""
        await asyncio.gather(*(self._bring_up(s) for s in self.servers))
        self._started = True
        self._spawn(self._monitor())
        self.pump()

    async def close(self) -> None:
        """Stop dispatching and close every server (sockets, HTTP sessions)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self.servers:
            await server.close()

    def up(self) -> list[Server]:
        return [s for s in self.servers if s.health == UP]

    def server(self, url: str | None) -> Server | None:
        return next((s for s in self.servers if s.url == url), None)

    def concurrency(self) -> int:
        """A sweep's default concurrency: enough to fill every server's in-flight limit, at least 8."""
        limits = [s.limit for s in self.servers]
        if any(limit is None for limit in limits):
            return 8
        return max(8, sum(limit for limit in limits if limit is not None))

    # -- the fate of a job: settled here and nowhere else ---------------------------------------------

    def _settle(
        self,
        state: PromptState,
        status: str,
        *,
        result: Result | None = None,
        error: BaseException | None = None,
        ran: Server | None = None,
    ) -> bool:
        """End a job once: free its slot, count it for the server it ran on, tell the listener,
        send the next. False if it had already ended."""
        if not state.settle(status, result=result, error=error):
            return False
        self._unassign(state)
        self._routes.pop(state.prompt_id, None)
        ran = ran or self.server(state.server)
        if ran is not None:
            if status == SUCCESS:
                ran.done += 1
            elif status in (ERROR, INTERRUPTED, LOST):
                ran.failed += 1
        self.listener.settled(state)
        self.pump()
        return True

    def drop(self, state: PromptState, error: BaseException, status: str = ERROR) -> None:
        """End a job no server holds (never sent, or given up); it leaves the client-side queue."""
        state.posting = False
        self._settle(state, status, error=error)

    def cancel(self, state: PromptState) -> None:
        """The user cancels: dropped if on no server, else deleted from the queue or interrupted."""
        if state.done:
            return
        state.cancel_requested = True
        server = self.server(state.server)
        if not state.sent:  # not on a server: drop it (whoever is about to send checks `done`)
            self._settle(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
        elif server is not None:
            server.spawn(server.cancel(state), state)

    def adopt(
        self,
        state: PromptState,
        url: str,
        *,
        entry: dict | None = None,
        status: str | None = None,
    ) -> None:
        """Follow a prompt sent earlier, maybe by another process (``resume``). With ``entry`` or a
        final ``status`` it ends at once, as recorded; otherwise its server is asked."""
        server = self.server(url)
        if server is None:
            raise ComfyError(f"prompt {state.prompt_id} was sent to {url}, which is not a server of this session")
        state.sent = state.accepted = True
        self._assign(state, server)
        server.tracker.register(state)
        if entry is not None:
            status_, result, error = server.outcome(state, entry)
            self._settle(state, status_, result=result, error=error)
        elif status is not None:
            kind = Cancelled if status == CANCELLED else ComfyError
            self._settle(state, status, error=kind(f"prompt {state.prompt_id} ended as {status} in an earlier session"))
        else:
            server.spawn(server.finalize(state), state)

    async def end_all(self, error_for: Any) -> None:
        """Closing: stop our prompts on the servers that hold them (queued ones deleted, the running
        one interrupted), then end every unfinished job as cancelled. ``error_for(state)`` makes
        the error."""
        for server in self.servers:
            held = [s for s in server.tracker.unfinished() if s.sent]
            if held and server.health == UP:
                await server.remove([s.prompt_id for s in held])
        for state in [*self.pending, *(s for srv in self.servers for s in srv.tracker.unfinished())]:
            self._settle(state, CANCELLED, error=error_for(state))
        self.pending.clear()

    # -- what servers report (the server.Listener interface) -------------------------------------

    def heard(self, server: Server, item: Any) -> None:
        self.listener.heard(server.url, item)

    def posting(self, server: Server, state: PromptState) -> None:
        self.listener.posting(state, server.url)

    def ended(
        self,
        server: Server,
        state: PromptState,
        status: str,
        *,
        result: Result | None = None,
        error: BaseException | None = None,
    ) -> None:
        if server.holds(state):  # a server the job moved away from has no say any more
            if status == SUCCESS and wsoutputs.settle_missing(self, server, state, result):
                return  # SaveImageWebsocket images in doubt: run again, or failed, per on_missing_outputs
            self._settle(state, status, result=result, error=error, ran=server)

    def forgotten(self, server: Server, state: PromptState) -> None:
        """The server lost a prompt it had (restart, eviction, our own delete): resubmit or end it."""
        if state.done or not server.holds(state):
            return
        if state.cancel_requested:
            self._settle(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
        elif self.settings.resubmit_lost and state.attempts < self.settings.max_attempts:
            reason = f"{server.url} no longer knows prompt {state.prompt_id} (restarted?)"
            if self._resubmit(state, server, reason=reason, orphan=False):
                state.resends += 1
            else:
                log.info("prompt %s was sent again by another process; following it", state.prompt_id)
                state.attempts += 1
                server.tracker.place(state, QUEUED)
        else:
            policy = "resubmit_lost is off" if not self.settings.resubmit_lost else "no attempts left"
            why = (
                "its last POST went unanswered: " + str(state.post_error)
                if state.post_error is not None
                else "server restarted?"
            )
            self._settle(
                state,
                LOST,
                error=JobLost(
                    f"{server.url} no longer knows prompt {state.prompt_id} ({why}) after "
                    f"{state.attempts} submission(s); {policy}"
                ),
            )

    def unreachable(self, server: Server, error: BaseException) -> None:
        """A POST failed in transit. The job stays where it is (the server may have it):
        reconciliation finds it when the server rejoins, or failover moves it."""
        self._mark_down(server, error)
        self._requeue_unsent()
        self.pump()  # a job that never left the client goes elsewhere at once

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
        if not self._started or not self.pending or self._closed:
            return
        if not any(s.ever_up for s in self.servers):  # none has ever answered: fail rather than wait
            error = self.servers[0].error or ComfyError("no server answered")
            while self.pending:
                self.drop(self.pending.popleft(), error)
            return
        if self._gone():
            while self.pending:
                state = self.pending.popleft()
                self.drop(
                    state,
                    JobLost(
                        f"every server has been down for {self.settings.give_up_after:g} s ({_down(self.servers)}), "
                        f"so prompt {state.prompt_id} was given up"
                    ),
                    status=LOST,
                )
            return
        free = [s for s in self.up() if s.limit is None or s.load < s.limit]
        skipped: list[PromptState] = []
        while free and self.pending:
            state = self.pending.popleft()
            if state.done:  # cancelled while it waited
                self._routes.pop(state.prompt_id, None)
                continue
            able = self._able(state)
            if isinstance(able, CapabilityError):
                self.drop(state, able)
                continue
            able = chaining.route((state.body or {}).get("prompt") or {}, able)  # where the files it reads are
            choices = [s for s in free if s in able]
            if choices and self.burst is not None:  # local servers first, the cloud for the overflow
                choices = self.burst.choose(state, choices, self, len(self.pending) + len(skipped) + 1)
                stranded = None if choices else self.burst.stranded(state, self)
                if stranded is not None:  # the cloud may not take it, and no local server ever will
                    self.drop(state, JobLost(stranded), status=LOST)
                    continue
            if not choices:
                skipped.append(state)  # its servers are busy or down; later jobs may still go
                continue
            server = min(choices, key=_score)
            self._send(state, server)
            if server.limit is not None and server.load >= server.limit:
                free.remove(server)
        self.pending.extendleft(reversed(skipped))

    def _requeue_unsent(self) -> None:
        """Jobs dispatched to a server that was marked down before their POST left (their submit
        then reports it unreachable): nothing of them is there, so they wait here again."""
        for server in self.servers:
            if server.health != DOWN:
                continue
            for state in server.tracker.unfinished():
                if not state.sent and not state.posting and not state.done:
                    server.tracker.forget(state.prompt_id)
                    self._unassign(state)
                    state.server = None
                    self.pending.appendleft(state)

    def _gone(self) -> bool:
        """Every server has been down for ``give_up_after`` s."""
        now = time.monotonic()
        give_up = self.settings.give_up_after
        return give_up is not None and all(
            s.health == DOWN and s.down_since is not None and now - s.down_since >= give_up for s in self.servers
        )

    def _send(self, state: PromptState, server: Server) -> None:
        self._assign(state, server)
        state.posting = True
        server.spawn(server.submit(state), state)

    def _assign(self, state: PromptState, server: Server) -> None:
        """Count a job against a server (dispatch, or a job adopted by ``resume``)."""
        self.assigned[state.prompt_id] = server
        server.load += 1
        state.server = server.url

    def _unassign(self, state: PromptState) -> None:
        server = self.assigned.pop(state.prompt_id, None)
        if server is not None:
            server.load -= 1

    def _able(self, state: PromptState) -> list[Server] | CapabilityError:
        """The servers that can run a job (all of them without routing), cached per capability change."""
        if not self.route:
            return self.servers
        cached = self._routes.get(state.prompt_id)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        assert state.body is not None
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
            self.settings.failover_after,
            extra={"server": server.url},
        )

    def _mark_up(self, server: Server) -> None:
        rejoined = server.ever_up
        server.health, server.ever_up = UP, True
        server.down_since = server.silent_since = None
        server.error = None
        if rejoined:
            log.info("%s answers again and rejoins the pool", server.url, extra={"server": server.url})
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
        s = self.settings
        tick = min(0.25, s.down_after / 4, s.failover_after / 4) or 0.05
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
                    if now - server.silent_since >= s.down_after and not server.probing:
                        self._spawn(self._check(server))
                elif server.health == DOWN and not server.probing:
                    self._spawn(self._recover(server))
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
        """Probe a down server with backoff until it is back. Its jobs move (failover) or are given
        up only right after a probe failed: the server is always asked first."""
        server.probing = True
        delay = self.settings.backoff
        try:
            while not await self._bring_up(server):
                now = time.monotonic()
                down_for = now - (server.down_since or now)
                if down_for >= self.settings.failover_after:
                    self._failover(server)
                give_up = self.settings.give_up_after
                if give_up is not None and down_for >= give_up:
                    self._give_up(server)
                    self.pump()
                wait = delay
                if server.tracker.unfinished():  # probe again in time for the next deadline
                    for deadline in (self.settings.failover_after, give_up):
                        if deadline is not None and deadline > down_for:
                            wait = min(wait, deadline - down_for)
                await asyncio.sleep(wait)
                delay = min(delay * 2, _MAX_PROBE_DELAY)
        finally:
            server.probing = False

    # -- failover --------------------------------------------------------------------------------------

    def _movable(self, state: PromptState) -> bool:
        """Not in the middle of something that settles it by itself, and not seen ending (a job
        whose ending our socket saw is settled from its history or from those events, never run again)."""
        return not (state.done or state.posting or state.finalizing or state.completed)

    def _failover(self, server: Server) -> None:
        """Move the jobs of a server down for too long to servers that can run them."""
        for state in server.tracker.unfinished():
            if not self._movable(state):
                continue
            able = self._able(state)
            if isinstance(able, CapabilityError) or not any(s.health == UP for s in able if s is not server):
                continue  # nowhere else to go: wait for it
            reason = f"{server.url} has been down for {self.settings.failover_after:g} s"
            if self._resubmit(state, server, reason=reason, orphan=True):
                state.moves += 1

    def _give_up(self, server: Server) -> None:
        """End the jobs of a server down for too long that no other server took: lost. Should it
        come back, it drops its copies (as for jobs moved away) before it gets new work."""
        for state in server.tracker.unfinished():
            if state.posting or state.finalizing:
                continue  # ends soon, as failed or finished, and is looked at again next time
            server.tracker.forget(state.prompt_id)
            server.orphans[state.prompt_id] = state
            self._settle(
                state,
                LOST,
                error=JobLost(
                    f"{server.url} has been down for {self.settings.give_up_after:g} s ({server.error}) and no other "
                    f"server took prompt {state.prompt_id}; it was given up"
                ),
            )

    def _resubmit(self, state: PromptState, server: Server, *, reason: str, orphan: bool) -> bool:
        """Queue a job again, to go wherever there is room (False: another process sharing the
        journal did that already, or the job ended here). ``orphan``: the old server may still hold
        a copy, to be cleaned up when it rejoins."""
        if state.cancel_requested or state.attempts >= self.settings.max_attempts:
            if orphan:  # it ends here, but its copy there must still go when the server rejoins
                server.tracker.forget(state.prompt_id)
                server.orphans[state.prompt_id] = state
            if state.cancel_requested:
                self._settle(state, CANCELLED, error=Cancelled(f"job {state.prompt_id} was cancelled"))
            else:
                self._settle(
                    state,
                    LOST,
                    error=JobLost(
                        f"prompt {state.prompt_id} could not be run: {reason}, after {state.attempts} submission(s) "
                        f"(max_attempts={self.settings.max_attempts})"
                    ),
                )
            return False
        if not self.listener.may_resubmit(state):
            return False
        log.warning(
            "%s: submitting prompt %s again (attempt %d of %d)",
            reason,
            state.prompt_id,
            state.attempts + 1,
            self.settings.max_attempts,
            extra={"prompt_id": state.prompt_id, "server": server.url},
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
            running, _ = await server.queue()
            for pid in ids:
                state = server.orphans[pid]
                if pid in running:
                    log.info("interrupting %s on %s: it runs elsewhere now", pid, server.url)
                    await server.transport.interrupt(pid)
                elif not state.done:
                    entry = await server.transport.get_history(pid)
                    if (
                        entry_problem(entry) is None
                        and ((entry or {}).get("status") or {}).get("status_str") == SUCCESS
                    ):
                        self._adopt_result(state, server, entry)
                del server.orphans[pid]

    def _adopt_result(self, state: PromptState, server: Server, entry: Any) -> None:
        """The old server delivered after all: the job takes that result; the other copy goes."""
        if state.done:  # the other copy ended it while we read this history
            return
        other = self.assigned.get(state.prompt_id)
        log.info(
            "%s finished %s while it was cut off; keeping that result",
            server.url,
            state.prompt_id,
            extra={"prompt_id": state.prompt_id, "server": server.url},
        )
        state.server = server.url
        status, result, error = server.outcome(state, entry)
        self._settle(state, status, result=result, error=error, ran=server)
        if other is not None and other is not server and not state.posting:
            other.spawn(other.remove([state.prompt_id]))

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
        columns = ["url", "state", "inflight", "queue_remaining", "done", "failed", "weight", "max_inflight"]
        return pd.DataFrame(rows, columns=[*columns, "down_for", "error"])

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in comfynb (please report)", exc_info=task.exception())


def _down(servers: Iterable[Server]) -> str:
    return "; ".join(f"{s.url}: {s.error}" for s in servers)


def _score(server: Server) -> float:
    """Outstanding work after one more prompt, per unit of weight."""
    outstanding = max(server.load, server.tracker.queue_remaining or 0)
    return (outstanding + 1) / server.weight
