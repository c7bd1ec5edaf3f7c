"""Rich display of jobs, results, sweeps and errors in notebooks (HTML with a plain-text fallback).

Layering: the client classes (Job, Result, Sweep, ComfyError) know nothing of notebooks. This
module registers HTML formatters for them with IPython when ``comfynb`` is imported inside a
running IPython (:func:`register`); IPython's ``text/html`` formatter then plays the role of a
``_repr_html_`` method, and the classes' own ``__repr__`` stays the ``text/plain`` fallback.
Registering from above, instead of giving the client ``_repr_html_`` methods that call down,
keeps the client importable and testable without IPython, and costs nothing in plain scripts
(IPython is never imported here unless it is already running).

Everything shown is a snapshot taken when the object is displayed; live views are
:mod:`comfynb.progress`. Server-supplied text (messages, file names, tracebacks) is escaped.

Results frames get a compact HTML form (``df.comfynb.show()``, a pandas accessor registered here,
also used by a sweep's display): short ids with the full id as tooltip, times that do not wrap,
thumbnails in place of lists of ``/view`` URLs. Tables use inline styles only, so they keep their
padding and colours where a notebook viewer strips ``<style>`` elements, and they take the
theme's text colour, so they read in dark themes too.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import html
import io
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from . import _loop
from .errors import ComfyError, ExecutionError, ValidationError
from .jobs import Job
from .results import IN_MEMORY, FileRef, ImageRef, Result, first_frame
from .sweep import Sweep
from .tracker import CANCELLED, ERROR, INTERRUPTED, SUCCESS, TERMINAL

# Mid tones: legible on a white page and on a dark theme's near-black alike.
COLOURS = {
    "pending": "#9e9e9e",
    "queued": "#78909c",
    "running": "#1e88e5",
    "success": "#43a047",
    "error": "#e53935",
    "interrupted": "#fb8c00",
    "cancelled": "#9e9e9e",
    "lost": "#ab47bc",
}
FAILED = frozenset(TERMINAL - {"success"})
# Outcomes, in the order they are told. Cancelled and closed (the session was closed) are what
# the user asked for, not failures.
OUTCOMES = ("ok", "error", "lost", "interrupted", "cancelled", "closed")
FAILED_OUTCOMES = frozenset({"error", "lost", "interrupted"})
OUTCOME_COLOURS = {
    "ok": COLOURS["success"],
    "error": COLOURS["error"],
    "lost": COLOURS["lost"],
    "interrupted": COLOURS["interrupted"],
    "cancelled": "#9e9e9e",
    "closed": "#bdbdbd",
    "running": COLOURS["running"],
    "queued": "#90caf9",
}
THUMBNAIL = 192  # pixels, longest side
INLINE_LIMIT = 4 << 20  # bytes: smaller media are embedded (the notebook keeps them), larger ones stream from /view
PLAYER = 320  # pixels: the width of video players and animations
FETCH_TIMEOUT = 15.0  # seconds a display may wait for images before listing their names instead
_MAX_ROWS = 10  # node errors / failed jobs listed in one table
FRAME_ROWS = 20  # rows of a results frame shown
FRAME_THUMBNAIL = 48  # pixels, thumbnails in a results frame
_CELL = "text-align:left;padding:3px 10px;border-bottom:1px solid rgba(128,128,128,0.25);vertical-align:middle"
_NOWRAP = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis"
_sessions: weakref.WeakSet = weakref.WeakSet()  # sessions seen, to fetch thumbnails of frames


def remember(session: Any) -> None:
    """Keep a (weak) reference to a session, so frames of its results can show thumbnails."""
    _sessions.add(session)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def badge(status: str, label: str | None = None) -> str:
    """The status word (or ``label``) in the status's colour (the same colours as the progress views)."""
    colour = COLOURS.get(status, "#9e9e9e")
    return f'<span style="color:{colour};font-weight:bold;white-space:nowrap">● {esc(label or status)}</span>'


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def params_text(tags: dict | None, limit: int = 80, short: bool = False) -> str:
    """A sweep row's parameters, compactly (``KSampler.seed=3, KSampler.cfg=7.0``; with ``short``,
    ``seed=3, cfg=7.0`` where the input name alone is unambiguous)."""
    params = (tags or {}).get("params") if isinstance(tags, dict) else None
    if not isinstance(params, dict):
        return ""
    names = short_names(params) if short else {k: k for k in params}
    text = ", ".join(f"{names[k]}={v}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_names(addresses: Iterable[str]) -> dict[str, str]:
    """Each address (``KSampler.seed``) by its input name (``seed``) where that is unambiguous."""
    addresses = list(addresses)
    inputs = collections.Counter(str(a).rpartition(".")[2] for a in addresses)
    return {a: (str(a).rpartition(".")[2] if inputs[str(a).rpartition(".")[2]] == 1 else str(a)) for a in addresses}


def error_text(error: BaseException | None, limit: int = 200) -> str:
    if error is None:
        return ""
    text = f"{type(error).__name__}: {' '.join(line.strip() for line in str(error).splitlines())}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- images ------------------------------------------------------------------------------------


async def fetch_images(refs: Iterable[ImageRef]) -> list[bytes | BaseException]:
    """Download (and cache in each ref) several images at once; failures are returned, not raised."""
    return await asyncio.gather(*(ref.fetch() for ref in refs), return_exceptions=True)


def thumbnail_refs(result: Result, limit: int) -> list[FileRef]:
    """What a thumbnail strip shows of a result: its still images, else its animations or videos
    (whose first frame :func:`thumbnail_uri` draws)."""
    return (result.images or result.animations or result.videos)[:limit]


def thumbnail_uri(data: bytes, size: int = THUMBNAIL) -> str | None:
    """A small JPEG data URI of an image (or of the first frame of an animation or video), or None
    if the bytes are no picture Pillow or PyAV can read."""
    try:
        img = first_frame(data)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails_html(refs: list[ImageRef], blobs: list[bytes | BaseException], more: int = 0) -> str:
    """Thumbnails captioned with their file names; what cannot be shown is listed by name."""
    cells = []
    for ref, blob in zip(refs, blobs):
        uri = thumbnail_uri(blob) if isinstance(blob, bytes) else None
        caption = esc(f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename)
        if uri is not None:
            picture = f'<img src="{uri}" style="max-width:{THUMBNAIL}px;max-height:{THUMBNAIL}px">'
        else:
            why = error_text(blob) if isinstance(blob, BaseException) else "not an image"
            picture = f'<div style="color:#757575">({esc(why)})</div>'
        cells.append(
            f'<figure style="margin:2px 6px 2px 0;display:inline-block;vertical-align:top">'
            f'{picture}<figcaption style="font-size:smaller">{caption}</figcaption></figure>'
        )
    if more:
        cells.append(f'<div style="display:inline-block;color:#757575">and {more} more</div>')
    return "<div>" + "".join(cells) + "</div>"


# -- objects -----------------------------------------------------------------------------------


def result_html(result: Result, limit: int = 8, blobs: list | None = None, head: bool = True) -> str:
    """A result's status and timings (``head``) and image thumbnails: the first ``limit`` images,
    downloaded here unless their bytes are given as ``blobs``."""
    refs = result.images[:limit]
    if refs:
        if blobs is None:
            try:
                blobs = _loop.run_sync(fetch_images(refs), timeout=FETCH_TIMEOUT)
            except ComfyError as exc:
                blobs = [exc] * len(refs)
        pictures = thumbnails_html(refs, blobs, len(result.images) - len(refs))
    elif result.files or result.texts:
        pictures = ""
    else:
        pictures = (
            '<div style="color:#757575">no images in the outputs '
            f"(nodes: {esc(', '.join(result.outputs) or 'none')})</div>"
        )
    facts = [badge(result.status), f"<code>{esc(result.prompt_id)}</code>"]
    if result.run_time is not None:
        facts.append(f"ran {seconds(result.run_time)}")
    if result.queue_wait is not None:
        facts.append(f"waited {seconds(result.queue_wait)}")
    facts.append(f"{len(result.images)} image{'s' if len(result.images) != 1 else ''} on {esc(result.server)}")
    head_html = f"<div>{' · '.join(facts)}</div>" if head else ""
    return f'<div class="comfynb-result">{head_html}{pictures}{media_html(result, limit)}</div>'


def table(header: list[str], rows: list[list[Any]], widths: list[str] | None = None, nowrap: bool = True) -> str:
    """A padded table (inline styles); ``rows`` hold HTML. With ``nowrap`` no cell wraps; cells of
    a column with a width in ``widths`` are cut to it (their tooltip, if any, shows the rest)."""
    widths = list(widths or [])
    head = "".join(f'<th style="{_CELL};font-weight:bold">{esc(h)}</th>' for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            style = _CELL + (";white-space:nowrap" if nowrap else "")
            if i < len(widths) and widths[i]:
                style += f";{_NOWRAP};max-width:{widths[i]}"
            cells.append(f'<td style="{style}">{cell}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div style="overflow-x:auto;max-width:100%">'  # scrolls sideways rather than being cut
        '<table style="border-collapse:collapse;margin:4px 0;font-size:13px;color:inherit;background:transparent">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _tip(text: str, shown: str | None = None) -> str:
    """``shown`` (escaped ``text`` by default) with the full ``text`` as its tooltip."""
    return f'<span title="{esc(text)}">{esc(shown if shown is not None else text)}</span>'


def error_html(error: BaseException) -> str:
    """Validation errors as a table of node inputs; execution errors as the failing node, the
    exception and its (folded) traceback; anything else as its message."""
    name = esc(type(error).__name__)
    if isinstance(error, ValidationError):
        head = str(error).splitlines()[0]
        rows = [
            [
                esc(e.node_id),
                esc(e.class_type),
                esc(e.input_name or ""),
                esc(e.type),
                esc(e.message),
                esc(e.details),
                esc("" if e.received is None else repr(e.received)),
            ]
            for e in error.node_errors
        ]
        grid = (
            table(["node", "class", "input", "problem", "message", "details", "received"], rows, nowrap=False)
            if rows
            else ""
        )
        return (
            f'<div class="comfynb-error"><div style="color:{COLOURS["error"]}"><b>{name}</b>: '
            f"{esc(head)}</div>{grid}</div>"
        )
    if isinstance(error, ExecutionError):
        trace = "".join(error.traceback)
        folded = f"<details><summary>traceback</summary><pre>{esc(trace)}</pre></details>" if trace else ""
        return (
            f'<div class="comfynb-error"><div style="color:{COLOURS["error"]}"><b>{name}</b> at node '
            f"<b>{esc(error.node_id)}</b> ({esc(error.node_type)})</div>"
            f"<div><code>{esc(error.exception_type)}</code>: {esc(error.exception_message.strip())}</div>"
            f"{folded}</div>"
        )
    return f'<div class="comfynb-error"><b>{name}</b>: {esc(error)}</div>'


def job_html(job: Job) -> str:
    """A job now: status, nodes, sampler step, elapsed time, the latest preview while it runs,
    and the result's thumbnails or the error once it ended."""
    prog = job.progress
    facts = [badge(job.status), f"<code>{esc(job.prompt_id)}</code>"]
    params = params_text(job.tags)
    if params:
        facts.append(esc(params))
    if prog.nodes_total:
        facts.append(f"nodes {prog.nodes_done}/{prog.nodes_total}")
    if prog.max and not job.done():
        facts.append(f"step {prog.value}/{prog.max}")
    end = job.finished_at or time.time()
    facts.append(seconds(end - job.submitted_at))
    if job.attempts > 1:
        facts.append(f"{job.attempts} submissions")
    if job.server:
        facts.append(f"on {esc(job.server)}")
    body = ""
    if job.done():
        error = job.error
        if error is not None:
            body = error_html(error)
        elif job.status == "success":
            body = result_html(job.result(), head=False)
    elif job.latest_preview is not None:
        preview = job.latest_preview
        body = (
            f'<img src="data:{esc(preview.mime)};base64,{base64.b64encode(preview.image).decode("ascii")}" '
            f'style="max-width:{THUMBNAIL}px">'
        )
    return f'<div class="comfynb-job"><div>{" · ".join(facts)}</div>{body}</div>'


def outcome(job: Job) -> str:
    """How an ended job is counted: ok, error, lost, interrupted, cancelled (also a running job
    stopped on request) or closed (its session was closed first)."""
    status = job.status
    if status == SUCCESS:
        return "ok"
    if status == CANCELLED:
        return "closed" if "session was closed" in str(job.error) else "cancelled"
    if status == INTERRUPTED and getattr(job._state, "cancel_requested", False):
        return "cancelled"
    return status


def unsent_outcome(status: str | None, why: BaseException | None) -> str:
    """How a sweep's rows that will never be sent are counted: closed, cancelled or error."""
    if status == CANCELLED:
        return "closed" if "session was closed" in str(why) else "cancelled"
    return status or ERROR


def counts_text(counts: dict[str, int]) -> str:
    """``21 ok · 1 error · 2 cancelled``: the outcomes that occurred, in a fixed order."""
    return " · ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))


def stacked_bar(counts: dict[str, int], total: int, running: int = 0, queued: int = 0, width: str = "100%") -> str:
    """A bar with one segment per outcome (then running and queued jobs), each with a tooltip."""
    parts = [(o, counts.get(o, 0)) for o in OUTCOMES] + [("running", running), ("queued", queued)]
    segments = "".join(
        f'<div title="{n} {k}" style="width:{100 * n / total:.3f}%;background:{OUTCOME_COLOURS[k]}"></div>'
        for k, n in parts
        if n and total
    )
    return (
        f'<div class="comfynb-bar" style="display:flex;height:12px;width:{width};'
        f'background:rgba(128,128,128,0.22);border-radius:3px;overflow:hidden">{segments}</div>'
    )


def failures_html(
    jobs: Iterable[Job],
    limit: int = _MAX_ROWS,
    *,
    more: int = 0,
    where: Callable[[Job], tuple[Any, dict]] | None = None,
    never_sent: tuple[list[int], Callable[[int], dict], BaseException | None] | None = None,
) -> str:
    """The first failed jobs as a table: row, parameters, how it ended, short id, why (without the
    id again); "+N more" beyond ``limit`` (``more`` counts failures not in ``jobs``). ``where(job)``
    gives the row and parameters of jobs that carry no tags (rows never sent)."""
    rows: list[list[str]] = []
    extra = more
    for job in jobs:
        if job is None or job.status not in FAILED or getattr(job._state, "cancel_requested", False):
            continue
        if len(rows) == limit:
            extra += 1
            continue
        tags = job.tags or {}
        index, params = (tags.get("index", ""), tags.get("params") or {}) if where is None else where(job)
        message = error_text(job.error, 400).replace(job.prompt_id, job.prompt_id[:8])
        text = params_text({"params": params}, 400)
        rows.append(
            [
                esc(index),
                _tip(text, params_text({"params": params}, 400, short=True)),
                badge(job.status),
                f'<code title="{esc(job.prompt_id)}">{esc(job.prompt_id[:8])}</code>',
                _tip(message),
            ]
        )
    if never_sent is not None:  # a sweep's rows that failed before they were sent: no job, no id
        indices, row_of, error = never_sent
        room = max(0, limit - len(rows))
        for index in indices[:room]:
            params = row_of(index)
            rows.append(
                [
                    esc(index),
                    _tip(params_text({"params": params}, 400), params_text({"params": params}, 400, short=True)),
                    badge(ERROR),
                    '<span style="opacity:0.6">not sent</span>',
                    _tip(error_text(error, 400) if error is not None else ""),
                ]
            )
        extra += len(indices) - min(room, len(indices))
    if not rows:
        return ""
    tail = f'<div style="opacity:0.7">+{extra} more</div>' if extra else ""
    widths = ["", "240px", "", "", "420px"]
    return f'<div class="comfynb-failures">{table(["row", "parameters", "status", "prompt", "error"], rows, widths)}{tail}</div>'


def _sweep_where(sweep: Sweep) -> Callable[[Job], tuple[Any, dict]]:
    rows = {job.prompt_id: i for i, job in enumerate(sweep.jobs) if job is not None}

    def where(job: Job) -> tuple[Any, dict]:
        tags = job.tags or {}
        if "index" in tags:
            return tags["index"], tags.get("params") or {}
        index = rows.get(job.prompt_id)
        return ("", {}) if index is None else (index, sweep.plan.row(index))

    return where


def sweep_html(sweep: Sweep) -> str:
    """A sweep now: counts by outcome as a stacked bar and in words (as its live view counts
    them), the first failures, and its results frame (compact, with thumbnails) once rows ended."""
    jobs = list(sweep.jobs)  # the rows sent so far (rows are sent lazily)
    ended = collections.Counter(outcome(job) for job in jobs if job.done())
    never, status, why = sweep.never_sent()  # rows never to be sent end without a job
    if never:
        ended[unsent_outcome(status, why)] += len(never)
    failed_rows = (never, sweep.plan.row, why) if status == ERROR else None
    running = sum(job.status == "running" for job in jobs)
    queued = sum(job.status == "queued" for job in jobs)
    total = len(sweep)
    done = sum(ended.values())
    waiting = total - done - running - queued
    words = " · ".join(
        [counts_text(ended)]
        + [f"{n} {w}" for n, w in ((running, "running"), (queued, "queued"), (waiting, "waiting")) if n]
    ).strip(" ·")
    tag = f" <b>{esc(sweep.tag)}</b>" if sweep.tag else ""
    frame = frame_html(sweep.frame(), session=sweep.session) if done else ""
    return (
        f'<div class="comfynb-sweep"><div>Sweep{tag} <code>{esc(sweep.sweep_id)}</code>: {done}/{total} ended '
        f"over {esc(', '.join(sweep.plan.addresses))}</div>"
        f'<div style="max-width:480px">{stacked_bar(ended, total, running, queued)}</div><div>{esc(words)}</div>'
        f"{failures_html(sweep.jobs, where=_sweep_where(sweep), never_sent=failed_rows)}{frame}</div>"
    )


# -- media: players for videos and audio, animations that move, text as text -------------------------


async def media_source(ref: FileRef, limit: int | None = None) -> str:
    """A ``src`` for a player: a data URI when the file is small (``INLINE_LIMIT``) or only in
    memory, else its ``/view`` URL, which the browser streams (with range requests) from the server."""
    limit = INLINE_LIMIT if limit is None else limit
    data = ref._cache.get("data")
    if data is None and ref.type != IN_MEMORY:
        owner = getattr(ref.fetcher, "__self__", None)
        small = getattr(owner, "view_small", None)
        data = await small(ref.filename, ref.subfolder, ref.type, limit) if small else await ref.fetch()
    if data is not None and (len(data) <= limit or ref.type == IN_MEMORY):
        return f"data:{ref.mime};base64,{base64.b64encode(data).decode('ascii')}"
    return ref.url or ""


def player_html(ref: FileRef, src: str) -> str:
    """One output shown as itself: ``<video controls>``, ``<audio controls>``, an animated
    ``<img>``, or a link for files a browser cannot show (latents, meshes...)."""
    name = esc(f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename)
    preload = "auto" if src.startswith("data:") else "metadata"  # embedded: show the first frame at once
    if ref.kind == "video":
        body = (
            f'<video controls playsinline preload="{preload}" style="max-width:{PLAYER}px" '
            f'title="{name}"><source src="{esc(src)}" type="{esc(ref.mime)}"></video>'
        )
    elif ref.kind == "audio":
        body = f'<audio controls preload="{preload}" title="{name}"><source src="{esc(src)}" type="{esc(ref.mime)}"></audio>'
    elif ref.kind in ("animated", "image"):
        body = f'<img src="{esc(src)}" style="max-width:{PLAYER}px" title="{name}">'
    else:
        body = f'<a href="{esc(src)}" download="{esc(ref.filename)}">{name}</a> ({esc(ref.kind)})'
    caption = f'<figcaption style="font-size:smaller">{name}</figcaption>' if ref.kind != "other" else ""
    return (
        f'<figure class="comfynb-{esc(ref.kind)}" style="margin:2px 6px 2px 0;display:inline-block;'
        f'vertical-align:top">{body}{caption}</figure>'
    )


def texts_html(texts: dict[str, list[str]]) -> str:
    """Text outputs (PreviewAny...) by node, as preformatted, escaped text."""
    blocks = "".join(
        f'<div class="comfynb-text"><span style="color:#757575">node {esc(node)}</span>'
        f'<pre style="margin:2px 0;white-space:pre-wrap">{esc(text)}</pre></div>'
        for node, strings in texts.items()
        for text in strings
    )
    return f"<div>{blocks}</div>" if blocks else ""


def media_html(result: Result, limit: int = 8) -> str:
    """Players for a result's videos and audio, its animations (moving), links to other files and
    its texts: the first ``limit`` of each kind."""
    refs = [
        ref
        for kind in ("video", "animated", "audio", "latent", "mesh", "other")
        for ref in result.of_kind(kind)[:limit]
    ]
    if not refs:
        return texts_html(result.texts)

    async def sources() -> list[str | BaseException]:
        return await asyncio.gather(*(media_source(r) for r in refs), return_exceptions=True)

    try:
        srcs = _loop.run_sync(sources(), timeout=FETCH_TIMEOUT)
    except ComfyError as exc:
        srcs = [exc] * len(refs)
    cells = [
        player_html(ref, src if isinstance(src, str) else (ref.url or ""))
        if isinstance(src, str) or ref.url
        else f'<div style="color:#757575">{esc(ref.filename)}: {esc(error_text(src))}</div>'
        for ref, src in zip(refs, srcs)
    ]
    return "<div>" + "".join(cells) + "</div>" + texts_html(result.texts)


def ref_html(ref: FileRef) -> str | None:
    """A single output file on its own: a player (still images keep their PNG display)."""
    if ref.kind == "image":
        return None
    try:
        src = _loop.run_sync(media_source(ref), timeout=FETCH_TIMEOUT)
    except ComfyError:
        src = ref.url or ""
    return player_html(ref, src)


# -- results frames ----------------------------------------------------------------------------------


def _fetch_urls(session: Any, urls: list[str]) -> dict[str, bytes | BaseException]:
    """The bytes behind ``/view`` URLs, through the session that owns each server (credentials)."""
    from .sweep import _fetch_all

    if not urls:
        return {}
    try:
        blobs = _loop.run_sync(_fetch_all(session, urls), timeout=FETCH_TIMEOUT)
    except ComfyError as exc:
        blobs = [exc] * len(urls)
    return dict(zip(urls, blobs))


def _owner(urls: list[str]) -> Any:
    """A live session with a server that every URL is on, or None."""
    for session in list(_sessions):
        bases = [s.url + "/view?" for s in getattr(session, "_servers", ())]
        if urls and all(any(u.startswith(b) for b in bases) for u in urls):
            return session
    return None


def _when(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return ""
    try:
        return pd.Timestamp(value).strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return esc(value)


def _files_cell(urls: Any, thumbs: dict[str, str | None]) -> str:
    """Thumbnails (or links, for files that are no picture or could not be fetched) of a row's outputs."""
    from .results import ImageRef

    if urls is None or isinstance(urls, float) or not len(urls):
        return ""
    cells = []
    for url in list(urls)[:4]:
        try:
            name = ImageRef.from_url(url).filename
        except ValueError:
            name = str(url)
        uri = thumbs.get(url)
        if uri:
            cells.append(
                f'<img src="{uri}" title="{esc(name)}" style="max-width:{FRAME_THUMBNAIL}px;'
                f'max-height:{FRAME_THUMBNAIL}px;margin-right:4px;vertical-align:middle">'
            )
        else:
            cells.append(f'<a href="{esc(url)}" title="{esc(url)}" target="_blank">{esc(name)}</a>')
    if len(urls) > 4:
        cells.append(f"+{len(urls) - 4}")
    return " ".join(cells)


def frame_html(frame: pd.DataFrame, *, session: Any = None, rows: int = FRAME_ROWS, thumbnails: bool = True) -> str:
    """A results frame, compact: parameters, short id, status, times (no wrapping), thumbnails.

    Thumbnails need the session the images are on (found among the sessions seen if not given);
    without one the files are links. The first ``rows`` rows are shown, then how many more.
    """
    from .frames import COLUMNS

    shown = frame.head(rows)
    params = [c for c in frame.columns if c not in COLUMNS and c != "files"]
    urls = [
        u
        for images in shown.get("images", [])
        if isinstance(images, (list, tuple)) or hasattr(images, "__len__")
        for u in list(images)[:4]
        if isinstance(u, str)
    ]
    thumbs: dict[str, str | None] = {}  # by URL: a data URI, or None (a link instead)
    if thumbnails and urls:
        owner = session if session is not None else _owner(urls)
        if owner is not None:
            for url, blob in _fetch_urls(owner, urls).items():
                thumbs[url] = thumbnail_uri(blob, FRAME_THUMBNAIL) if isinstance(blob, bytes) else None
    names = short_names(params)
    errors = "error" in shown and shown["error"].notna().any() and (shown["error"].astype(str) != "").any()
    header = ["#", *(names[p] for p in params), "images", "status", "prompt", "started", "waited", "ran"]
    header += ["error"] if errors else []
    body = []
    for position, (_, row) in enumerate(shown.iterrows()):
        get = row.get
        pid = str(get("prompt_id") or "")
        status = str(get("status") or "")
        index = get("index")
        index = position if index is None or index != index else int(index)
        error = get("error")
        error = "" if error is None or error != error else str(error).replace(pid, pid[:8])
        cells = [
            esc(index),
            *(_tip(f"{p}={get(p)}", str(get(p))) for p in params),
            _files_cell(get("images"), thumbs),
            badge(status),
            f'<code title="{esc(pid)}">{esc(pid[:8])}</code>',
            _when(get("started_at")),
            esc(seconds(get("queue_wait")) if get("queue_wait") == get("queue_wait") else ""),
            esc(seconds(get("run_time")) if get("run_time") == get("run_time") else ""),
        ]
        if errors:
            cells.append(_tip(error, error if len(error) <= 80 else error[:79] + "…"))
        body.append(cells)
    widths = ["", *(["160px"] * len(params)), "", "", "", "", "", "", "360px"]
    more = len(frame) - len(shown)
    tail = f'<div style="opacity:0.7">+{more} more rows</div>' if more > 0 else ""
    return f'<div class="comfynb-frame" style="overflow-x:auto">{table(header, body, widths)}{tail}</div>'


@pd.api.extensions.register_dataframe_accessor("comfynb")
class FrameAccessor:
    """``df.comfynb.show()``: a results frame as compact HTML with thumbnails (see :func:`frame_html`)."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame

    def show(self, session: Any = None, *, rows: int = FRAME_ROWS, thumbnails: bool = True) -> FrameView:
        return FrameView(frame_html(self._frame, session=session, rows=rows, thumbnails=thumbnails), self._frame)


class FrameView:
    """The HTML of a results frame, displayed by notebooks (``_repr_html_``); the frame's own text
    otherwise."""

    def __init__(self, html_text: str, frame: pd.DataFrame):
        self.html = html_text
        self._frame = frame

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return repr(self._frame)


# -- registration --------------------------------------------------------------------------------

FORMATTERS = (
    (Job, job_html),
    (Result, result_html),
    (Sweep, sweep_html),
    (ComfyError, error_html),
    (FileRef, ref_html),
)


def register(formatter: Any = None) -> bool:
    """Register the HTML views with an IPython ``DisplayFormatter`` (by default the running
    shell's). Returns False, doing nothing, outside IPython."""
    if formatter is None:
        if "IPython" not in sys.modules:
            return False
        shell = sys.modules["IPython"].get_ipython()
        if shell is None:
            return False
        formatter = shell.display_formatter
    html_formatter = formatter.formatters["text/html"]
    for cls, render in FORMATTERS:
        html_formatter.for_type(cls, render)
    return True
