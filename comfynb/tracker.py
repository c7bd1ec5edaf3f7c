"""Per-prompt state machines, fed by WebSocket events and by reconciliation.

One :class:`Tracker` per server connection. It only acts on prompt ids it registered before
their POST, so events of other clients' prompts (broadcast progress, previews) are counted and
dropped instead of being misattributed. Completion is ``executing {node: null}`` with our
``prompt_id`` and nothing else; the outcome events only record what the history will confirm.

ComfyUI runs one prompt at a time, so the socket also carries *signs* that a prompt of ours ended
even when its final message was lost: another prompt's events while ours runs, a queue that
shrank while ours ran, a queue that emptied while ours is unfinished. The tracker reports each to
its owner (``on_sign``), which asks the server at once. All methods run on the private loop's thread.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import wscapture

PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
SUCCESS = "success"
ERROR = "error"
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"
LOST = "lost"
TERMINAL = frozenset({SUCCESS, ERROR, INTERRUPTED, CANCELLED, LOST})

# ComfyUI reports a node skipped behind a blocked input as an execution_error that is not fatal.
_BLOCKED = "ExecutionBlocked"


@dataclass
class Progress:
    """Where a prompt is: nodes done of total, the current node, and its step counter."""

    nodes_done: int = 0
    nodes_total: int = 0
    node: str | None = None
    value: int = 0
    max: int = 0


class PromptState:
    """Everything known about one prompt; the public :class:`~comfynb.jobs.Job` reads it."""

    def __init__(self, prompt_id: str, body: dict | None, tags: dict | None):
        self.prompt_id = prompt_id
        self.body = body  # the POST /prompt body, kept for resubmission (None while a sweep holds it)
        self.history: dict | None = None  # the history entry it ended with
        self.tags = tags
        self.server: str | None = None
        self.status = PENDING
        self.error: BaseException | None = None
        self.attempts = 0
        self.number: int | float | None = None
        self.node_errors: dict = {}
        self.submitted_at = time.time()
        self.started_at: float | None = None  # first seen running (time.time()), for queue wait vs run time
        self.finished_at: float | None = None
        self.moves = 0  # times failover moved it to another server
        self.resends = 0  # times it was sent again because a server forgot it (restart)
        self.events = 0
        self.last_event: str | None = None
        self.last_event_at: float | None = None
        self.latest_preview: Any = None
        self.progress = Progress(nodes_total=len(body["prompt"]) if body else 0)
        # The future is put in RUNNING state so that an awaiting caller cancelling its own
        # wrapper (asyncio.wait_for, task.cancel) cannot cancel the job's outcome.
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()
        # Flow control, owned by the session.
        self.sent = False  # a POST /prompt left the client (the server may know the id)
        self.accepted = False  # the server confirmed it has the prompt (POST reply, or found there)
        self.posting = False
        self.finalizing = False
        self.again = False  # a completion arrived while finalizing: look again
        self.cancel_requested = False
        self.post_error: BaseException | None = None  # why the last POST went unanswered, if it did
        self.unread_since: float | None = None  # monotonic time of the first failed outcome read in a row
        self._reset_run()

    def _reset_run(self) -> None:
        """Forget what one execution reported (used again when the prompt is resubmitted)."""
        self.completed = False  # executing {node: null} seen
        self.outcome: str | None = None  # from execution_success / _error / _interrupted
        self.outcome_data: dict | None = None
        self.outputs: dict[str, dict] = {}  # node id -> UI output from `executed`
        self.ws: Any = None  # wscapture.Capture: SaveImageWebsocket frames of this run
        self._nodes_done: set[str] = set()
        self.progress = Progress(nodes_total=self.progress.nodes_total)

    def release(self) -> None:
        """Drop the working state once the job has ended (only the outcome is read after that):
        sweeps keep thousands of finished jobs."""
        self.body = None
        self.outputs = {}
        self.outcome_data = None
        self.ws = None
        self._nodes_done = set()

    def settle(self, status: str, *, result: Any = None, error: BaseException | None = None) -> bool:
        """End the job once; later calls are ignored (False). Only the pool calls this (see
        :mod:`comfynb.jobs` for who decides a job's fate)."""
        if self.done:
            return False
        self.status = status
        self.error = error
        self.finished_at = time.time()
        self.release()
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)
        return True

    def resubmitting(self) -> None:
        self._reset_run()
        self.status = PENDING
        self.sent = self.accepted = False

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


_KEEP_DONE = 64  # finished prompts a tracker still knows (see Tracker._prune)


