"""History entries -> pandas DataFrames, so results can be rebuilt from the server alone.

A prompt's row needs nothing but its history entry: the sweep parameters travel in
``extra_data["comfynb"]`` and the timings in ``status.messages``. That is what lets a new process
(after a dead kernel) rebuild the frame of a sweep it never saw.

File columns hold ``/view`` URLs (plain strings): parquet-friendly, usable in a browser, and
turned back into fetchable references by :meth:`comfynb.results.FileRef.from_url`. ``images``
(still pictures) is always there; ``videos``, ``animations``, ``audio``, ``latents``, ``meshes``,
``other_files`` and ``texts`` (the strings of text outputs) are added when some row has them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import _loop, cloudapi
from .history import EntryError, check_entry, entry_problem, tags_in
from .results import output_items, output_texts, view_url
from .tracker import SUCCESS
from .transport import NotSupported, Transport

log = logging.getLogger(__name__)

STATUSES = ("success", "error", "interrupted", "cancelled", "lost", "pending", "queued", "running")
COLUMNS = (
    "prompt_id",
    "status",
    "queued_at",
    "started_at",
    "finished_at",
    "queue_wait",
    "run_time",
    "images",
    "error",
    "server",
    "tag",
    "sweep_id",
    "index",
)
# output kind -> the column holding its /view URLs (as in Result.files, in the same node order)
KIND_COLUMNS = {
    "image": "images",
    "video": "videos",
    "animated": "animations",
    "audio": "audio",
    "latent": "latents",
    "mesh": "meshes",
    "other": "other_files",
}
MEDIA_COLUMNS = (*(c for c in KIND_COLUMNS.values() if c != "images"), "texts")  # present when used
_TERMINAL_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")
PAGE_SIZE = 256


def image_url(server: str, item: Mapping[str, Any]) -> str:
    """The ``/view`` URL of one output item: the frame's lightweight image reference."""
    return view_url(
        server, str(item.get("filename", "")), str(item.get("subfolder") or ""), str(item.get("type") or "output")
    )


def tags_of(entry: Mapping[str, Any]) -> dict:
    """The ``extra_data["comfynb"]`` tags of a history entry (``{}`` for foreign or malformed prompts)."""
    return tags_in(entry)


def _error_text(kind: str, data: Mapping[str, Any]) -> str:
    where = f"node {data.get('node_id')} ({data.get('node_type')})"
    if kind == "execution_interrupted":
        return f"interrupted at {where}"
    message = str(data.get("exception_message", "")).strip()
    return f"{where}: {data.get('exception_type', 'Error')}: {message}"


