"""The timing and retry policy a Session hands down to its pool and servers, as one immutable value.

Lower layers get their settings this way instead of reaching back into the session, so a
:class:`~comfynb.server.Server` or :class:`~comfynb.pool.Pool` can be built and tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Seconds and counts; the defaults are the ones a :class:`~comfynb.session.Session` user gets.

    ``sign_delay``: after a sign on the socket that one of our prompts ended without its final
    message (another prompt started, the queue shrank or emptied), how long to wait for that
    message before asking the server; the final message normally follows within microseconds.
    """

    retries: int = 3
    backoff: float = 0.2
    resubmit_lost: bool = True
    max_attempts: int = 3
    reconcile_after: float = 5.0
    sign_delay: float = 0.02
    down_after: float = 5.0
    failover_after: float = 30.0
    give_up_after: float | None = 300.0
    on_missing_outputs: str = "rerun"  # WebSocket outputs in doubt: "rerun", "raise" or "keep" (comfynb.wsoutputs)
    max_queue_wait: float | None = 3600.0  # a POST refused as busy (429) for this long ends its job (QueueFull)

    def __post_init__(self) -> None:
        for name in ("backoff", "reconcile_after", "sign_delay", "down_after", "failover_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.give_up_after is not None and not self.give_up_after >= 0:
            raise ValueError(f"give_up_after must be seconds >= 0 or None, got {self.give_up_after!r}")
        if self.max_queue_wait is not None and not self.max_queue_wait >= 0:
            raise ValueError(f"max_queue_wait must be seconds >= 0 or None, got {self.max_queue_wait!r}")
