"""What a finished job gives the user: output files of every kind, texts, timings.

Outputs are references, not bytes: nothing is downloaded until ``.data``/``.image`` is used (or
``.save()`` streams the file to disk), so results of large sweeps stay cheap to hold, print and
put into DataFrames. Every file a node reports is kept, whatever its key: the item's ``format``
(a MIME type, as VideoHelperSuite writes), then the node's ``animated`` flag, then the file's
extension decide its ``kind``, because ComfyUI reports videos and animations under ``images``.
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from . import _loop
from .errors import ComfyError, ProtocolError
from .history import check_entry
from .saving import fit_name

# (filename, subfolder, type) -> file bytes; Transport.view has this shape
Fetcher = Callable[[str, str, str], Awaitable[bytes]]

KINDS = ("image", "animated", "video", "audio", "latent", "mesh", "other")
IN_MEMORY = "websocket"  # the ``type`` of files that never were on the server (SaveImageWebsocket)

_TERMINAL = ("execution_success", "execution_error", "execution_interrupted")
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_FILES = frozenset({"animated", "text"})  # list-valued UI keys that hold no files
_EXTENSIONS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".jxl"), "image"),
    **dict.fromkeys((".gif", ".apng"), "animated"),
    **dict.fromkeys((".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg"), "video"),
    **dict.fromkeys((".flac", ".mp3", ".wav", ".opus", ".ogg", ".m4a", ".aac"), "audio"),
    ".latent": "latent",
    **dict.fromkeys((".glb", ".gltf", ".obj", ".fbx", ".stl", ".ply", ".usdz"), "mesh"),
}
_KEY_KINDS = {"audio": "audio", "latents": "latent", "3d": "mesh", "result": "mesh"}
_ANIMATED_FORMATS = ("gif", "webp", "apng")
_MIME = {".webm": "video/webm", ".flac": "audio/flac", ".opus": "audio/ogg", ".latent": "application/octet-stream"}
_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")


def kind_of(item: dict, animated: bool = False, key: str = "") -> str:
    """The kind of one output item: its ``format`` MIME type, then the node's ``animated`` flag,
    then the extension, then the key it came under (``audio``, ``latents``, ``3d``)."""
    fmt = item.get("format")
    if isinstance(fmt, str) and "/" in fmt:
        major, minor = fmt.lower().split("/", 1)
        if major in ("video", "audio"):
            return major
        if major == "image":
            return "animated" if animated or minor in _ANIMATED_FORMATS else "image"
    by_extension = _EXTENSIONS.get(os.path.splitext(str(item.get("filename", "")))[1].lower())
    if animated:
        return "video" if by_extension == "video" else "animated"
    return by_extension or _KEY_KINDS.get(key, "other")


def output_items(outputs: Any) -> Iterator[tuple[str, str, dict, str]]:
    """``(node_id, key, item, kind)`` for every file in a history entry's ``outputs``, in node
    order and then in the node's key order. Unknown keys are kept (their files are never dropped);
    ``Preview3D``'s ``result`` list names its model file by path."""
    if not isinstance(outputs, dict):
        return
    for node_id in sorted(outputs, key=_node_key):
        ui = outputs[node_id]
        if not isinstance(ui, dict):
            continue
        flags = ui.get("animated")
        animated = isinstance(flags, (list, tuple)) and any(flag is True for flag in flags)
        for key, value in ui.items():
            if key in _NOT_FILES or not isinstance(value, list):
                continue
            for item in value:
                if key == "result" and isinstance(item, str) and item:
                    item = _path_item(item)
                if isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]:
                    yield str(node_id), key, item, kind_of(item, animated, key)


def output_texts(outputs: Any) -> dict[str, list[str]]:
    """Node id -> the strings of its ``text`` output (``PreviewAny`` and friends), in node order."""
    texts: dict[str, list[str]] = {}
    if isinstance(outputs, dict):
        for node_id in sorted(outputs, key=_node_key):
            ui = outputs[node_id]
            value = ui.get("text") if isinstance(ui, dict) else None
            if isinstance(value, list):
                strings = [t for t in value if isinstance(t, str)]
                if strings:
                    texts[str(node_id)] = strings
    return texts


