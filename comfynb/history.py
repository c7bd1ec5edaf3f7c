"""Checking a server's ``/history`` entries before anything reads them.

A history entry is the only record of how a prompt ended, so everything downstream (results,
frames, the journal) trusts its shape. A broken or hostile server can send any JSON, and a wrong
type deep inside (``status`` as a string, ``outputs`` as a list, a string timestamp) used to
surface as an ``AttributeError`` far away. Here each entry is checked once, field by field, and a
bad one becomes a :class:`~comfynb.errors.ProtocolError` naming the field, for that job only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ProtocolError

_IMAGE_KEYS = ("images", "gifs")
_FAILURES = ("execution_error", "execution_interrupted")
_MAX_MS = 9e12  # epoch ms: the year 2255; also rules out NaN and infinity


class EntryError(ProtocolError):
    """A history entry with an impossible shape; ``field`` names the first wrong field."""

    def __init__(self, message: str, *, url: str | None = None, field: str = ""):
        super().__init__(message, url=url)
        self.field = field


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: Any) -> bool:
    """A JSON number usable as epoch milliseconds (pandas' datetimes end in 2262)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < _MAX_MS


class _Checker:
    def __init__(self, url: str | None, prompt_id: str | None):
        self.url, self.prompt_id = url, prompt_id

    def fail(self, field: str, value: Any, expected: str) -> EntryError:
        whose = f" of prompt {self.prompt_id}" if self.prompt_id else ""
        where = f"{self.url} sent" if self.url else "got"
        return EntryError(
            f"{where} a malformed history entry{whose}: '{field}' is {_kind(value)} {value!r:.60}, expected {expected}",
            url=self.url,
            field=field,
        )

    def optional(self, field: str, value: Any, types: type | tuple, expected: str) -> None:
        bad_bool = isinstance(value, bool) and bool not in _tuple(types)
        if value is not None and (not isinstance(value, types) or bad_bool):
            raise self.fail(field, value, expected)

    def entry(self, entry: Any) -> None:
        if not isinstance(entry, Mapping):
            raise self.fail("entry", entry, "an object")
        self.prompt(entry.get("prompt"))
        self.outputs(entry.get("outputs"))
        self.status(entry.get("status"))
        self.optional("meta", entry.get("meta"), Mapping, "an object")

    def prompt(self, prompt: Any) -> None:
        if prompt is None:
            return
        if not isinstance(prompt, list):
            raise self.fail("prompt", prompt, "a list [number, prompt_id, graph, extra_data, outputs]")
        if len(prompt) > 2:
            self.optional("prompt[2]", prompt[2], Mapping, "the prompt's graph (an object)")
        if len(prompt) > 3:
            extra = prompt[3]
            self.optional("prompt[3]", extra, Mapping, "the extra_data object")
            if isinstance(extra, Mapping):
                if extra.get("create_time") is not None and not _number(extra["create_time"]):
                    raise self.fail("prompt[3].create_time", extra["create_time"], "a number (epoch ms, before 2255)")
                self.optional("prompt[3].comfynb", extra.get("comfynb"), Mapping, "comfynb's tags (an object)")

    def outputs(self, outputs: Any) -> None:
        if outputs is None:
            return
        if not isinstance(outputs, Mapping):
            raise self.fail("outputs", outputs, "an object {node_id: output}")
        for node_id, output in outputs.items():
            field = f"outputs.{node_id}"
            if not isinstance(output, Mapping):
                raise self.fail(field, output, "an object {kind: [items]}")
            for key in _IMAGE_KEYS:
                items = output.get(key)
                if items is None:
                    continue
                if not isinstance(items, list):
                    raise self.fail(f"{field}.{key}", items, "a list of files")
                for n, item in enumerate(items):
                    where = f"{field}.{key}[{n}]"
                    if not isinstance(item, Mapping):
                        raise self.fail(where, item, "a file object")
                    if not isinstance(item.get("filename"), str):
                        raise self.fail(f"{where}.filename", item.get("filename"), "a string")
                    for part in ("subfolder", "type"):
                        self.optional(f"{where}.{part}", item.get(part), str, "a string")

    def status(self, status: Any) -> None:
        if status is None:
            return
        if not isinstance(status, Mapping):
            raise self.fail("status", status, "an object {status_str, completed, messages}")
        self.optional("status.status_str", status.get("status_str"), str, "a string")
        self.optional("status.completed", status.get("completed"), bool, "true or false")
        messages = status.get("messages")
        if messages is None:
            return
        if not isinstance(messages, list):
            raise self.fail("status.messages", messages, "a list of [type, data] pairs")
        for n, message in enumerate(messages):
            where = f"status.messages[{n}]"
            if not isinstance(message, (list, tuple)) or len(message) != 2 or not isinstance(message[0], str):
                raise self.fail(where, message, "a [type, data] pair")
            kind, data = message
            if not isinstance(data, Mapping):
                raise self.fail(f"{where}[1]", data, "an object")
            if data.get("timestamp") is not None and not _number(data["timestamp"]):
                raise self.fail(f"{where}.timestamp", data["timestamp"], "a number (epoch ms, before 2255)")
            if kind in _FAILURES:
                self.optional(f"{where}.node_id", data.get("node_id"), (str, int), "a node id")
                for name in ("node_type", "exception_type", "exception_message"):
                    self.optional(f"{where}.{name}", data.get(name), str, "a string")
                trace = data.get("traceback")
                if trace is not None and not (isinstance(trace, list) and all(isinstance(t, str) for t in trace)):
                    raise self.fail(f"{where}.traceback", trace, "a list of strings")


def _tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def check_entry(entry: Any, url: str | None = None, prompt_id: str | None = None) -> dict:
    """``entry`` if every field comfynb reads has the type ComfyUI gives it; else an
    :class:`EntryError` (a ProtocolError) naming the first field that does not."""
    _Checker(url, prompt_id).entry(entry)
    return entry


def entry_problem(entry: Any, url: str | None = None, prompt_id: str | None = None) -> EntryError | None:
    """The :class:`EntryError` :func:`check_entry` would raise, or None (None for a missing entry)."""
    if entry is None:
        return None
    try:
        check_entry(entry, url, prompt_id)
    except EntryError as exc:
        return exc
    return None


def tags_in(entry: Any) -> dict:
    """The ``extra_data["comfynb"]`` tags of any entry, well-formed or not (``{}`` when absent)."""
    prompt = entry.get("prompt") if isinstance(entry, Mapping) else None
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 else None
    tags = extra.get("comfynb") if isinstance(extra, Mapping) else None
    return tags if isinstance(tags, dict) else {}
