"""The simulator's input/output/temp folders and ComfyUI's rules for naming and finding files.

Saved images follow ComfyUI's counter (``<prefix>_00001_.png``, next free number per prefix and
subfolder). Paths that a client names are resolved with the same checks as ComfyUI's ``/view``
and upload routes, so escaping a folder is refused the same way.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from .metadata import png_info

TYPES = ("input", "output", "temp")


def annotated(name: str) -> tuple[str, str | None]:
    """Split a ``"name.png [output]"`` style annotation off a file name."""
    for kind in TYPES:
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix) - 1], kind
    return name, None


def _expand(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year)):
        prefix = prefix.replace(key, str(value))
    for key, value in (
        ("%month%", now.tm_mon),
        ("%day%", now.tm_mday),
        ("%hour%", now.tm_hour),
        ("%minute%", now.tm_min),
        ("%second%", now.tm_sec),
    ):
        prefix = prefix.replace(key, str(value).zfill(2))
    return prefix


def _next_counter(folder: Path, filename: str) -> int:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        return 1
    n, best = len(filename), 0
    target = os.path.normcase(filename)
    for name in names:
        if os.path.normcase(name[:n]) == target and name[n : n + 1] == "_":
            try:
                best = max(best, int(name[n + 1 :].split("_")[0]))
            except ValueError:
                pass
    return best + 1


def same_content(path: Path, data: bytes) -> bool:
    return hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


class Files:
    """The three folders under one root, plus the save counters (kept across restarts)."""

    def __init__(self, root: Path):
        self.root = root
        self.dirs = {kind: (root / kind).resolve() for kind in TYPES}
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        self._next: dict[tuple[Path, str], int] = {}

    def reserve(
        self,
        filename_prefix: str,
        type: str = "output",
        ext: str = "png",
        size: tuple[int, int] = (0, 0),
        sep: str = "_",
    ) -> tuple[Path, str]:
        """The next free ``<prefix>_<counter>_.<ext>`` (ComfyUI's folder_paths.get_save_image_path),
        as (path, subfolder); ``sep=""`` gives VideoHelperSuite's ``<prefix>_<counter>.<ext>``."""
        base = self.dirs[type]
        if "%" in filename_prefix:
            filename_prefix = _expand(filename_prefix, *size)
        norm = os.path.normpath(filename_prefix)
        subfolder, filename = os.path.dirname(norm), os.path.basename(norm)
        folder = (base / subfolder).resolve()
        if os.path.commonpath((base, folder)) != str(base):
            raise Exception(
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {folder}\n         output_dir: {base}"
            )
        key = (folder, filename)
        counter = self._next.get(key) or _next_counter(folder, filename)
        path = folder / f"{filename}_{counter:05}{sep}.{ext}"
        if path.exists():  # someone else wrote there: rescan like ComfyUI
            counter = _next_counter(folder, filename)
            path = folder / f"{filename}_{counter:05}{sep}.{ext}"
        self._next[key] = counter + 1
        folder.mkdir(parents=True, exist_ok=True)
        return path, subfolder

    def save_image(
        self, image: Any, filename_prefix: str, type: str = "output", text: dict[str, str] | None = None
    ) -> dict:
        path, subfolder = self.reserve(filename_prefix, type, "png", image.size)
        image.save(path, pnginfo=png_info(text or {}), compress_level=4)
        return {"filename": path.name, "subfolder": subfolder, "type": type}

    def resolve_input(self, name: str) -> Path:
        name, kind = annotated(name)
        path = self.dirs[kind or "input"] / name
        if not path.is_file():
            raise FileNotFoundError(f"Invalid image file: {name}")
        return path

    def view_path(self, query: Any) -> tuple[int, Path | None]:
        """Resolve ``/view`` query parameters: (status, file) with ComfyUI's 400/403/404 rules."""
        name, kind = annotated(query["filename"])
        if not name or name[0] == "/" or ".." in name:
            return 400, None
        base = self.dirs.get(kind or query.get("type", "output"))
        if base is None:
            return 400, None
        folder = base
        if "subfolder" in query:
            folder = Path(os.path.abspath(os.path.join(base, query["subfolder"])))
            if os.path.commonpath((folder, base)) != str(base):
                return 403, None
        path = folder / os.path.basename(name)
        return (200, path) if path.is_file() else (404, None)

    def upload_target(self, type_: str | None, subfolder: str, filename: str) -> tuple[Path, Path] | None:
        """(folder, path) for an upload, None if it would escape; unknown types raise (ComfyUI: 500)."""
        base = self.dirs[type_ or "input"] if (type_ or "input") in TYPES else None
        if base is None:
            raise ValueError(f"unknown upload type {type_!r}")
        folder = Path(os.path.join(base, os.path.normpath(subfolder)))
        path = Path(os.path.abspath(os.path.join(folder, filename)))
        if os.path.commonpath((base, path)) != str(base):
            return None
        return folder, path