def _path_item(path: str) -> dict:
    """``"mesh/x.glb"`` or ``"x.glb [temp]"`` (a path relative to a ComfyUI folder) as a file item."""
    match = _ANNOTATION.match(path)
    name, type_ = (match.group(1), match.group(2)) if match else (path, "output")
    subfolder, _, filename = name.replace("\\", "/").rpartition("/")
    return {"filename": filename, "subfolder": subfolder, "type": type_}


@dataclass(frozen=True)
class FileRef:
    """One output file on a server, fetched through ``/view`` on first use and then cached.

    ``kind`` is one of :data:`KINDS`; ``key`` the output key it came under; ``format`` and
    ``frame_rate`` what the node said about it (VideoHelperSuite does). Files of type
    ``"websocket"`` (SaveImageWebsocket) exist only in memory: they have no ``url``.
    """

    filename: str
    subfolder: str
    type: str
    node_id: str
    server: str
    fetcher: Fetcher | None = field(default=None, repr=False, compare=False)
    kind: str = "image"
    key: str = field(default="images", repr=False)
    format: str | None = field(default=None, repr=False)
    frame_rate: float | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_item(cls, item: dict, node_id: str, server: str, fetcher: Fetcher | None, kind: str, key: str) -> FileRef:
        fmt, rate = item.get("format"), item.get("frame_rate")
        return cls(
            item["filename"],
            str(item.get("subfolder") or ""),
            str(item.get("type") or "output"),
            str(node_id),
            server,
            fetcher,
            kind,
            key,
            fmt if isinstance(fmt, str) else None,
            float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None,
        )

    @classmethod
    def in_memory(cls, data: bytes, filename: str, node_id: str, server: str, kind: str = "image") -> FileRef:
        """A file received over the WebSocket: its bytes are all there is."""
        ref = cls(filename, "", IN_MEMORY, str(node_id), server, None, kind, IN_MEMORY)
        ref._cache["data"] = data
        return ref

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
    def mime(self) -> str:
        """The MIME type a browser needs to play or show the file."""
        ext = os.path.splitext(self.filename)[1].lower()
        return _MIME.get(ext) or mimetypes.guess_type(self.filename)[0] or "application/octet-stream"

    @property
    def image(self):
        """The decoded ``PIL.Image.Image`` (for animations, positioned on the first frame).

        Videos, audio and other files are not pictures: use ``.first_frame``, ``.data`` or ``.save()``.
        """
        if self.kind not in ("image", "animated"):
            raise TypeError(
                f"{self.filename} is a {self.kind} file, not an image; use .first_frame for a video's "
                "first picture, .data for the bytes or .save(folder) to write it"
            )
        if "image" not in self._cache:
            self._cache["image"] = open_image(self.data)
        return self._cache["image"]

    @property
    def first_frame(self):
        """The first picture of an image, animation or video, as a ``PIL.Image.Image``."""
        if "first_frame" not in self._cache:
            self._cache["first_frame"] = first_frame(self.data)
        return self._cache["first_frame"]

    def save(self, folder_or_path: str | Path) -> Path:
        """Write the original bytes (metadata included), streamed to disk, and return the path.

        A path with a suffix is used as given. Otherwise it is a folder and the server's
        ``subfolder/filename`` is recreated inside it; those names come from the server, so any
        that could escape the folder ("..", absolute, drive letters, NUL) raise ProtocolError.
        """
        target = self.target(folder_or_path)
        return _loop.run_sync(write_file(self, target))

    async def asave(self, folder_or_path: str | Path) -> Path:
        return await _loop.run_async(write_file(self, self.target(folder_or_path)))

    def target(self, folder_or_path: str | Path) -> Path:
        """Where :meth:`save` writes (parents created)."""
        target = Path(folder_or_path)
        if target.suffix and not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            return target
        name = _safe_parts(self.filename)
        if len(name) != 1:
            raise ProtocolError(f"unsafe file name from the server: {self.filename!r}", url=self.server)
        parts = _safe_parts(self.subfolder, allow_empty=True) + name
        root = target.resolve()
        target = root.joinpath(*parts)
        if not target.resolve().is_relative_to(root):
            raise ProtocolError(f"unsafe file name from the server: {self.filename!r}", url=self.server)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @property
    def url(self) -> str | None:
        """The ``/view`` URL: how DataFrames hold this reference (a plain, parquet-friendly string).
        None for in-memory (WebSocket) files, which the server never stored."""
        if self.type == IN_MEMORY:
            return None
        return view_url(self.server, self.filename, self.subfolder, self.type)

    def as_input(self) -> InputName:
        """This file as the value of a loader input (``LoadImage.image``): ``"sub/name.png [output]"``,
        remembering which server holds it so a session can send the job there."""
        if self.type == IN_MEMORY:
            raise ComfyError(
                f"{self.filename} came over the WebSocket and is on no server; upload it first: "
                "session.upload(ref.data)"
            )
        name = f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename
        return InputName(f"{name} [{self.type}]", server=self.server, ref=self)

    @classmethod
    def from_url(cls, url: str, *, fetcher: Fetcher | None = None, node_id: str = "") -> FileRef:
        """The reference behind a ``/view`` URL (as found in a results frame's file columns)."""
        base, _, query = url.partition("/view?")
        args = parse_qs(query, keep_blank_values=True)
        if not base or "filename" not in args:
            raise ValueError(f"not a ComfyUI /view URL: {url!r}")
        filename = args["filename"][0]
        return cls(
            filename,
            args.get("subfolder", [""])[0],
            args.get("type", ["output"])[0],
            node_id,
            base,
            fetcher,
            kind_of({"filename": filename}),
        )

    def _repr_png_(self) -> bytes | None:
        if self.kind not in ("image", "animated"):
            return None
        if self.kind == "image" and self.data.startswith(b"\x89PNG"):
            return self.data
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    async def _download(self) -> bytes:
        if self.fetcher is None:
            raise ComfyError(f"{self.filename} is not attached to a session, so it cannot be fetched")
        return await self.fetcher(self.filename, self.subfolder, self.type)