def history_row(prompt_id: str, entry: Mapping[str, Any], server: str) -> dict:
    """One frame row (times as epoch ms) from one history entry.

    Interrupts are recorded by ComfyUI as ``status_str: "error"``, and some execution errors leave
    ``status_str: "success"``, so the outcome comes from the messages first. A malformed entry
    gives an ``error`` row naming the wrong field (its tags kept where they can be read).
    """
    try:
        check_entry(entry, server, prompt_id)
    except EntryError as problem:
        return {
            "prompt_id": prompt_id,
            "status": "error",
            "images": [],
            "error": f"{type(problem).__name__}: {problem}",
            "server": server,
            **_tag_columns(tags_in(entry)),
        }
    prompt: Sequence[Any] = entry.get("prompt") or ()
    extra = prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}
    status_obj = entry.get("status") or {}
    started = finished = None
    status = error = None
    for message in status_obj.get("messages") or ():
        try:
            kind, data = message
        except (TypeError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if kind == "execution_start":
            started = data.get("timestamp")
        elif kind in _TERMINAL_MESSAGES:
            if kind == "execution_error" and data.get("exception_type") == "ExecutionBlocked":
                continue
            finished = data.get("timestamp", finished)
            if kind == "execution_success":
                status = status or "success"
            else:
                status = "interrupted" if kind == "execution_interrupted" else "error"
                error = _error_text(kind, data)
    if status is None:  # no outcome message: trust status_str (servers before #2523 have no status)
        ok = status_obj.get("status_str", "success") == "success" and status_obj.get("completed", True)
        status = "success" if ok else "error"
    outputs = entry.get("outputs") or {}
    files: dict[str, list[str]] = {"images": []}
    for _node, _key, item, kind in output_items(outputs):
        files.setdefault(KIND_COLUMNS[kind], []).append(image_url(server, item))
    texts = [text for strings in output_texts(outputs).values() for text in strings]
    if texts:
        files["texts"] = texts
    return {
        **files,
        "prompt_id": prompt_id,
        "status": status,
        "queued_at": extra.get("create_time"),
        "started_at": started,
        "finished_at": finished,
        "error": error,
        "server": server,
        **_tag_columns(tags_in(entry)),
    }


def _tag_columns(tags: Mapping[str, Any]) -> dict:
    """params, tag, sweep_id and index from comfynb's tags, each dropped if of the wrong type
    (tags are JSON the server echoes back: a foreign or broken one must not break the frame)."""
    params, index = tags.get("params"), tags.get("index")
    return {
        "params": params if isinstance(params, dict) else {},
        "tag": tags.get("tag") if isinstance(tags.get("tag"), str) else None,
        "sweep_id": tags.get("sweep_id") if isinstance(tags.get("sweep_id"), str) else None,
        "index": index if isinstance(index, int) and not isinstance(index, bool) else None,
    }


def _ms_to_utc(values: list) -> pd.DatetimeIndex:
    array = np.array([np.nan if v is None else v for v in values], dtype="float64")
    return pd.to_datetime(array, unit="ms", utc=True)


def frame_from_rows(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (as made by :func:`history_row`) -> the frame: swept params first, then COLUMNS.

    Parameter columns are the union of every row's params, in first-seen order.
    """
    params: dict[str, list] = {}
    fixed: dict[str, list] = {name: [] for name in (*COLUMNS, *MEDIA_COLUMNS)}
    for n, row in enumerate(rows, 1):
        for key, value in (row.get("params") or {}).items():
            column = params.get(key)
            if column is None:
                column = params[key] = [None] * (n - 1)
            column.append(value)
        for name, column in fixed.items():
            column.append(row.get(name))
        for column in params.values():
            if len(column) < n:
                column.append(None)
    queued, started, finished = (_ms_to_utc(fixed[k]) for k in ("queued_at", "started_at", "finished_at"))
    data: dict[str, Any] = {key: pd.Series(values, dtype=_param_dtype(values)) for key, values in params.items()}
    data.update(
        prompt_id=pd.Series(fixed["prompt_id"], dtype="str"),
        status=pd.Categorical(fixed["status"], categories=STATUSES),
        queued_at=queued,
        started_at=started,
        finished_at=finished,
        queue_wait=(started - queued).total_seconds(),
        run_time=(finished - started).total_seconds(),
        images=pd.Series([list(v or ()) for v in fixed["images"]], dtype=object),
        **{
            name: pd.Series([list(v or ()) for v in fixed[name]], dtype=object)
            for name in MEDIA_COLUMNS
            if any(fixed[name])
        },
        error=pd.Series(fixed["error"], dtype="str"),
        server=pd.Series(fixed["server"], dtype="str"),
        tag=pd.Series(fixed["tag"], dtype="str"),
        sweep_id=pd.Series(fixed["sweep_id"], dtype="str"),
        index=pd.array(fixed["index"], dtype="Int64"),
    )
    return pd.DataFrame(data)


def _param_dtype(values: list) -> type[object] | None:
    """Let pandas infer numbers and strings, but keep JSON lists/dicts as objects (parquet-safe)."""
    return object if any(isinstance(v, (list, dict)) for v in values) else None


def frame_from_history(items: Iterable[tuple[str, Mapping[str, Any]]], server: str) -> pd.DataFrame:
    """The frame of ``(prompt_id, history entry)`` pairs from one server."""
    return frame_from_rows(history_row(pid, entry, server) for pid, entry in items)


def _matches(entry: Mapping[str, Any], tag: str | None, sweep_id: str | None) -> bool:
    if tag is None and sweep_id is None:
        return True
    tags = tags_of(entry)
    return (tag is None or tags.get("tag") == tag) and (sweep_id is None or tags.get("sweep_id") == sweep_id)


async def _history_size(transport, page_size: int) -> int:
    """Number of history entries, found with tiny probes (``/history`` has no count)."""

    async def exists(offset: int) -> bool:
        return bool(await transport.get_history_page(1, offset))

    if not await exists(0):
        return 0
    low, high = 0, page_size
    while await exists(high):  # gallop: low exists, high does not
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if await exists(mid) else (low, mid)
    return high


async def read_history(
    transport,
    *,
    tag: str | None = None,
    sweep_id: str | None = None,
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
) -> list[tuple[str, dict]]:
    """Matching ``(prompt_id, entry)`` pairs, oldest first, read in pages, never all at once.

    Without ``limit`` pages go forward from the oldest entry until a short page; with ``limit`` they
    go backwards from the newest until ``limit`` matches are found. Entries are deduplicated by id,
    since the history can grow (or evict its oldest entries) while we page.
    """
    found: dict[str, dict] = {}
    if limit is None:
        offset = 0
        while True:
            page = await transport.get_history_page(page_size, offset)
            found.update((pid, e) for pid, e in page.items() if _matches(e, tag, sweep_id))
            if len(page) < page_size:
                return list(found.items())
            offset += page_size
    if limit <= 0:
        return []
    end = await _history_size(transport, page_size)
    pages: list[list[tuple[str, dict]]] = []
    while end > 0 and sum(map(len, pages)) < limit:
        start = max(0, end - page_size)
        page = await transport.get_history_page(end - start, start)
        pages.append([(pid, e) for pid, e in page.items() if pid not in found and _matches(e, tag, sweep_id)])
        found.update(pages[-1])
        end = start
    newest_first: Iterator = (item for page in pages for item in reversed(page))
    return list(reversed([item for _, item in zip(range(limit), newest_first)]))


def _merged(
    per_server: list[list[dict]], limit: int | None, sort: bool, prefer: Mapping[str, str | None] | None = None
) -> pd.DataFrame:
    """One frame from several servers' rows: one row per prompt_id (see :func:`merge_rows`)."""
    if len(per_server) == 1:
        frame = frame_from_rows(per_server[0])
    else:  # each server gave its newest `limit`: keep the newest overall
        rows = merge_rows((row for rows in per_server for row in rows), prefer)
        frame = frame_from_rows(rows).sort_values("finished_at", kind="stable", ignore_index=True)
        if limit is not None:
            frame = frame.tail(limit).reset_index(drop=True)
    return frame.sort_values("index", kind="stable", ignore_index=True) if sort else frame


async def collect_history(
    transports: list[Transport],
    *,
    tag: str | None = None,
    sweep_id: str | None = None,
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
    journal: Any = None,
    prefer: Mapping[str, str | None] | None = None,
) -> pd.DataFrame:
    """The frame of several servers' histories, recorded in ``journal`` if given (so ``resume``
    knows what finished even after a restart wipes a server's history); a prompt found on two
    servers gives one row, attributed as ``prefer`` (prompt_id -> URL) says."""
    per_server = []
    unsupported: NotSupported | None = None
    for transport in transports:
        read = cloudapi.read_history if transport.profile.cloud else read_history  # newest first, other shape
        try:
            items = await read(transport, tag=tag, sweep_id=sweep_id, limit=limit, page_size=page_size)
        except NotSupported as exc:  # a cloud without /api/history_v2 (deprecated): the other servers still count
            unsupported = exc
            log.warning("history_frame: %s is left out: %s", transport.url, exc)
            continue
        rows = [history_row(pid, entry, transport.url) for pid, entry in items]
        if journal is not None and items:  # malformed entries are not recorded as outcomes
            states = {row["prompt_id"]: row["status"] for row in rows}
            journal.collect([(pid, e) for pid, e in items if entry_problem(e) is None], states)
        per_server.append(rows)
    if unsupported is not None and not per_server:
        raise unsupported
    return _merged(per_server, limit, sweep_id is not None, prefer)  # a sweep's rows in index order


async def _history(source: Any, **query: Any) -> pd.DataFrame:
    sources = [source] if isinstance(source, (str, Transport)) else list(source)
    transports = [Transport(s) if isinstance(s, str) else s for s in sources]
    try:
        return await collect_history(transports, **query)
    finally:
        for made, transport in zip(sources, transports):
            if isinstance(made, str):
                await transport.close()


def history_frame(
    source: Any,
    *,
    tag: str | None = None,
    sweep_id: str | None = None,
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
) -> pd.DataFrame:
    """The results frame rebuilt from a server's history alone, e.g. in a new process after a crash.

    ``source`` is a Transport, a server URL, or a list of them (merged: one row per prompt_id, a
    success first, should failover have left it on two); ``Session.history_frame`` reads its servers. ``tag``/``sweep_id`` select tagged prompts
    (all prompts otherwise, foreign ones included); ``limit`` keeps the newest matches. The
    history is read ``page_size`` entries at a time, never whole.
    """
    return _loop.run_sync(_history(source, tag=tag, sweep_id=sweep_id, limit=limit, page_size=page_size))


async def ahistory_frame(
    source: Any,
    *,
    tag: str | None = None,
    sweep_id: str | None = None,
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
) -> pd.DataFrame:
    """:func:`history_frame` for ``await``, from any event loop."""
    return await _loop.run_async(_history(source, tag=tag, sweep_id=sweep_id, limit=limit, page_size=page_size))


def merge_rows(rows: Iterable[dict], prefer: Mapping[str, str | None] | None = None) -> list[dict]:
    """One frame row per prompt_id from several servers' histories (a moved prompt can be in two):
    the server the session attributes it to first, then a success, then the earliest finish."""
    prefer = prefer or {}
    best: dict[str, dict] = {}

    def rank(row: dict) -> tuple:
        finished = row.get("finished_at")
        return (
            prefer.get(row["prompt_id"], row["server"]) != row["server"],
            row["status"] != SUCCESS,
            float("inf") if finished is None else finished,
        )

    for row in rows:
        current = best.get(row["prompt_id"])
        if current is None or rank(row) < rank(current):
            best[row["prompt_id"]] = row
    return list(best.values())
