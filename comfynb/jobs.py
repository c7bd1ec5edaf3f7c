"""The handle a caller holds for one submitted prompt, and ``as_completed`` over many.

A :class:`Job` is awaitable from any event loop and blocks in :meth:`Job.result` from plain code,
because its outcome is a ``concurrent.futures.Future`` resolved on comfynb's private loop. Its
attributes are read from the prompt's state, which only the private loop writes.

Who decides a job's fate
    Exactly one owner settles a job: the session's :class:`~comfynb.pool.Pool`, on the private
    loop, through ``Pool._settle`` (which calls ``PromptState.settle`` once; later calls are
    ignored). The pool settles when

    - a server holding the job reports how it ended (its history, or, when the server is gone,
      the ending our socket witnessed in full) — reports from a server the job moved away from
      are ignored;
    - a server forgot the job and it may not be sent again (``lost``), or it was cancelled;
    - no server can take it (capabilities, every server down for ``give_up_after``), or its
      server stayed down that long (``lost``);
    - the user cancels a job no server holds, or closes the session (``cancelled``);
    - a success whose WebSocket-only outputs may be incomplete (:mod:`comfynb.wsoutputs`, a policy
      the pool applies before it settles: run it again, fail it, or keep it).

    Servers report facts (:class:`comfynb.server.Listener`); the session asks the pool
    (``cancel``, ``drop``, ``adopt``, ``end_all``); nothing else writes a job's outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import _loop
from .errors import Timeout

if TYPE_CHECKING:
    from .results import Result
    from .tracker import Progress, PromptState


class Job:
    """One prompt on its way through a server.

    ``status`` is one of pending (not accepted by a server yet), queued, running, success, error,
    interrupted, cancelled, lost. ``await job`` or ``job.result()`` give the
    :class:`~comfynb.results.Result`, or raise the job's error.
    """

    __slots__ = ("__weakref__", "_cancel", "_state")

    def __init__(self, state: PromptState, cancel: Callable[[PromptState], None]):
        self._state = state
        self._cancel = cancel

    # -- what the job is and where it got --------------------------------------------------

    @property
    def prompt_id(self) -> str:
        return self._state.prompt_id

    @property
    def status(self) -> str:
        return self._state.status

    @property
    def server(self) -> str | None:
        """The URL (never with credentials) of the server the job was sent to, and after it ended,
        the one whose result it has (a job moved by failover can have run on two)."""
        return self._state.server

    @property
    def progress(self) -> Progress:
        """Nodes done / total, the current node, and its step ``value`` / ``max``."""
        return self._state.progress

    @property
    def error(self) -> BaseException | None:
        return self._state.error

    @property
    def attempts(self) -> int:
        """How often the prompt was submitted (more than 1 after a server lost it)."""
        return self._state.attempts

    @property
    def moves(self) -> int:
        """How often failover moved the job to another server (its server was down too long)."""
        return self._state.moves

    @property
    def resends(self) -> int:
        """How often the job was sent again because its server forgot it (a restart)."""
        return self._state.resends

    @property
    def started_at(self) -> float | None:
        """Wall-clock time (``time.time()``) the job was first seen running; None before."""
        return self._state.started_at

    @property
    def tags(self) -> dict | None:
        return self._state.tags

    @property
    def number(self) -> int | float | None:
        """The server's queue number for the last submission."""
        return self._state.number

    @property
    def node_errors(self) -> dict:
        """Outputs the server dropped as invalid although it accepted the prompt."""
        return self._state.node_errors

    @property
    def history(self) -> dict | None:
        """The raw history entry the job ended with, whatever the outcome (None if it has none)."""
        return self._state.history

    @property
    def events(self) -> int:
        return self._state.events

    @property
    def last_event(self) -> str | None:
        return self._state.last_event

    @property
    def last_event_at(self) -> float | None:
        """Wall-clock time (``time.time()``) of the last event for this job."""
        return self._state.last_event_at

    @property
    def latest_preview(self) -> Any:
        """The last preview frame (``.image`` bytes, ``.mime``), or None."""
        return self._state.latest_preview

    @property
    def submitted_at(self) -> float:
        return self._state.submitted_at

    @property
    def finished_at(self) -> float | None:
        return self._state.finished_at

    def done(self) -> bool:
        return self._state.future.done()

    # -- waiting -----------------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> Result:
        """Block until the job ends; return its Result or raise its error."""
        if _loop.in_loop_thread():
            raise RuntimeError("job.result() would deadlock on comfynb's own loop thread; use `await job`")
        fut = self._state.future
        if not _loop.wait(fut, timeout, self._still_running):
            raise Timeout(f"job {self.prompt_id} did not finish within {timeout:g} s (status: {self.status})")
        return fut.result()

    def __await__(self):
        return _loop.wrap(self._state.future, describe=self._still_running).__await__()

    def _still_running(self) -> str:
        """What an interrupted wait says: the job goes on until cancelled."""
        return f"job {self.prompt_id[:8]} still {self.status}: job.cancel() stops it"

    def cancel(self) -> bool:
        """Stop the job: dropped if never sent, deleted from the queue, or interrupted if running.

        Returns at once; False if the job had already ended. Await the job to see how it ended
        (``cancelled``, or ``interrupted`` if it was already running on the server).
        """
        if self.done():
            return False
        self._cancel(self._state)
        return True

    def __repr__(self) -> str:
        prog = self._state.progress
        where = f" on {self.server}" if self.server else ""
        return (
            f"<Job {self.prompt_id} {self.status} nodes {prog.nodes_done}/{prog.nodes_total}"
            f" attempts={self.attempts}{where}>"
        )


class as_completed:
    """Yield jobs as they end, in finishing order: ``for job in as_completed(jobs)`` blocks,
    ``async for job in as_completed(jobs)`` awaits. ``timeout`` bounds the whole iteration."""

    def __init__(self, jobs: Iterable[Job], timeout: float | None = None):
        self._jobs = list(jobs)
        self._timeout = timeout

    def __iter__(self) -> Iterator[Job]:
        if _loop.in_loop_thread():
            raise RuntimeError("as_completed() would deadlock on comfynb's own loop thread; use `async for`")
        by_future = {job._state.future: job for job in self._jobs}
        try:
            for fut in concurrent.futures.as_completed(by_future, timeout=self._timeout):
                yield by_future[fut]
        except concurrent.futures.TimeoutError:
            raise self._expired() from None

    async def __aiter__(self) -> AsyncIterator[Job]:
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[Job] = asyncio.Queue()
        for job in self._jobs:
            job._state.future.add_done_callback(functools.partial(_put, loop, finished, job))
        deadline = None if self._timeout is None else loop.time() + self._timeout
        for _ in self._jobs:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                async with _loop.awake():  # a kernel interrupt is seen between two jobs' ends too
                    job = await asyncio.wait_for(finished.get(), remaining)
            except TimeoutError:
                raise self._expired() from None
            yield job

    def _expired(self) -> Timeout:
        left = sum(not job.done() for job in self._jobs)
        return Timeout(f"{left} of {len(self._jobs)} jobs did not finish within {self._timeout:g} s")


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, job: Job, _: Any) -> None:
    loop.call_soon_threadsafe(queue.put_nowait, job)