ImageRef = FileRef  # the name before outputs of every kind: kept for existing code


class InputName(str):
    """A loader input value naming a server file (``"sub/x.png [output]"``) that remembers its
    server: a JSON string everywhere, and a hint for the session to run the job where the file is."""

    server: str
    ref: FileRef | None

    def __new__(cls, value: str, *, server: str = "", ref: FileRef | None = None) -> InputName:
        self = super().__new__(cls, value)
        self.server, self.ref = server, ref
        return self


async def write_file(ref: FileRef, path: Path) -> Path:
    """The one way a reference's file reaches the disk: bytes already held are written, anything
    else is streamed from the server (a fetcher that is a Transport's ``view`` streams through
    that Transport's ``download``), into a temporary file renamed once complete."""
    if "data" in ref._cache:
        _atomic_write(path, ref._cache["data"])
        return path
    owner = getattr(ref.fetcher, "__self__", None)
    download = getattr(owner, "download", None)
    if download is None:
        _atomic_write(path, await ref._download())
        return path
    await _loop.run_async(download(ref.filename, ref.subfolder, ref.type, path))
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".comfynb-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_image(data: bytes):
    """Decode an image (first frame of an animation) with Pillow."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def first_frame(data: bytes):
    """The first picture of image, animation or video bytes (videos need PyAV: ``pip install av``)."""
    try:
        return open_image(data).convert("RGB")
    except Exception:
        pass
    try:
        import av
    except ImportError:
        raise ComfyError("decoding a video's first frame needs PyAV: pip install 'comfynb[media]'") from None
    try:
        with av.open(io.BytesIO(data), "r") as container:
            for frame in container.decode(video=0):
                return frame.to_image()
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise ComfyError(f"not an image or video that can be decoded: {exc}") from None
    raise ComfyError("the video has no frames")


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
    return [fit_name(p) for p in parts]  # a 300-character name is shortened, not an OSError


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
    """A finished prompt: every output file (``files``) and the still ``images`` among them as lazy
    refs, ``texts`` by node, the raw ``outputs`` and ``history`` entry.

    ``missing`` names the output nodes whose files may be incomplete (SaveImageWebsocket frames sent
    while our socket was down), with the reason; empty when nothing is in doubt.
    """

    prompt_id: str
    server: str
    status: str
    outputs: dict[str, dict]
    images: list[FileRef]
    history: dict
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    files: list[FileRef] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[FileRef]:
        """The files of one kind (see :data:`KINDS`), in node order."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        return [f for f in self.files if f.kind == kind]

    @property
    def videos(self) -> list[FileRef]:
        return self.of_kind("video")

    @property
    def audio(self) -> list[FileRef]:
        return self.of_kind("audio")

    @property
    def animations(self) -> list[FileRef]:
        """Animated images (WebP, APNG, GIF): they are not ``images``, which are still pictures."""
        return self.of_kind("animated")

    @property
    def latents(self) -> list[FileRef]:
        return self.of_kind("latent")

    @property
    def meshes(self) -> list[FileRef]:
        return self.of_kind("mesh")

    @property
    def queue_wait(self) -> float | None:
        return _seconds(self.queued_at, self.started_at)

    @property
    def run_time(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)

    def with_websocket_images(self, refs: list[FileRef], missing: dict[str, str]) -> Result:
        """This result with the images a SaveImageWebsocket node sent (never in the history)."""
        return replace(self, images=self.images + refs, files=self.files + refs, missing=dict(missing))

    def __repr__(self) -> str:
        nodes = sorted({ref.node_id for ref in self.files}, key=_node_key)
        run = f", run_time={self.run_time:.3f}s" if self.run_time is not None else ""
        counts = "".join(
            f", {name}={len(refs)}"
            for name, refs in (("videos", self.videos), ("audio", self.audio), ("animations", self.animations))
            if refs
        )
        others = len(self.files) - len(self.images) - len(self.videos) - len(self.audio) - len(self.animations)
        more = f", other files={others}" if others else ""
        texts = f", texts from {sorted(self.texts, key=_node_key)}" if self.texts else ""
        missing = f", MAY BE MISSING outputs of {sorted(self.missing, key=_node_key)}" if self.missing else ""
        return (
            f"Result(prompt_id={self.prompt_id!r}, status={self.status!r}, "
            f"images={len(self.images)}{counts}{more} from nodes {nodes}{texts}, "
            f"outputs={sorted(self.outputs, key=_node_key)}{run}{missing})"
        )

    @classmethod
    def from_history(cls, prompt_id: str, entry: dict, *, server: str, fetcher: Fetcher | None) -> Result:
        """Parse a ``/history/{id}`` entry. The status comes from the recorded messages first,
        because ``status_str`` says "error" for interrupts and can say "success" after a cycle error."""
        entry = check_entry(entry, server, prompt_id)
        outputs = entry["outputs"] if isinstance(entry.get("outputs"), dict) else {}
        status_obj = entry["status"] if isinstance(entry.get("status"), dict) else {}
        messages = status_obj["messages"] if isinstance(status_obj.get("messages"), list) else []
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
        files = [
            FileRef.from_item(item, node_id, server, fetcher, kind, key)
            for node_id, key, item, kind in output_items(outputs)
        ]
        finished = next((stamps[k] for k in _TERMINAL if k in stamps), None)
        return cls(
            prompt_id=prompt_id,
            server=server,
            status=status,
            outputs=outputs,
            images=[f for f in files if f.kind == "image"],
            history=entry,
            queued_at=_ms_to_datetime(extra.get("create_time")),
            started_at=_ms_to_datetime(stamps.get("execution_start")),
            finished_at=_ms_to_datetime(finished),
            files=files,
            texts=output_texts(outputs),
        )
