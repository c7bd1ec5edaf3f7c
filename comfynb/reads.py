"""Reads of finished prompts' history entries, coalesced when many are asked for at once.

A sweep of quick prompts finishes them faster than one ``GET /history/{id}`` each can be read:
those reads then cost the client and the server more than the prompts themselves. So while one
read is in flight, the reads asked for meanwhile wait, and then go together as one
``GET /history?max_items=N`` (the newest N entries). A read asked for alone is the plain
``/history/{id}``. The answer is the same either way: the entry, or None where the server does
not have it (yet). Comfy Cloud has no window read; its reads go one by one.

The window reaches back to the oldest prompt waiting: it holds as many entries as reads were asked
for since that prompt's first one (each of our prompts that ends asks once), plus a margin for
other clients' prompts. An entry missing from a full window may be missing (written late: the
caller reads again) or older than the window (many other prompts ended since): a prompt missing
twice is read alone. The other entries a window brings are passed on (``on_entry``): among them
may be a prompt of ours whose final message was lost, ended and recorded but not asked about yet.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from .transport import Transport

_BATCH = 32  # prompts per window read: a real server's entries hold the whole graph
_MARGIN = 8  # entries beyond ours, for other clients' prompts that ended meanwhile
_MAX_WINDOW = 128


class HistoryReads:
    """One server's history reads; all calls on the session's loop."""

    def __init__(self, transport: Transport, on_entry: Callable[[str, Any], None] | None = None):
        self.transport = transport
        self.on_entry = on_entry  # told of the other entries a window brought (prompt_id, entry)
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._reading = False
        self._missed: dict[str, int] = {}  # prompt_id -> times it was missing from a full window
        self._asks = 0  # reads asked for so far
        self._since: dict[str, int] = {}  # prompt_id -> ``_asks`` at its first read still unanswered
        self._tasks: set[asyncio.Task] = set()

    async def get(self, prompt_id: str) -> Any:
        """The history entry of ``prompt_id`` as the server sent it, or None if it has none."""
        if self.transport.profile.cloud or self._missed.get(prompt_id, 0) >= 2:
            self._missed.pop(prompt_id, None)
            self._since.pop(prompt_id, None)
            return await self.transport.get_history(prompt_id)
        self._asks += 1
        self._since.setdefault(prompt_id, self._asks)
        if self._reading:
            future = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(prompt_id, []).append(future)
            return await future
        self._reading = True
        try:
            return (await self._window([prompt_id]))[prompt_id]
        finally:
            self._next()

    def _next(self) -> None:
        """Start the next read for the prompts that waited, or go idle."""
        if not self._waiting:
            self._reading = False
            return
        batch = dict(itertools.islice(self._waiting.items(), _BATCH))
        for prompt_id in batch:
            del self._waiting[prompt_id]
        task = asyncio.get_running_loop().create_task(self._read(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future]]) -> None:
        try:
            answers = await self._window(list(batch))
        except BaseException as exc:  # every waiting read fails with it (asyncio.CancelledError: closed)
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for prompt_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(answers.get(prompt_id))
        finally:
            self._next()

    async def _window(self, prompt_ids: list[str]) -> dict[str, Any]:
        if len(prompt_ids) == 1:
            self._missed.pop(prompt_ids[0], None)
            self._since.pop(prompt_ids[0], None)
            return {prompt_ids[0]: await self.transport.get_history(prompt_ids[0])}
        oldest = min(self._since.get(prompt_id, self._asks) for prompt_id in prompt_ids)
        size = min(self._asks - oldest + 1 + _MARGIN, _MAX_WINDOW)
        window = await self.transport.get_history_page(size)
        full = len(window) >= size
        if self.on_entry is not None:
            asked = set(prompt_ids)
            for prompt_id, entry in window.items():
                if prompt_id not in asked:
                    self.on_entry(prompt_id, entry)
        for prompt_id in prompt_ids:
            if prompt_id not in window and full:
                self._missed[prompt_id] = self._missed.get(prompt_id, 0) + 1
            else:  # found, or not on the server at all: a later read starts afresh
                self._missed.pop(prompt_id, None)
                self._since.pop(prompt_id, None)
        return {prompt_id: window.get(prompt_id) for prompt_id in prompt_ids}

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
