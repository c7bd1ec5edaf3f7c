"""What a finished job gives the user: outputs, lazy image references, timings.

Images are references, not pixels: nothing is downloaded until ``.data``/``.image`` is used, so
results of large sweeps stay cheap to hold, print and put into DataFrames.
"""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from . import _loop
from .errors import ComfyError, ProtocolError

# (filename, subfolder, type) -> file bytes; Transport.view has this shape
Fetcher = Callable[[str, str, str], Awaitable[bytes]]

_IMAGE_KEYS = ("images", "gifs")
_TERMINAL = ("execution_success", "execution_error", "execution_interrupted")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ImageRef:
    """One output file on a server, fetched through ``/view`` on first use and then cached."""

    filename: str
    subfolder: str
    type: str
    node_id: str
    server: str
    fetcher: Fetcher | None = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    async def fetch(self) -> bytes:
        """The file's bytes, from any event loop; the download itself runs on comfynb's loop."""
        if "data" not in self._cache:
            self._cache["data"] = await _loop.run_async(self._download())
        return self._cache["data"]

    @property
    def data(self) -> bytes:
        """The file's bytes (blocking; inside a coroutine prefer ``await ref.fetch()``)."""
        if "data" not in self._cache:
            self._cache["data"] = _loop.run_sync(self._download())
        return self._cache["data"]

    @property
    def image(self):
        """The decoded ``PIL.Image.Image``."""
        if "image" not in self._cache:
            from PIL import Image

            img = Image.open(io.BytesIO(self.data))
            img.load()
            self._cache["image"] = img
        return self._cache["image"]

    def save(self, folder_or_path: str | Path) -> Path:
        """Write the original bytes (PNG metadata included) and return the path written.

        A path with a suffix is used as given. Otherwise it is a folder and the server's
        ``subfolder/filename`` is recreated inside it; those names come from the server, so any
        that could escape the folder ("..", absolute, drive letters, NUL) raise ProtocolError.
        """
        target = Path(folder_or_path)
        if target.suffix and not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
        else:
            name = _safe_parts(self.filename)
            if len(name) != 1:
                raise ProtocolError(f"unsafe file name from the server: {self.filename!r}", url=self.server)
            parts = _safe_parts(self.subfolder, allow_empty=True) + name
            root = target.resolve()
            target = root.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ProtocolError(f"unsafe file name from the server: {self.filename!r}", url=self.server)
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.data)
        return target

    @property
    def url(self) -> str:
        """The ``/view`` URL: how DataFrames hold this reference (a plain, parquet-friendly string)."""
        return view_url(self.server, self.filename, self.subfolder, self.type)

    @classmethod
    def from_url(cls, url: str, *, fetcher: Fetcher | None = None, node_id: str = "") -> ImageRef:
        """The reference behind a ``/view`` URL (as found in a results frame's ``images`` column)."""
        base, _, query = url.partition("/view?")
        args = parse_qs(query, keep_blank_values=True)
        if not base or "filename" not in args:
            raise ValueError(f"not a ComfyUI /view URL: {url!r}")
        return cls(
            args["filename"][0], args.get("subfolder", [""])[0], args.get("type", ["output"])[0], node_id, base, fetcher
        )

    def _repr_png_(self) -> bytes:
        if self.data.startswith(b"\x89PNG"):
            return self.data
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    async def _download(self) -> bytes:
        if self.fetcher is None:
            raise ComfyError(f"{self.filename} is not attached to a session, so it cannot be fetched")
        return await self.fetcher(self.filename, self.subfolder, self.type)


def view_url(server: str, filename: str, subfolder: str = "", type: str = "output") -> str:
    """The ``/view`` URL of an output file (also usable in a browser)."""
    return f"{server}/view?{urlencode({'filename': filename, 'subfolder': subfolder, 'type': type})}"


def _safe_parts(name: str, *, allow_empty: bool = False) -> list[str]:
    """Path components of a server-supplied name, refusing anything that leaves the folder."""
    if (
        not isinstance(name, str)
        or "\x00" in name
        or name.startswith(("/", "\\"))
        or _DRIVE.match(name)
        or (not name and not allow_empty)
    ):
        raise ProtocolError(f"unsafe file name from the server: {name!r}")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if any(p == ".." or _DRIVE.match(p) for p in parts):
        raise ProtocolError(f"unsafe file name from the server: {name!r}")
    return parts


def _ms_to_datetime(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _node_key(node_id: str) -> tuple:
    """Natural order of node ids, including dotted ids of expanded nodes ("15.0.0.3")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split("."))


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


@dataclass(frozen=True, repr=False)
class Result:
    """A finished prompt: ``outputs`` per node, ``images`` as lazy refs, the raw ``history`` entry."""

    prompt_id: str
    server: str
    status: str
    outputs: dict[str, dict]
    images: list[ImageRef]
    history: dict
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def queue_wait(self) -> float | None:
        return _seconds(self.queued_at, self.started_at)

    @property
    def run_time(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)

    def __repr__(self) -> str:
        nodes = sorted({ref.node_id for ref in self.images}, key=_node_key)
        run = f", run_time={self.run_time:.3f}s" if self.run_time is not None else ""
        return (
            f"Result(prompt_id={self.prompt_id!r}, status={self.status!r}, "
            f"images={len(self.images)} from nodes {nodes}, outputs={sorted(self.outputs, key=_node_key)}{run})"
        )

    @classmethod
    def from_history(cls, prompt_id: str, entry: dict, *, server: str, fetcher: Fetcher | None) -> Result:
        """Parse a ``/history/{id}`` entry. The status comes from the recorded messages first,
        because ``status_str`` says "error" for interrupts and can say "success" after a cycle error."""
        if not isinstance(entry, dict):
            raise ProtocolError(f"history entry of {prompt_id} is not an object", url=server)
        outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
        status_obj = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        messages = status_obj.get("messages") if isinstance(status_obj.get("messages"), list) else []
        stamps: dict[str, Any] = {}
        for msg in messages:
            if isinstance(msg, (list, tuple)) and len(msg) == 2 and isinstance(msg[1], dict):
                stamps.setdefault(msg[0], msg[1].get("timestamp"))
        if "execution_interrupted" in stamps:
            status = "interrupted"
        elif "execution_error" in stamps:
            status = "error"
        else:
            status = str(status_obj.get("status_str") or "success")
        prompt = entry.get("prompt")
        extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 and isinstance(prompt[3], dict) else {}
        images = [
            ImageRef(
                item["filename"],
                str(item.get("subfolder") or ""),
                str(item.get("type") or "output"),
                str(node_id),
                server,
                fetcher,
            )
            for node_id in sorted(outputs, key=_node_key)
            if isinstance(outputs[node_id], dict)
            for key in _IMAGE_KEYS
            if isinstance(outputs[node_id].get(key), list)
            for item in outputs[node_id][key]
            if isinstance(item, dict) and isinstance(item.get("filename"), str)
        ]
        finished = next((stamps[k] for k in _TERMINAL if k in stamps), None)
        return cls(
            prompt_id=prompt_id,
            server=server,
            status=status,
            outputs=outputs,
            images=images,
            history=entry,
            queued_at=_ms_to_datetime(extra.get("create_time")),
            started_at=_ms_to_datetime(stamps.get("execution_start")),
            finished_at=_ms_to_datetime(finished),
        )
