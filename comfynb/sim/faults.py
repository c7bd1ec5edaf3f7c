"""Fault injection: the ways a real ComfyUI deployment misbehaves, on request and reproducibly.

Every knob is off by default, can be changed while the simulator runs (``faults.update``), and
every random decision comes from one generator seeded at construction, so a scenario replays
the same way. ``counts`` records what was actually injected, so a test can tell a fault that
fired from one that did not.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from typing import Any

_DEFAULTS: dict[str, Any] = {
    "close_every": None,  # seconds: close every WebSocket this often
    "close_after": None,  # messages: close a socket once it has sent this many
    "drop": {},  # message type (or "executing_done", "preview", "*") -> probability
    "drop_for": {},  # prompt_id -> message types to drop for that prompt, always ("*": all targeted)
    "drop_next": [],  # one list of message types per prompt accepted from now on, moved into drop_for
    "stall_after": None,  # messages: the first socket to send this many goes silent (once)
    "empty_history": 0,  # reads: GET /history/{id} of a finished prompt answers {} this often first
    "http_errors": {},  # route ("/prompt", "/history", "*", ...) -> probability of an error answer
    "http_error_status": 500,  # the status of those answers (502: what a proxy in front would say)
    "lost_responses": {},  # route -> probability the request is handled but the answer is lost
    "latency": 0.0,  # seconds added to every HTTP response
    "slow_next": {},  # route -> seconds the next request there waits before it is handled (once)
}

DROP_LOG = 100_000  # dropped messages remembered in ``Faults.dropped``


def route_key(path: str) -> str:
    """The route a request path belongs to for fault matching: ``/api/history/x`` -> ``/history/x``."""
    return path[4:] if path.startswith("/api/") else path


class Faults:
    """Live fault settings plus what was injected (``counts``)."""

    # The knobs, set from ``_DEFAULTS`` and ``update`` (declared here for type checkers).
    close_every: float | None
    close_after: int | None
    drop: dict[str, float]
    drop_for: dict[str, Collection[str]]
    drop_next: list[Collection[str]]
    stall_after: int | None
    empty_history: int
    http_errors: dict[str, float]
    http_error_status: int
    lost_responses: dict[str, float]
    latency: float
    slow_next: dict[str, float]

    def __init__(self, seed: int = 0, **knobs: Any):
        self.counts: Counter[str] = Counter()
        # (time.monotonic(), prompt_id or None, kind) of every targeted message dropped: when it
        # would have been sent, so a benchmark can time the recovery from that moment
        self.dropped: deque[tuple[float, str | None, str]] = deque(maxlen=DROP_LOG)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stall_used = False
        self._history_reads: Counter[str] = Counter()
        for name, value in _DEFAULTS.items():
            setattr(self, name, value.copy() if isinstance(value, (dict, list)) else value)
        self.update(**knobs)

    def update(self, **knobs: Any) -> None:
        """Change knobs at run time (any thread). Re-setting ``stall_after`` re-arms it."""
        unknown = set(knobs) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown fault knob(s): {', '.join(sorted(unknown))}; known: {', '.join(_DEFAULTS)}")
        with self._lock:
            for name, value in knobs.items():
                if isinstance(_DEFAULTS[name], dict):
                    value = dict(value or {})
                elif isinstance(_DEFAULTS[name], list):
                    value = [list(kinds) for kinds in value or ()]
                setattr(self, name, value)
            if "stall_after" in knobs:
                self._stall_used = False
            if "empty_history" in knobs:
                self._history_reads.clear()

    def _chance(self, table: dict[str, float], key: str, fallback_key: str = "*") -> bool:
        p = table.get(key, table.get(fallback_key, 0.0))
        with self._lock:
            return p > 0 and self._rng.random() < p

    def _route_chance(self, table: dict[str, float], path: str) -> bool:
        path = route_key(path)
        for key, p in table.items():
            key = route_key(key)
            if key == "*" or path == key or path.startswith(key.rstrip("/") + "/"):
                with self._lock:
                    if p > 0 and self._rng.random() < p:
                        return True
        return False

    # -- decisions, each counted when it fires ------------------------------------------------

    def drop_message(self, kind: str, prompt_id: str | None = None) -> bool:
        """Whether to drop one targeted message of this kind (message type, "executing_done",
        "preview") about ``prompt_id``: always if ``drop_for`` names it, else by ``drop``'s odds."""
        chosen = self.drop_for.get(prompt_id) if prompt_id is not None and self.drop_for else None
        if (chosen is not None and (kind in chosen or "*" in chosen)) or (self.drop and self._chance(self.drop, kind)):
            self.counts["drop"] += 1
            self.counts[f"drop:{kind}"] += 1
            self.dropped.append((time.monotonic(), prompt_id, kind))
            return True
        return False

    def accepted(self, prompt_id: str) -> None:
        """A prompt was queued: the next ``drop_next`` entry, if any, now applies to it."""
        if self.drop_next:
            with self._lock:
                kinds = self.drop_next.pop(0) if self.drop_next else []
                if kinds:
                    self.drop_for = {**self.drop_for, prompt_id: kinds}

    def slow(self, path: str) -> float:
        """Seconds to hold this request before handling it (``slow_next``, used up once per route)."""
        if not self.slow_next:
            return 0.0
        path = route_key(path)
        with self._lock:
            for key, seconds in self.slow_next.items():
                route = route_key(key)
                if route == "*" or path == route or path.startswith(route.rstrip("/") + "/"):
                    self.counts["slow_next"] += 1
                    self.slow_next = {k: v for k, v in self.slow_next.items() if k != key}
                    return float(seconds)
        return 0.0

    def http_error(self, path: str) -> bool:
        if self.http_errors and self._route_chance(self.http_errors, path):
            self.counts["http_errors"] += 1
            return True
        return False

    def lose_response(self, path: str) -> bool:
        if self.lost_responses and self._route_chance(self.lost_responses, path):
            self.counts["lost_responses"] += 1
            return True
        return False

    def hide_history(self, prompt_id: str) -> bool:
        """Whether this read of a finished prompt's history should answer ``{}``."""
        if not self.empty_history:
            return False
        with self._lock:
            self._history_reads[prompt_id] += 1
            hide = self._history_reads[prompt_id] <= self.empty_history
        if hide:
            self.counts["empty_history"] += 1
        return hide

    def take_stall(self, sent: int) -> bool:
        """Whether a socket that has now sent ``sent`` messages is the one to stall."""
        if self.stall_after is None or self._stall_used or sent < self.stall_after:
            return False
        with self._lock:
            if self._stall_used:
                return False
            self._stall_used = True
        return True

    def __repr__(self) -> str:
        on = {n: getattr(self, n) for n, d in _DEFAULTS.items() if getattr(self, n) != d}
        return f"Faults({on})"
