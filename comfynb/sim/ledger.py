"""What a simulated server really executed, kept across its restarts: the ground truth for
"did this prompt run once?".

A real ComfyUI forgets its queue and history when it restarts, so a client (and a test) cannot
ask it afterwards what ran. The :class:`Ledger` lives on the :class:`~comfynb.sim.Simulator`,
not on its per-lifetime engine, and records every execution (which lifetime, when, how it
ended, and when the server first let a client know the outcome), plus every outage (restart,
partition, kill). Output files carry the same evidence on disk: every image the simulator saves
names its prompt and execution in the ``comfynb_run`` PNG chunk (:func:`output_runs`), so even a
process that never held the simulator object can count executions from the files alone.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

RUN_CHUNK = "comfynb_run"
"""PNG text chunk naming the execution that saved the file: ``{"prompt_id": ..., "run": ...}``."""

MAX_RUNS = 100_000  # executions remembered: a long-running simulator must not grow without bound


@dataclass
class Run:
    """One execution of one prompt on one lifetime of a server (times are ``time.monotonic()``)."""

    prompt_id: str
    run_id: str
    client_id: str | None
    lifetime: int
    started_at: float
    queued_at: float | None = None  # when the server accepted the POST that this run executes
    ended_at: float | None = None
    outcome: str | None = None  # success, error, interrupted; None: cut short by a restart or kill
    told_at: float | None = None  # first time the outcome reached a client (its socket, or HTTP)
    files: list[str] = field(default_factory=list)


@dataclass
class Outage:
    """A restart, partition or kill: unreachable from ``start`` to ``end`` (None: not back yet)."""

    kind: str
    start: float
    end: float | None
    lifetime: int  # the lifetime that was running when it began
    abandoned: list[str] = field(default_factory=list)  # prompts a restart or kill dropped (running first)


class Ledger:
    """Executions and outages of one simulator, across its restarts (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: deque[Run] = deque(maxlen=MAX_RUNS)
        self.outages: list[Outage] = []
        self.lifetime = 0
        self._by_prompt: dict[str, list[Run]] = {}  # prompt_id -> its runs, oldest first
        self._queued: dict[str, list[float]] = {}  # prompt_id -> accepted at, for copies not started yet

    def queued(self, prompt_id: str) -> None:
        """The server accepted a POST of this prompt (a copy is in its queue now)."""
        self._queued.setdefault(prompt_id, []).append(time.monotonic())

    def dequeued(self, prompt_id: str) -> float | None:
        """A copy left the queue (to run, or deleted): when it had been accepted."""
        waiting = self._queued.get(prompt_id)
        queued_at = waiting.pop(0) if waiting else None
        if waiting == []:
            del self._queued[prompt_id]
        return queued_at

    def start(self, prompt_id: str, run_id: str, client_id: str | None) -> Run:
        queued_at = self.dequeued(prompt_id)
        run = Run(prompt_id, run_id, client_id, self.lifetime, time.monotonic(), queued_at)
        self._add(run)
        return run

    def _add(self, run: Run) -> None:
        if len(self.runs) == self.runs.maxlen:  # the oldest is about to go: unindex it
            oldest = self.runs[0]
            mine = self._by_prompt[oldest.prompt_id]
            mine.remove(oldest)
            if not mine:
                del self._by_prompt[oldest.prompt_id]
        self.runs.append(run)
        self._by_prompt.setdefault(run.prompt_id, []).append(run)

    def end(self, run: Run, outcome: str) -> None:
        run.ended_at, run.outcome = time.monotonic(), outcome

    def told(self, prompt_id: str) -> None:
        """A client just learned how the prompt's latest run ended (a no-op while it still runs)."""
        mine = self._by_prompt.get(prompt_id)
        run = mine[-1] if mine else None
        if run is not None and run.outcome is not None and run.told_at is None and run.lifetime == self.lifetime:
            run.told_at = time.monotonic()

    def down(self, kind: str, abandoned: list[str]) -> Outage:
        outage = Outage(kind, time.monotonic(), None, self.lifetime, abandoned)
        self.outages.append(outage)
        if kind != "partition":
            self.lifetime += 1
            self._queued.clear()  # its queue is gone
        return outage

    # -- questions a test asks -------------------------------------------------------------------

    def executions(self, prompt_id: str | None = None, outcome: str | None = "success") -> Counter[str] | int:
        """How often each prompt ran to ``outcome`` (None: started at all), or one prompt's count."""
        counts = Counter(r.prompt_id for r in self.runs if outcome is None or r.outcome == outcome)
        return counts if prompt_id is None else counts[prompt_id]

    def runs_of(self, prompt_id: str) -> list[Run]:
        return list(self._by_prompt.get(prompt_id, ()))

    def forgotten_untold(self, run: Run) -> bool:
        """Whether the run ended but its server lost it (restart or kill) before any client was told:
        nobody could know it had run, so running it again cannot be blamed on a client."""
        return run.outcome is not None and run.told_at is None and run.lifetime < self.lifetime

    def cut_off_during(self, run: Run) -> bool:
        """Whether a partition of its server hid this run from clients: it was queued or running
        while the server was cut off, or it had ended but no client had been told yet when the cut
        began. Where no client can see, a client cannot prevent a second run."""
        begin = run.queued_at if run.queued_at is not None else run.started_at
        end = run.ended_at if run.ended_at is not None else float("inf")
        for o in self.outages:
            if o.kind != "partition":
                continue
            if begin < (o.end if o.end is not None else float("inf")) and end > o.start:
                return True
            if end <= o.start and (run.told_at is None or run.told_at > o.start):
                return True
        return False

    def as_dict(self) -> dict:
        """Plain data (for a process that hosts simulators for another)."""
        return {
            "lifetime": self.lifetime,
            "runs": [vars(r) for r in self.runs],
            "outages": [vars(o) for o in self.outages],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ledger:
        ledger = cls()
        ledger.lifetime = data["lifetime"]
        for item in data["runs"]:
            ledger._add(Run(**item))
        ledger.outages = [Outage(**item) for item in data["outages"]]
        return ledger


def output_runs(*roots: str | os.PathLike) -> dict[str, set[tuple[str, str]]]:
    """Executions named by the images saved under simulator roots: prompt_id -> {(root, run_id)}.

    Output files survive restarts (history does not), so two run ids for one prompt_id mean it
    executed twice, whichever server or lifetime ran it. Files without the chunk are skipped.
    """
    found: dict[str, set[tuple[str, str]]] = {}
    for root in roots:
        for path in sorted(Path(root, "output").rglob("*.png")):
            try:
                with Image.open(path) as img:
                    raw = getattr(img, "text", {}).get(RUN_CHUNK)
            except OSError:
                continue  # being written right now, or not an image
            if raw:
                mark = json.loads(raw)
                found.setdefault(mark["prompt_id"], set()).add((str(root), mark["run"]))
    return found
