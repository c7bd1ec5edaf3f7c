"""Output files on disk under names the file system accepts.

A server's file name too long for the file system (most allow 255 bytes; ComfyUI allows more) is
shortened on save, keeping its start, a hash of the whole name (so two long names stay distinct)
and its suffix, instead of failing with a raw ``OSError``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_MAX_NAME = 200  # bytes; leaves room for the ".part" of a download in progress


def fit_name(name: str) -> str:
    """``name``, or a shortened, still unique one if it is longer than file systems allow."""
    if len(name.encode()) <= _MAX_NAME:
        return name
    suffix = Path(name).suffix
    if len(suffix.encode()) > 16:
        suffix = ""
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[:40]}-{digest}{suffix}"
