"""Bursting: local servers first, the cloud only for the overflow, within a budget.

A session mixing local servers and Comfy Cloud (``Session([gpu1, gpu2, cn.cloud()],
burst_after=8, max_cloud_jobs=20)``) sends a prompt to the cloud only when every local server
that could run it holds its ``max_inflight`` and more than ``burst_after`` prompts wait on the
client (in the pool's queue and in sweeps not yet released), and only while the prompt's sweep
(or the session's individual submits) has used fewer than ``max_cloud_jobs`` cloud jobs.
A prompt moved off a dead local server waits in the same queue, so failover to the cloud
follows the same rules. The decision is :func:`may_burst`, a pure function; :class:`Burst`
gathers its inputs for the pool's dispatch.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any


def may_burst(
    locals_: Iterable[tuple[int, int | None]],
    *,
    waiting: int,
    used: int,
    burst_after: int,
    max_cloud_jobs: int | None,
) -> bool:
    """Whether the cloud may take one more prompt.

    ``locals_``: ``(our prompts in flight, max_inflight or None)`` of every local server that is up
    and able to run the prompt; ``waiting``: prompts waiting client-side, this one included;
    ``used``: cloud jobs this prompt's sweep has had so far.
    """
    if max_cloud_jobs is not None and used >= max_cloud_jobs:
        return False
    if any(limit is None or load < limit for load, limit in locals_):
        return False  # a local server has room: it goes there
    return waiting > burst_after


class Burst:
    """Keeps the per-sweep cloud budget and filters the dispatch choices of a mixed session."""

    def __init__(self, burst_after: int = 0, max_cloud_jobs: int | None = None, held: Callable[[], int] = lambda: 0):
        """``held``: how many prompts wait client-side outside the pool (sweep rows not released yet)."""
        if not isinstance(burst_after, int) or burst_after < 0:
            raise ValueError(f"burst_after must be a whole number >= 0 (prompts waiting), got {burst_after!r}")
        if max_cloud_jobs is not None and (not isinstance(max_cloud_jobs, int) or max_cloud_jobs < 0):
            raise ValueError(f"max_cloud_jobs must be a whole number >= 0 or None, got {max_cloud_jobs!r}")
        self.burst_after = burst_after
        self.max_cloud_jobs = max_cloud_jobs
        self.held = held
        self.used: dict[Any, set[str]] = collections.defaultdict(set)  # sweep id (None: submits) -> prompt ids

    def cloud_jobs(self, sweep_id: str | None = None) -> int:
        """Prompts of a sweep (None: of plain submits) sent to a cloud backend so far."""
        return len(self.used.get(sweep_id, ()))

    def choose(self, state: Any, choices: list, pool: Any, waiting: int) -> list:
        """The servers (all with room, all able) this prompt may go to now; ``waiting``: prompts in
        the pool's queue, this one included."""
        clouds = [s for s in choices if s.transport.profile.cloud]
        if not clouds:
            return choices
        if len(clouds) < len(choices):
            return [s for s in choices if s not in clouds]  # locals first
        if all(s.transport.profile.cloud for s in pool.servers):
            return clouds  # only cloud backends: nothing to prefer
        spent = self.used[(state.tags or {}).get("sweep_id")]
        able = pool._able(state)
        loads = [
            (s.load, s.limit)
            for s in pool.up()
            if not s.transport.profile.cloud and not isinstance(able, Exception) and s in able
        ]
        if state.prompt_id not in spent and not may_burst(
            loads,
            waiting=waiting + self.held(),
            used=len(spent),
            burst_after=self.burst_after,
            max_cloud_jobs=self.max_cloud_jobs,
        ):
            return []
        spent.add(state.prompt_id)  # the pool sends it to one of these
        return clouds

    def stranded(self, state: Any, pool: Any) -> str | None:
        """Why a prompt the cloud may not take (its sweep's budget is spent) can never run: every
        local server able to run it has been down for ``give_up_after`` s. None while one may return."""
        give_up = pool.settings.give_up_after
        spent = self.used[(state.tags or {}).get("sweep_id")]
        if give_up is None or self.max_cloud_jobs is None or len(spent) < self.max_cloud_jobs:
            return None
        able = pool._able(state)
        local = [
            s for s in pool.servers if not s.transport.profile.cloud and not isinstance(able, Exception) and s in able
        ]
        now = time.monotonic()
        if any(s.health != "down" or s.down_since is None or now - s.down_since < give_up for s in local):
            return None
        return (
            f"prompt {state.prompt_id} was given up: its sweep's cloud budget (max_cloud_jobs={self.max_cloud_jobs}) "
            f"is spent and every local server that can run it has been down for {give_up:g} s"
        )