class Tracker:
    """Routes events of one socket to the prompts registered on it."""

    def __init__(
        self,
        on_complete: Callable[[PromptState], None],
        on_sign: Callable[[PromptState | None], None] = lambda state: None,
    ):
        self.jobs: dict[str, PromptState] = {}
        self._prune_at = 2 * _KEEP_DONE
        self.on_complete = on_complete
        self.on_sign = on_sign  # a prompt of ours probably ended unseen (None: look at all of them)
        self.running: str | None = None  # our prompt executing on the server, as our socket saw it
        self.foreign = 0  # events and previews of prompts that are not ours
        self.queue_remaining: int | None = None
        self.preview_metadata = False  # the server confirmed type-4 previews for this socket
        self.heard_at = time.monotonic()  # the last event for one of our prompts
        self.epoch = 0  # counts socket connects: WebSocket outputs are whole only within one

    def register(self, state: PromptState) -> None:
        self.jobs[state.prompt_id] = state
        if len(self.jobs) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Let go of all but the latest finished prompts (amortised: when the table doubled). A
        finished prompt's late events (none are expected) would then count as foreign; keeping
        every one would hold every job's result for the session's life and make each status
        message look through all of them."""
        done = [pid for pid, state in self.jobs.items() if state.done]
        for pid in done[: max(0, len(done) - _KEEP_DONE)]:
            del self.jobs[pid]
        self._prune_at = 2 * len(self.jobs) + _KEEP_DONE

    def forget(self, prompt_id: str) -> None:
        """Stop following a prompt here (it moved to another server): its events become foreign."""
        self.jobs.pop(prompt_id, None)
        if self.running == prompt_id:
            self.running = None

    def unfinished(self) -> list[PromptState]:
        return [s for s in self.jobs.values() if not s.done]

    def connected(self) -> None:
        """A new socket: flags are negotiated again; who runs is learnt again."""
        self.preview_metadata = False
        self.running = None
        self.epoch += 1

    # -- events -----------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        kind = event.type
        if kind == "status":
            self._status(event.queue_remaining)
            return
        if kind == "feature_flags":
            self.preview_metadata = event.data.get("supports_preview_metadata") is True
            return
        pid = event.prompt_id
        if pid is None:  # the reconnect-time `executing` replay: reconciliation places it
            return
        if self.running is not None and pid != self.running:
            self._moved_on()  # the worker runs another prompt: ours ended, its final message was lost
        state = self.jobs.get(pid)
        if state is None:
            self.foreign += 1
            return
        if state.done:
            return
        self.heard_at = time.monotonic()
        state.events += 1
        state.last_event = kind
        state.last_event_at = time.time()
        data = event.data
        wscapture.observe(state, event, self.epoch)
        if event.done:
            self._completed(state)
            return
        self._running(state)  # any other message of a prompt means it is on the worker now
        if kind == "executing":
            prog = state.progress
            if prog.node is not None:
                _finished(state, (prog.node,))
            prog.node, prog.value, prog.max = data.get("node"), 0, 0
        elif kind == "progress":
            prog = state.progress
            prog.node = data.get("node", prog.node)
            prog.value, prog.max = data.get("value", 0), data.get("max", 0)
        elif kind == "progress_state":
            nodes = data.get("nodes") or {}
            _finished(state, (k for k, v in nodes.items() if v.get("state") == "finished"))
        elif kind == "executed":
            node = data.get("node")
            if node is not None:
                _finished(state, (node,))
                if data.get("output") is not None:
                    state.outputs[node] = data["output"]
        elif kind == "execution_cached":
            _finished(state, data.get("nodes") or ())
        elif kind == "execution_success":
            state.outcome, state.outcome_data = SUCCESS, data
        elif kind == "execution_error":
            if data.get("exception_type") != _BLOCKED:
                state.outcome, state.outcome_data = ERROR, data
        elif kind == "execution_interrupted":
            state.outcome, state.outcome_data = INTERRUPTED, data

    def feed_preview(self, preview: Any) -> None:
        """Type 4 names its prompt. Type 1 does not: it can only be ours if the server did not
        switch us to type 4, and then it belongs to the prompt running on our socket."""
        if preview.prompt_id is not None:
            state = self.jobs.get(preview.prompt_id)
        elif not self.preview_metadata and self.running is not None:
            state = self.jobs.get(self.running)
        else:
            state = None
        if state is None:
            self.foreign += 1
        elif not state.done:
            state.latest_preview = preview
            wscapture.take(state, preview, state.progress.node)

    def _status(self, remaining: int | None) -> None:
        if remaining is None:
            return
        # History is written before this broadcast and our final `executing` follows it at once
        # (protocol §5.2, steps 8-9): a shrink while ours runs, or an empty queue while ours is
        # unfinished, means it ended. Other clients' completions are no concern of ours.
        shrank = self.queue_remaining is not None and remaining < self.queue_remaining
        self.queue_remaining = remaining
        if shrank and self.running is not None:
            self._moved_on()
        elif remaining == 0 and any(s.sent and not s.completed and not s.done for s in self.jobs.values()):
            self.on_sign(None)

    def _moved_on(self) -> None:
        state = self.jobs.get(self.running) if self.running is not None else None
        self.running = None
        if state is not None and not state.done and not state.completed:
            self.on_sign(state)

    def _running(self, state: PromptState) -> None:
        if not state.completed:
            state.status = RUNNING
            self.running = state.prompt_id
            if state.started_at is None:
                state.started_at = time.time()

    def _completed(self, state: PromptState) -> None:
        state.completed = True
        state.progress.node = None
        if self.running == state.prompt_id:
            self.running = None
        self.on_complete(state)

    # -- reconciliation -----------------------------------------------------------------

    def place(self, state: PromptState, where: str) -> None:
        """What the server's queue says: ``running`` or ``queued``."""
        if state.done or state.completed:
            return
        if where == RUNNING:
            self._running(state)
        elif state.status == PENDING:
            state.status = QUEUED


def _finished(state: PromptState, nodes: Iterable[str]) -> None:
    """Count nodes as done; several messages can report the same node, so they form a set."""
    state._nodes_done.update(nodes)
    state.progress.nodes_done = len(state._nodes_done)
