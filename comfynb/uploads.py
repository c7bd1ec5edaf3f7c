"""Input files for the servers: images, videos, audio and masks, named by content.

Used by sessions (``upload``, ``upload_mask``), sweeps (image values) and chaining (an output of
one server copied to another). Naming by content lets the server, which reuses a name when the
content matches, keep one copy of each file however often it is uploaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import cloudapi
from .errors import ComfyError
from .results import FileRef

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")


def is_image(value: Any) -> bool:
    """Values a sweep uploads instead of sending: PIL images, bytes, paths (``str`` is a server name)."""
    from PIL import Image

    return isinstance(value, (Image.Image, bytes, bytearray, memoryview, os.PathLike))


# leading bytes of the media files ComfyUI's loaders read, for bytes given without a name
_MAGIC = (
    (0, b"\x1aE\xdf\xa3", ".webm"),
    (4, b"ftypqt", ".mov"),
    (4, b"ftyp", ".mp4"),
    (0, b"fLaC", ".flac"),
    (0, b"OggS", ".ogg"),
    (0, b"ID3", ".mp3"),
    (8, b"WAVE", ".wav"),
    (8, b"AVI ", ".avi"),
)


def _extension(data: bytes) -> str:
    """The extension of image, video or audio bytes (images by Pillow, media by their magic bytes)."""
    from PIL import Image

    try:
        return "." + (Image.open(io.BytesIO(data)).format or "png").lower().replace("jpeg", "jpg")
    except Exception:
        pass
    for offset, magic, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return ".mp3"
    raise ValueError(
        "the bytes given are not an image Pillow reads, nor a video or audio file comfynb recognises "
        "(mp4, mov, webm, avi, flac, ogg/opus, mp3, wav); pass a path instead, whose extension is kept"
    )


def image_payload(image: Any, name: str | None = None) -> tuple[bytes, str]:
    """The bytes to upload (an image, video or audio file) and a content-addressed file name
    that keeps the file's extension (the server's loaders choose files by it).

    Naming by content means the server, which reuses a name when the content matches, keeps one
    copy of each file however often and from however many sessions it is uploaded. ``name``
    (for bytes) gives the stem and extension to use.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data, stem, ext = buf.getvalue(), "comfynb", ".png"
    elif isinstance(image, os.PathLike):
        path = Path(image)
        data, stem, ext = path.read_bytes(), _UNSAFE.sub("_", path.stem)[:60] or "image", path.suffix.lower()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if name:
            stem, ext = _UNSAFE.sub("_", Path(name).stem)[:60] or "comfynb", Path(name).suffix.lower()
        else:
            stem, ext = "comfynb", _extension(data)
    else:
        raise TypeError(f"upload takes a PIL image, a path, bytes or an output FileRef, not {type(image).__name__}")
    if not _SUFFIX.fullmatch(ext):
        ext = ".png"
    return data, f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}{ext}"


async def upload(transport, image: Any, cache: dict) -> str:
    """Upload once per content and server; the name to put into a loader input (``LoadImage``,
    ``LoadVideo``, ``LoadAudio``). An output ``FileRef`` is fetched from its server first.

    ``cache`` maps (server, file name) to the name the server returned; it skips repeated uploads
    within a session, and the server itself skips writing content it already holds under that name.
    Comfy Cloud is asked first whether it holds the content (:func:`comfynb.cloudapi.reuse`): then
    no byte is sent, whichever session uploaded it before.
    """
    if isinstance(image, FileRef):
        data, filename = image_payload(await image.fetch(), image.filename)
    else:
        data, filename = image_payload(image)
    key = (transport.url, filename)
    if key not in cache:
        name = await cloudapi.reuse(transport, data, filename) if transport.profile.cloud else None
        cache[key] = name if name is not None else _input_name(await transport.upload_image(data, filename))
    return cache[key]


def _input_name(answer: dict) -> str:
    sub = str(answer.get("subfolder") or "")
    return f"{sub}/{answer['name']}" if sub else str(answer["name"])


def mask_payload(mask: Any) -> bytes:
    """The RGBA PNG ``/upload/mask`` wants from a mask: an ``L`` image (or 2-D array, or a path to
    one) where white marks the masked area becomes alpha = 255 - mask, since LoadImage's MASK is
    1 - alpha; an RGBA image is taken as it is (its alpha is the mask, ComfyUI's convention)."""
    from PIL import Image

    if isinstance(mask, os.PathLike | str):
        mask = Image.open(mask)
    elif isinstance(mask, (bytes, bytearray, memoryview)):
        mask = Image.open(io.BytesIO(bytes(mask)))
    elif isinstance(mask, np.ndarray):
        array = mask.astype(np.float64)
        if array.ndim != 2:
            raise ValueError(f"a mask array must be 2-D (height x width), not of shape {mask.shape}")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        mask = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if not isinstance(mask, Image.Image):
        raise TypeError(f"a mask is a PIL image, a 2-D array, a path or PNG bytes, not {type(mask).__name__}")
    if mask.mode != "RGBA":
        alpha = Image.eval(mask.convert("L"), lambda v: 255 - v)
        mask = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        mask.putalpha(alpha)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def original_ref(original: Any) -> dict:
    """``original_ref`` for ``/upload/mask``: from an output ``FileRef`` or a loader input name
    (``"sub/x.png"``, ``"x.png [output]"``; plain names are input files)."""
    if isinstance(original, FileRef):
        if original.type == "websocket":
            raise ComfyError(f"{original.filename} is on no server; upload it first and mask the uploaded name")
        return {"filename": original.filename, "subfolder": original.subfolder, "type": original.type}
    if not isinstance(original, str) or not original:
        raise TypeError(f"the original of a mask is a FileRef or an input name, not {original!r:.60}")
    name, type_ = original, "input"
    for kind in ("input", "output", "temp"):
        if original.endswith(f" [{kind}]"):
            name, type_ = original[: -len(kind) - 3], kind
    subfolder, _, filename = name.rpartition("/")
    return {"filename": filename, "subfolder": subfolder, "type": type_}


async def upload_mask(transport, mask: bytes, original: dict) -> str:
    """Send a mask for ``original`` (an ``original_ref``) to ``/upload/mask``: the server copies
    the mask's alpha into that image and saves the result as an input file; its name is returned.
    The name is addressed by mask and original, so repeating an upload overwrites the same file."""
    digest = hashlib.sha256(mask + json.dumps(original, sort_keys=True).encode()).hexdigest()[:16]
    stem = _UNSAFE.sub("_", Path(original["filename"]).stem)[:40] or "image"
    answer = await transport.upload_image(
        mask, f"{stem}-mask-{digest}.png", subfolder="", overwrite=True, original_ref=original
    )
    return _input_name(answer)
