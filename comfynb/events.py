"""WebSocket frames -> typed events.

Parsing never raises: a socket that sends junk must not take the connection down, so anything
malformed becomes ``None`` and is skipped by the caller. Binary layouts follow protocol §4.4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Sent as the first text frame, so previews arrive as type-4 frames that carry their prompt_id.
FEATURE_FLAGS: dict = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}

_PREVIEW_IMAGE = 1
_TEXT = 3
_PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}


@dataclass(frozen=True, slots=True)
class Event:
    """One JSON message. Unknown types are kept (callers ignore them) for the debug ring buffer."""

    type: str
    data: dict
    prompt_id: str | None

    @property
    def done(self) -> bool:
        """The only reliable completion signal: ``executing`` with ``node: null`` for a prompt."""
        return self.type == "executing" and self.prompt_id is not None and self.data.get("node", "") is None

    @property
    def queue_remaining(self) -> int | None:
        if self.type != "status":
            return None
        try:
            value = self.data["status"]["exec_info"]["queue_remaining"]
        except (KeyError, TypeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Preview:
    """A preview image. Type 1 frames carry no prompt_id: only the job running on our socket can own them."""

    image: bytes
    mime: str
    prompt_id: str | None
    node_id: str | None


@dataclass(frozen=True, slots=True)
class Text:
    """Progress text of a node; broadcast by the server and without prompt_id."""

    node_id: str
    text: str


def parse_text(raw: str | bytes) -> Event | None:
    try:
        msg = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(msg, dict):
        return None
    type_, data = msg.get("type"), msg.get("data", {})
    if not isinstance(type_, str) or not isinstance(data, dict) or not _well_formed(type_, data):
        return None
    prompt_id = data.get("prompt_id")
    return Event(type_, data, prompt_id if isinstance(prompt_id, str) else None)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _well_formed(kind: str, data: dict) -> bool:
    """Whether the fields comfynb reads from a message of this kind have ComfyUI's types; a
    message that does not is junk, skipped like unparsable text (the history decides anyway)."""
    node = data.get("node")
    if kind in ("executing", "progress", "executed") and node is not None and not isinstance(node, str):
        return False
    if kind == "progress":
        return all(_number(data.get(key, 0)) for key in ("value", "max"))
    if kind == "executed":
        return data.get("output") is None or isinstance(data["output"], dict)
    nodes = data.get("nodes")
    if kind == "execution_cached" and nodes is not None:
        return isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)
    if kind == "progress_state" and nodes is not None:
        return isinstance(nodes, dict) and all(isinstance(v, dict) for v in nodes.values())
    return True


def parse_binary(raw: bytes) -> Preview | Text | None:
    if len(raw) < 8:
        return None
    kind = int.from_bytes(raw[:4], "big")
    word = int.from_bytes(raw[4:8], "big")
    if kind == _PREVIEW_IMAGE:
        mime = _IMAGE_FORMATS.get(word)
        return Preview(raw[8:], mime, None, None) if mime else None
    if kind not in (_TEXT, _PREVIEW_IMAGE_WITH_METADATA) or len(raw) < 8 + word:
        return None
    head, body = raw[8 : 8 + word], raw[8 + word :]
    try:
        if kind == _TEXT:
            return Text(head.decode("utf-8"), body.decode("utf-8", errors="replace"))
        meta: Any = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    mime = meta.get("image_type")
    if not isinstance(mime, str):
        mime = "image/png" if body.startswith(b"\x89PNG") else "image/jpeg"
    return Preview(
        body,
        mime,
        _str_or_none(meta.get("prompt_id")),
        _str_or_none(meta.get("node_id")),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
