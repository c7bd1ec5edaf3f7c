"""Comfy Cloud's own routes, where its API differs from local ComfyUI's in shape, not just in path.

Two things comfynb reads or writes there (``docs/cloud.md`` has the sources):

- **History.** The cloud has no paged ``/history``; ``GET /api/history_v2?max_items&offset``
  answers ``{"history": [...]}``, *newest first*, each entry with its ``prompt_id`` and a
  lightweight, object-shaped ``prompt`` (``{priority, prompt_id, extra_data}``), and
  ``GET /api/history_v2/{id}`` the full entry (``404`` if unknown). Entries are turned into the
  local shape (:func:`comfynb.cloud.local_entry`), so frames, the journal and ``resume`` treat
  them as any server's. Pages go from the newest entry back; a prompt that ends while we page
  pushes the others one place down, so a page can repeat the end of the one before: rows are
  deduplicated by ``prompt_id`` and the read stops at the first short page.
- **Uploads by content hash.** ``HEAD /api/assets/hash/blake3:<hex>`` says whether the cloud
  holds some content, and ``POST /api/assets/from-hash`` makes an asset of it without sending a
  byte. comfynb hashes an input with BLAKE3 (the ``blake3`` package, ``pip install
  comfynb[cloud]``), and when the cloud has it, asks for an ``input``-tagged asset under the name
  it would have uploaded, and puts the name the cloud answers into the loader input. Without the
  package, or when the cloud answers anything else, the file is uploaded as on a local server: the
  cloud's storage is content-addressed, so that costs bytes on the wire, never a second copy.
"""

from __future__ import annotations

import logging
import mimetypes
from typing import Any
from urllib.parse import quote

from . import cloud
from .errors import HTTPStatusError, ProtocolError
from .history import tags_in
from .transport import NotSupported, Transport

log = logging.getLogger(__name__)

_told_no_blake3 = False


# -- history --------------------------------------------------------------------------------


async def history_page(transport: Transport, max_items: int, offset: int) -> list[tuple[str, Any]]:
    """One page of ``/api/history_v2`` as ``(prompt_id, local-shaped entry)`` pairs, newest first.

    Raises :class:`NotSupported` when the route is gone (the docs mark it deprecated)."""
    path = "/history_v2"
    try:
        data = await transport.request_json("GET", path, params={"max_items": str(max_items), "offset": str(offset)})
    except HTTPStatusError as exc:
        if exc.status != 404:
            raise
        raise NotSupported(
            f"{transport.url} (Comfy Cloud) no longer serves /api/history_v2; a job's outcome is still read "
            "through /api/jobs/{id} (session jobs, resume, session.check)",
            url=transport.url,
            status=404,
        ) from None
    entries = data.get("history") if isinstance(data, dict) else data  # the spec wraps the array
    if not isinstance(entries, list):
        raise _shape_error(transport, path, 'an object {"history": [entries]}')
    page = []
    for raw in entries:
        pid, entry = cloud.local_entry(raw)
        if pid is None:
            raise _shape_error(transport, path, "entries that each name their prompt_id")
        page.append((pid, entry))
    return page


async def history_entry(transport: Transport, prompt_id: str) -> Any:
    """The full ``/api/history_v2/{id}`` entry in the local shape, or None if the cloud has none."""
    path = f"/history_v2/{quote(prompt_id, safe='')}"
    try:
        data = await transport.request_json("GET", path)
    except HTTPStatusError as exc:
        if exc.status == 404:
            return None
        raise
    entry = data.get(prompt_id) if isinstance(data, dict) else None
    if not isinstance(entry, dict):
        raise _shape_error(transport, path, "an object {prompt_id: entry}")
    return cloud.local_entry({"prompt_id": prompt_id, **entry})[1]


async def read_history(
    transport: Transport,
    *,
    tag: str | None = None,
    sweep_id: str | None = None,
    limit: int | None = None,
    page_size: int = 256,
) -> list[tuple[str, Any]]:
    """Matching ``(prompt_id, entry)`` pairs, oldest first (as :func:`comfynb.frames.read_history`),
    read newest first ``page_size`` at a time until a short page, or until ``limit`` matches.

    An entry whose list form leaves out ``extra_data`` (so its tags) is read whole from
    ``/api/history_v2/{id}``, so no row loses its parameters to the lightweight list.
    """
    if limit is not None and limit <= 0:
        return []
    page_size = max(1, page_size)
    found: dict[str, Any] = {}  # newest first
    offset = 0
    while True:
        page = await history_page(transport, page_size, offset)
        for pid, entry in page:
            if pid in found:  # pushed down by a prompt that ended meanwhile: seen on the page before
                continue
            if not _has_extra(entry):
                entry = await history_entry(transport, pid) or entry
            if _matches(entry, tag, sweep_id):
                found[pid] = entry
        if len(page) < page_size or (limit is not None and len(found) >= limit):
            break
        offset += len(page)
    newest_first = list(found.items())[:limit] if limit is not None else list(found.items())
    return newest_first[::-1]


def _shape_error(transport: Transport, path: str, expected: str) -> ProtocolError:
    return ProtocolError(f"{transport.url} is not Comfy Cloud as documented: GET /api{path} did not return {expected}")


def _has_extra(entry: Any) -> bool:
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    return not isinstance(prompt, list) or len(prompt) < 4 or prompt[3] is not None


def _matches(entry: Any, tag: str | None, sweep_id: str | None) -> bool:
    tags = tags_in(entry)
    return (tag is None or tags.get("tag") == tag) and (sweep_id is None or tags.get("sweep_id") == sweep_id)


# -- uploads by content hash ------------------------------------------------------------------


def content_hash(data: bytes) -> str | None:
    """``blake3:<hex>`` of ``data``, the form the cloud's asset routes take; None without ``blake3``."""
    global _told_no_blake3
    try:
        from blake3 import blake3
    except ImportError:
        if not _told_no_blake3:
            _told_no_blake3 = True
            log.info(
                "the blake3 package is not installed, so inputs are uploaded to Comfy Cloud even when it already "
                "holds them (pip install comfynb[cloud] lets comfynb ask first)"
            )
        return None
    return "blake3:" + blake3(data).hexdigest()


async def reuse(transport: Transport, data: bytes, filename: str) -> str | None:
    """The loader-input name of content the cloud already holds, made without sending it; None
    when it must be uploaded (the cloud lacks it, ``blake3`` is missing, or an answer is unclear)."""
    digest = content_hash(data)
    if digest is None:
        return None
    status, _ = await transport.call_json("HEAD", f"/assets/hash/{digest}")
    if status != 200:
        if status != 404:
            log.debug("%s: HEAD of a content hash answered HTTP %d; uploading", transport.url, status)
        return None
    body = {
        "hash": digest,
        "name": filename,
        "tags": ["input"],
        "mime_type": mimetypes.guess_type(filename)[0] or "application/octet-stream",
    }
    status, asset = await transport.call_json("POST", "/assets/from-hash", json=body, retry=True)
    name = asset.get("name") if isinstance(asset, dict) else None
    if status not in (200, 201) or not isinstance(name, str) or not name:
        log.debug("%s: from-hash answered HTTP %d without a name; uploading", transport.url, status)
        return None
    log.debug("%s already holds %s: no upload", transport.url, filename)
    return name
