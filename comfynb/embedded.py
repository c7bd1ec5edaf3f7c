"""Workflows embedded in files ComfyUI wrote: PNG, animated WebP, MP4/WebM, FLAC/MP3/Opus.

People share pictures, not JSON; every output of ComfyUI carries the API prompt that made it
(``prompt``) and usually the UI workflow (``workflow``), each stored as JSON text:

- PNG: tEXt (or iTXt/zTXt) chunks named ``prompt`` and ``workflow``;
- WebP: EXIF tag 0x0110 ``"prompt:{json}"`` and 0x010F (then 0x010E, ...) ``"workflow:{json}"``;
- MP4, WebM, FLAC, MP3, Opus: container tags ``prompt`` / ``workflow`` (read with PyAV, the
  ``media`` extra, since Pillow does not read containers).

Images are read with Pillow; nothing here trusts the file's name, only its first bytes.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WorkflowError

__all__ = ["Embedded", "extra_pnginfo", "is_media", "read_embedded"]

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n",)
_CONTAINER_MAGIC = (b"\x1aE\xdf\xa3", b"fLaC", b"ID3", b"OggS", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


@dataclass
class Embedded:
    """What a file carries: the API prompt, the UI workflow, and all its other JSON tags."""

    prompt: dict | None
    workflow: dict | None
    extra: dict[str, Any]
    kind: str  # "png", "webp", "video/audio container"


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _is_mp4(head: bytes) -> bool:
    return head[4:8] == b"ftyp"


def is_media(head: bytes) -> bool:
    """Whether these first bytes start a file this module reads (rather than JSON text)."""
    return head.startswith(_IMAGE_MAGIC + _CONTAINER_MAGIC) or _is_webp(head) or _is_mp4(head)


def _json_tags(items: dict[str, str], where: str) -> dict[str, Any]:
    out = {}
    for key, text in items.items():
        key = key.lower()
        if key not in ("prompt", "workflow", "comfynb") and not text.lstrip().startswith(("{", "[")):
            continue
        try:
            out[key] = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            if key in ("prompt", "workflow"):
                raise WorkflowError(f"{where}: its '{key}' tag is not valid JSON, so the file was damaged") from None
    return out


def _from_png(data: bytes, where: str) -> dict[str, Any]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        text = dict(getattr(img, "text", None) or img.info)
    return _json_tags({k: v for k, v in text.items() if isinstance(v, str)}, where)


def _from_webp(data: bytes, where: str) -> dict[str, Any]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        exif = img.getexif()
    items: dict[str, str] = {}
    for tag in range(0x0110, 0x0100, -1):
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and ":" in value:
            key, _, text = value.partition(":")
            if key and key.isidentifier():
                items.setdefault(key, text)
    return _json_tags(items, where)


def _from_container(data: bytes, where: str) -> dict[str, Any]:
    try:
        import av
    except ImportError:
        raise WorkflowError(
            f"{where} is a video or audio file; reading its workflow needs PyAV: pip install 'comfynb[media]'"
        ) from None
    try:
        with av.open(io.BytesIO(data)) as container:
            tags = dict(container.metadata)
            for stream in container.streams:
                for key, value in stream.metadata.items():
                    tags.setdefault(key, value)
    except av.FFmpegError as exc:
        raise WorkflowError(f"{where} cannot be read as a video or audio file: {exc}") from None
    return _json_tags({k: v for k, v in tags.items() if isinstance(v, str)}, where)


def read_embedded(source: str | os.PathLike | bytes, what: str | None = None) -> Embedded:
    """The workflow tags of a PNG, WebP, MP4/WebM or FLAC/MP3/Opus file (path or bytes).

    Raises WorkflowError when the file carries neither a ``prompt`` nor a ``workflow``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), what or "the file's bytes"
    else:
        path = Path(source)
        data, where = path.read_bytes(), what or f"'{path}'"
    head = data[:16]
    if head.startswith(_IMAGE_MAGIC):
        kind, read = "png", _from_png
    elif _is_webp(head):
        kind, read = "webp", _from_webp
    elif is_media(head):
        kind, read = "video/audio container", _from_container
    else:
        raise WorkflowError(f"{where} is not a PNG, WebP, MP4, WebM, FLAC, MP3 or Opus file")
    try:
        tags = read(data, where)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's ways of saying "damaged"
        raise WorkflowError(f"{where} looks like a {kind} file but cannot be read: {exc}") from None
    prompt, workflow = tags.pop("prompt", None), tags.pop("workflow", None)
    if not isinstance(prompt, dict) and not isinstance(workflow, dict):
        raise WorkflowError(
            f"{where} carries no workflow: a {kind} from ComfyUI stores it as 'prompt' and 'workflow' "
            "metadata, which this file lacks (it was not made by ComfyUI, or its metadata was stripped, "
            "e.g. by an image host or an editor)."
        )
    return Embedded(
        prompt if isinstance(prompt, dict) else None, workflow if isinstance(workflow, dict) else None, tags, kind
    )


def extra_pnginfo(tags: dict | None, ui: dict | None) -> dict:
    """``extra_data`` entries that make the server write the UI workflow (key ``workflow``, as the
    frontend sends it) and comfynb's tags (key ``comfynb``: sweep id, row, parameters) into every
    output file, since files outlive the server's capped history."""
    info: dict = {}
    if ui is not None:
        info["workflow"] = ui
    if tags is not None:
        info["comfynb"] = tags
    return {"extra_pnginfo": info} if info else {}
