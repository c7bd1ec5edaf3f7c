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
"""

from __future__ import annotations

import asyncio
import base64
import collections
import html
import io
import sys
import time
from collections.abc import Iterable
from typing import Any

from . import _loop
from .errors import ComfyError, ExecutionError, ValidationError
from .jobs import Job
from .results import IN_MEMORY, FileRef, ImageRef, Result, first_frame
from .sweep import Sweep
from .tracker import TERMINAL

COLOURS = {
    "pending": "#9e9e9e",
    "queued": "#607d8b",
    "running": "#1976d2",
    "success": "#2e7d32",
    "error": "#c62828",
    "interrupted": "#ef6c00",
    "cancelled": "#757575",
    "lost": "#6a1b9a",
}
FAILED = frozenset(TERMINAL - {"success"})
THUMBNAIL = 192  # pixels, longest side
INLINE_LIMIT = 4 << 20  # bytes: smaller media are embedded (the notebook keeps them), larger ones stream from /view
PLAYER = 320  # pixels: the width of video players and animations
FETCH_TIMEOUT = 15.0  # seconds a display may wait for images before listing their names instead
_MAX_ROWS = 10  # node errors / failed jobs listed in one table


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def badge(status: str) -> str:
    """The status word in its colour (the same colours as the progress widgets)."""
    colour = COLOURS.get(status, "#000")
    return f'<span style="color:{colour};font-weight:bold">● {esc(status)}</span>'


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def params_text(tags: dict | None, limit: int = 80) -> str:
    """A sweep row's parameters, compactly (``KSampler.seed=3, KSampler.cfg=7.0``)."""
    params = (tags or {}).get("params") if isinstance(tags, dict) else None
    if not isinstance(params, dict):
        return ""
    text = ", ".join(f"{k}={v}" for k, v in params.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f'<th style="text-align:left">{esc(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:left">{cell}</td>' for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
        table = _table(["node", "class", "input", "problem", "message", "details", "received"], rows) if rows else ""
        return (
            f'<div class="comfynb-error"><div style="color:{COLOURS["error"]}"><b>{name}</b>: '
            f"{esc(head)}</div>{table}</div>"
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


def bar_html(counts: dict[str, int], total: int) -> str:
    """A static stacked bar: one coloured segment per status."""
    segments = (
        "".join(
            f'<div title="{n} {esc(s)}" style="width:{100 * n / total:.3f}%;background:{COLOURS[s]}"></div>'
            for s, n in counts.items()
            if n and s in COLOURS
        )
        if total
        else ""
    )
    return (
        f'<div style="display:flex;height:10px;width:100%;max-width:480px;background:#eee;'
        f'border-radius:3px;overflow:hidden">{segments}</div>'
    )


def failures_html(jobs: Iterable[Job], limit: int = _MAX_ROWS) -> str:
    """The first failed jobs as a table: what ran, how it ended, why."""
    rows, extra = [], 0
    for job in jobs:
        if job is None or job.status not in FAILED:
            continue
        if len(rows) == limit:
            extra += 1
            continue
        index = (job.tags or {}).get("index", "")
        rows.append(
            [
                esc(index),
                esc(params_text(job.tags)),
                badge(job.status),
                f"<code>{esc(job.prompt_id)}</code>",
                esc(error_text(job.error)),
            ]
        )
    if not rows:
        return ""
    more = f'<div style="color:#757575">and {extra} more</div>' if extra else ""
    return _table(["row", "parameters", "status", "prompt", "error"], rows) + more


def sweep_html(sweep: Sweep) -> str:
    """A sweep now: counts by status as a bar and in words, and the first failures."""
    counts = collections.Counter(sweep.counts())
    total = len(sweep)
    ended = sum(n for s, n in counts.items() if s in TERMINAL)
    tag = f" <b>{esc(sweep.tag)}</b>" if sweep.tag else ""
    words = ", ".join(
        f'<span style="color:{COLOURS.get(s, "#000")}">{n} {esc(s)}</span>' for s, n in sorted(counts.items())
    )
    return (
        f'<div class="comfynb-sweep"><div>Sweep{tag} <code>{esc(sweep.sweep_id)}</code>: {ended}/{total} ended '
        f"over {esc(', '.join(sweep.plan.addresses))}</div>{bar_html(counts, total)}<div>{words}</div>"
        f"{failures_html(sweep.jobs)}</div>"
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
