"""Live progress of jobs and sweeps: ipywidgets in a Jupyter kernel, one text line on stderr elsewhere.

Layering: the client never imports this module. Importing ``comfynb`` imports it, which appends
:func:`announce` to ``comfynb.session.submit_hooks``; the session calls those hooks with every job
and sweep it starts, and :func:`announce` shows them as ``Session(progress=...)`` asks. A hook,
rather than an IPython formatter, because progress must appear when work is *submitted*
(``job = session.submit(wf)`` displays nothing by itself) and in plain scripts, which have no IPython.

What a view says must be true at a glance: jobs are counted by *outcome* (``21 ok · 1 error ·
2 cancelled``; cancelled and closed are not failures), the end line says what recovery did
(``2 moved · 5 resent``), rate and ETA count only work done while the view watched (rows a
``resume`` read back are not throughput), a job's queue wait and run time are shown apart, and a
job whose final message is missing reads ``finishing``, not ``running · nodes 7/7``. comfynb's own
warnings about a job or a server (resubmission, failover) are routed by a logging handler into the
view they concern instead of landing as stray stderr in whichever cell runs; handlers the user
configured still get every record.

Cost: events only touch plain attributes (see ``tracker.py``). One daemon thread, the flusher,
wakes a few times a second, reads those attributes for every live view, and pushes only what
changed. A widget view is a fixed set of widgets (one HTML body laid out as a fixed grid, a strip
of the latest thumbnails, a preview image, a Stop button), never one per job, so the number of
comm messages grows with elapsed time, not with the number of jobs or events.

When a widget view ends it replaces itself (``update_display`` on its display id) with a static
HTML summary, whose plain-text form is the final line: a saved or shared notebook keeps the record
where a widget would show "model not found".

In a kernel, everything one cell submits shares one view, shown in that cell's output: a single
job gets the detailed view (status, nodes, sampler steps, times, latest preview, then the result's
thumbnails or the error); when a second job or a sweep joins it, the view turns into the
aggregate one.
"""

from __future__ import annotations

import atexit
import collections
import functools
import importlib.util
import logging
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from . import _loop
from . import display as _display
from . import session as _session
from .jobs import Job
from .sweep import Sweep
from .tracker import QUEUED, RUNNING, SUCCESS, TERMINAL

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between two flushes
ROWS = 4  # rows for running jobs in an aggregate widget
PIPE_INTERVAL = 5.0  # seconds between two lines when stderr is not a terminal
THUMBNAILS = 4  # result images shown by a job's widget
STRIP = 6  # latest finished thumbnails in a view
STRIP_INTERVAL = 1.0  # seconds between two updates of the thumbnail strip
NOTICES = 3  # latest warnings shown in a view
_FAILURES = 50  # failed jobs kept for the failures table
_BAR = 20  # characters of the text bar


def resolve_mode(progress: Any) -> str | None:
    """``"widget"``, ``"text"`` or None (nothing) for a ``progress=`` setting."""
    if progress is False or progress is None:
        return None
    if progress is True or progress == "auto":
        return "widget" if widgets_usable() else "text"
    if progress in ("widget", "text"):
        return progress
    raise ValueError(f"progress must be 'auto', 'widget', 'text' or False, not {progress!r}")


def _kernel_shell() -> Any:
    """The running IPython shell if it is a Jupyter kernel's (IPython is not imported for this)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if getattr(shell, "kernel", None) is not None else None


def widgets_usable() -> bool:
    return _kernel_shell() is not None and _has_ipywidgets()


@functools.cache
def _has_ipywidgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def _result(job: Job) -> Any:
    """The Result of a job that succeeded, read without waiting (views also render on comfynb's
    loop thread, where ``job.result()`` refuses to run)."""
    return job._state.future.result(timeout=0)


def recovery_text(moved: int, resent: int) -> str:
    """``2 moved · 5 resent``: what failover and resubmission did (empty if nothing)."""
    return " · ".join(t for t in (f"{moved} moved" if moved else "", f"{resent} resent" if resent else "") if t)


# -- what a view follows -------------------------------------------------------------------------


class Snapshot:
    """What a view's jobs are doing at one flush."""

    def __init__(self, tally: Tally, running: list[Job], queued: int, waiting: int, now: float):
        self.total = tally.total
        self.counts = dict(tally.ended)
        self.ended = sum(self.counts.values())
        self.failed = sum(n for o, n in self.counts.items() if o in _display.FAILED_OUTCOMES)
        self.running = running
        self.queued = queued
        self.waiting = waiting  # not accepted by a server yet (or held by a sweep)
        self.open = tally.total - self.ended
        self.moved, self.resent = tally.moved, tally.resent
        if tally.first_at is not None:  # from the first job watched to now, or to the last end
            end = now if self.open else (tally.last_end or now)
            self.elapsed: float | None = max(0.0, end - tally.first_at)
        elif tally.prior_span is not None:  # all ended before: the time they took
            self.elapsed = max(0.0, tally.prior_span[1] - tally.prior_span[0])
        else:
            self.elapsed = None
        # throughput from the jobs that ended while watched, not rows read back from history
        span = now - tally.watch_from
        self.rate = tally.fresh / span if tally.fresh and span > 0 else None
        self.eta = self.open / self.rate if self.rate and self.open else None
        self.run_time, self.queue_wait = tally.mean_times()
        self.down = [url for session in tally.sessions for url in session.down_servers()]
        self.servers = tally.server_rows(running) if tally.several_servers() else []
        self.notices = list(tally.notices)[-NOTICES:]
        self.notice_count = tally.notice_count


class Tally:
    """The jobs a view follows. Ended jobs are counted once and dropped, so a refresh only looks
    at unfinished ones; ``on_job`` is called once for every job that joins."""

    def __init__(self, on_job: Any = None):
        self.items: list[Job | Sweep] = []
        self.total = 0
        self.ended: collections.Counter[str] = collections.Counter()
        self.failures: list[Job] = []
        self.failed_total = 0
        self.recent: list[Job] = []  # the latest successes, oldest first (at most STRIP)
        self.watch_from = time.time()
        self.first_at: float | None = None  # the earliest submission of a job not ended when it joined
        self.last_end: float | None = None
        self.prior_span: tuple[float, float] | None = None  # first submission, last end of jobs ended when joined
        self.fresh = 0  # jobs that ended while watched
        self.moved = self.resent = 0
        self._run = [0.0, 0.0, 0]  # sums of run time and queue wait, and how many jobs
        self.started: dict[str, float] = {}  # prompt_id -> when it was first seen running
        self._paths: dict[str, set[str]] = {}  # prompt_id -> servers it was seen on
        self.by_server: dict[str, collections.Counter] = {}
        self.rows: dict[str, tuple[Sweep, int]] = {}  # prompt_id -> its sweep and row
        self.notices: collections.deque[tuple[float, str]] = collections.deque(maxlen=20)
        self.notice_count = 0
        self.stopped: str | None = None  # what the Stop button stopped
        self._open: list[Job] = []
        self._late: list[tuple[Sweep, int]] = []  # sweeps whose rows are still being sent, and jobs joined
        self._seen: set[str] = set()
        self.sessions: list = []  # whose servers' health the view shows
        self._on_job = on_job
        self._lock = threading.Lock()

    @property
    def single(self) -> Job | None:
        """The job, when the view follows exactly one job (not a sweep)."""
        items = self.items
        return items[0] if len(items) == 1 and isinstance(items[0], Job) else None

    def follows(self, prompt_id: str) -> bool:
        return prompt_id in self._seen

    def add(self, item: Job | Sweep | Iterable) -> bool:
        """Follow a job, a sweep, or an iterable of them; False if nothing was new."""
        new: list[Job] = []
        with self._lock:
            before = self.total
            self._add(item, new)
            changed = self.total != before
        for job in new:
            self._joined(job)
        return changed

    def _add(self, item: Any, new: list[Job]) -> None:
        if isinstance(item, Job):
            if item.prompt_id not in self._seen:
                self._seen.add(item.prompt_id)
                self.items.append(item)
                self.total += 1
                new.append(item)
        elif isinstance(item, Sweep):
            if "sweep:" + item.sweep_id in self._seen:
                return
            self._seen.add("sweep:" + item.sweep_id)
            self.watch(item.session)
            self.items.append(item)
            self.total += len(item)
            jobs = list(item.jobs)  # the rows sent so far (rows are sent lazily, in row order)
            for index, job in enumerate(jobs):
                self._seen.add(job.prompt_id)
                self.rows[job.prompt_id] = (item, index)
                new.append(job)
            self._late.append((item, len(jobs)))  # the others join as they are sent
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            for each in item:
                self._add(each, new)
        else:
            raise TypeError(f"progress follows jobs and sweeps, not {type(item).__name__}")

    def watch(self, session: Any) -> None:
        """Show which of ``session``'s servers are down, and its servers' table."""
        if session is not None and all(session is not s for s in self.sessions):
            self.sessions.append(session)

    def several_servers(self) -> bool:
        return sum(len(getattr(s, "_servers", ())) for s in self.sessions) > 1

    def _joined(self, job: Job) -> None:
        with self._lock:
            if job.done():  # ended before it was watched (read back by resume): not throughput
                self._count(job, time.time(), fresh=False)
            else:
                self._open.append(job)
                self.first_at = min(self.first_at or job.submitted_at, job.submitted_at)
        if self._on_job is not None:
            self._on_job(job)

    def note(self, text: str) -> None:
        """A warning about this view's jobs or servers (from comfynb's log)."""
        with self._lock:
            self.notices.append((time.time(), text))
            self.notice_count += 1

    def refresh(self) -> Snapshot:
        """Count the jobs that ended since the last refresh; list those running now."""
        if self._late:
            with self._lock:
                late, self._late, made = self._late, [], []
                for sweep, joined in late:
                    done = sweep.done()  # read first: a sweep is done only once its last job exists
                    jobs = sweep.jobs[joined:]
                    for k, job in enumerate(jobs, joined):
                        self._seen.add(job.prompt_id)
                        self.rows[job.prompt_id] = (sweep, k)
                    made += jobs
                    joined += len(jobs)
                    if joined >= len(sweep):
                        continue
                    if done:  # rows never sent (cancelled, session closed, sending failed) end here
                        never, status, why = sweep.never_sent()
                        self.ended[_display.unsent_outcome(status, why)] += len(never)
                    else:
                        self._late.append((sweep, joined))
            for job in made:
                self._joined(job)
        now = time.time()
        with self._lock:
            still, running, queued, waiting = [], [], 0, 0
            for job in self._open:
                status = job.status
                server = job.server
                if server is not None:
                    path = self._paths.get(job.prompt_id)
                    if path is None:
                        self._paths[job.prompt_id] = {server}
                    elif server not in path:
                        path.add(server)
                if status in TERMINAL:
                    self._count(job, now, fresh=True)
                    continue
                still.append(job)
                if status == RUNNING:
                    self.started.setdefault(job.prompt_id, now)
                    running.append(job)
                elif status == QUEUED:
                    queued += 1
                else:
                    waiting += 1
            self._open = still
            unsent = sum(len(sweep) - joined for sweep, joined in self._late)
            return Snapshot(self, running, queued, waiting + unsent, now)

    def _count(self, job: Job, now: float, fresh: bool) -> None:
        """An ended job: its outcome, recovery and times (under the lock)."""
        kind = _display.outcome(job)
        self.ended[kind] += 1
        end = job.finished_at or now
        if not fresh:
            first, last = self.prior_span or (job.submitted_at, end)
            self.prior_span = (min(first, job.submitted_at), max(last, end))
        if fresh:
            self.fresh += 1
            self.last_end = max(self.last_end or 0.0, end)
            path = self._paths.pop(job.prompt_id, set()) | ({job.server} if job.server else set())
            moves = getattr(job, "moves", None)
            moves = max(0, len(path) - 1) if moves is None else moves
            resends = getattr(job, "resends", None)
            resends = max(0, job.attempts - 1 - moves) if resends is None else resends
            self.moved += moves
            self.resent += resends
            if kind == "ok":  # the server's figures
                result = _result(job)
                if result.run_time is not None and result.queue_wait is not None:
                    self._run[0] += result.run_time
                    self._run[1] += max(0.0, result.queue_wait)
                    self._run[2] += 1
        if job.server:
            self.by_server.setdefault(job.server, collections.Counter())[
                "failed" if kind in _display.FAILED_OUTCOMES else kind
            ] += 1
        if kind in _display.FAILED_OUTCOMES:
            self.failed_total += 1
            if len(self.failures) < _FAILURES:
                self.failures.append(job)
        elif kind == "ok":
            # rows of a sweep join (and are counted) later than they end: keep the latest to end
            self.recent.append(job)
            self.recent.sort(key=lambda j: j.finished_at or 0.0)
            del self.recent[:-STRIP]

    def start_of(self, job: Job) -> float | None:
        """When the job started running: the core's ``started_at`` if it has one, else when a
        refresh first saw it running."""
        started = getattr(job, "started_at", None)
        return started if started is not None else self.started.get(job.prompt_id)

    def mean_times(self) -> tuple[float | None, float | None]:
        run, wait, n = self._run
        return (run / n, wait / n) if n else (None, None)

    def server_rows(self, running: list[Job]) -> list[dict]:
        """One row per server of the watched sessions: its state and our jobs' outcomes there."""
        here = collections.Counter(job.server for job in running)
        rows: list[dict] = []
        for session in self.sessions:
            down = set(session.down_servers())
            for server in getattr(session, "_servers", ()):
                counts = self.by_server.get(server.url) or collections.Counter()
                rows.append(
                    {
                        "server": server.url,
                        "state": "down" if server.url in down else "up",
                        "running": here.get(server.url, 0),
                        "ok": counts.get("ok", 0),
                        "failed": counts.get("failed", 0),
                    }
                )
        return rows

    def where(self, job: Job) -> tuple[Any, dict]:
        """The sweep row and parameters of a job (also for rows never sent, which have no tags)."""
        tags = job.tags or {}
        if "index" in tags:
            return tags.get("index"), tags.get("params") or {}
        found = self.rows.get(job.prompt_id)
        if found is None:
            return "", {}
        sweep, index = found
        return index, sweep.plan.row(index)

    def title(self) -> str:
        sweeps = [i for i in self.items if isinstance(i, Sweep)]
        if len(sweeps) == 1 and len(self.items) == 1:
            sweep = sweeps[0]
            return f"sweep {sweep.tag}" if sweep.tag else f"sweep {sweep.sweep_id}"
        return f"{self.total} jobs"

    def stop(self) -> str:
        """Cancel everything unfinished; a line saying what was stopped."""
        unfinished = [job for job in self._open_jobs() if not job.done()]
        states = collections.Counter(
            "running" if job.status == RUNNING else "queued" if job.status == QUEUED else "waiting"
            for job in unfinished
        )
        # a sweep's rows not sent yet have no job: they count as waiting, dropped by its cancel()
        states["waiting"] += sum(i.unsent().get("pending", 0) for i in self.items if isinstance(i, Sweep))
        for item in self.items:
            item.cancel()
        words = {"waiting": "not sent, dropped", "queued": "queued, removed", "running": "running, interrupted"}
        said = ", ".join(f"{states[k]} {words[k]}" for k in ("running", "queued", "waiting") if states[k])
        stopped = sum(states.values())
        self.stopped = f"stopped {stopped} job(s): {said}" if stopped else "nothing left to stop"
        return self.stopped

    def _open_jobs(self) -> list[Job]:
        with self._lock:
            jobs = list(self._open)
        for item in self.items:
            if isinstance(item, Sweep):
                jobs.extend(job for job in item.jobs if job is not None)
        return list({job.prompt_id: job for job in jobs}.values())


# -- one-line text --------------------------------------------------------------------------------


def clock(value: float | None) -> str:
    if value is None:
        return "?"
    minutes, secs = divmod(int(max(0.0, value) + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _node_name(job: Job, node: str | None) -> str:
    """``KSampler #3``: the node's class, read from the prompt the job sent."""
    if node is None:
        return ""
    body = job._state.body
    cls = ((body or {}).get("prompt") or {}).get(node, {}).get("class_type")
    return f"{cls} #{node}" if cls else f"node {node}"


def shown_status(job: Job) -> str:
    """The job's status, except ``finishing`` for a job whose every node ran but whose outcome is
    still being read (its final message may have been lost: the server is being asked)."""
    prog = job.progress
    if job.status == RUNNING and prog.nodes_total and prog.nodes_done >= prog.nodes_total:
        return "finishing"
    return job.status


def fraction(job: Job) -> float:
    """How far a job got: finished nodes, plus the running node's sampler steps."""
    if job.status == SUCCESS:
        return 1.0
    prog = job.progress
    if not prog.nodes_total:
        return 0.0
    part = prog.value / prog.max if prog.max and not job.done() else 0.0
    return min(1.0, (prog.nodes_done + part) / prog.nodes_total)


def job_times(job: Job, now: float, started: float | None) -> str:
    """``waited 0.40 s · ran 1.20 s``: queue wait and run time apart (no negative times); the
    server's own figures once the job succeeded."""
    if job.status == SUCCESS:
        result = _result(job)
        if result.run_time is not None and result.queue_wait is not None:
            return f"waited {_display.seconds(max(0.0, result.queue_wait))} · ran {_display.seconds(result.run_time)}"
    end = job.finished_at or now
    if started is None:
        return f"waited {_display.seconds(max(0.0, end - job.submitted_at))}"
    wait = max(0.0, started - job.submitted_at)
    return f"waited {_display.seconds(wait)} · ran {_display.seconds(max(0.0, end - started))}"


def job_details(job: Job, now: float, started: float | None = None, params: dict | None = None) -> list[str]:
    """What one job is doing: parameters, nodes, the running node and its step, error."""
    prog = job.progress
    parts = []
    text = _display.params_text({"params": params} if params else job.tags, 60, short=True)
    if text:
        parts.append(text)
    if prog.nodes_total:
        parts.append(f"nodes {prog.nodes_done}/{prog.nodes_total}")
    if not job.done() and prog.node is not None:
        parts.append(_node_name(job, prog.node) + (f" {prog.value}/{prog.max}" if prog.max else ""))
    if len(_servers_of(job)) > 1 and job.server:
        parts.append(f"on {job.server}")
    if job.done() and job.error is not None:
        parts.append(_display.error_text(job.error, 120).replace(job.prompt_id, job.prompt_id[:8]))
    return parts


def _servers_of(job: Job) -> list:
    session = getattr(job._cancel, "__self__", None)  # the session's bound cancel method
    return getattr(session, "_servers", [])


def job_line(job: Job, now: float, started: float | None = None) -> str:
    return " · ".join(
        [job.prompt_id[:8], shown_status(job), *job_details(job, now, started), job_times(job, now, started)]
    )


def tally_details(snap: Snapshot) -> list[str]:
    """The aggregate: ended/total, outcomes, what runs, rate and ETA (or the time it all took),
    recovery, servers down."""
    parts = [f"{snap.ended}/{snap.total}"]
    if snap.counts:
        parts.append(_display.counts_text(snap.counts))
    if snap.open:
        if snap.running:
            parts.append(f"{len(snap.running)} running")
        if snap.queued:
            parts.append(f"{snap.queued} queued")
        if snap.waiting:
            parts.append(f"{snap.waiting} waiting")
        if snap.rate:
            parts.append(f"{snap.rate:.1f}/s · ETA {clock(snap.eta)}")
    else:
        if snap.elapsed is not None:
            parts.append(_display.seconds(snap.elapsed))
        if snap.run_time is not None:
            parts.append(
                f"each waited {_display.seconds(snap.queue_wait)}, ran {_display.seconds(snap.run_time)} (mean)"
            )
    recovery = recovery_text(snap.moved, snap.resent)
    if recovery:
        parts.append(recovery)
    if snap.down:
        parts.append(f"{len(snap.down)} server(s) down: {', '.join(snap.down)}")
    return parts


def text_bar(done: float, width: int = _BAR) -> str:
    """A tqdm-like bar: ``|██████▍   |``."""
    eighths = round(max(0.0, min(1.0, done)) * width * 8)
    full, part = divmod(eighths, 8)
    tail = " ▏▎▍▌▋▊▉"[part] if full < width else ""
    return "|" + "█" * full + tail + " " * (width - full - len(tail)) + "|"


def tally_line(snap: Snapshot, title: str = "") -> str:
    done = snap.ended / snap.total if snap.total else 0.0
    head = f"{title} " if title else ""
    return f"{head}{text_bar(done)} " + " · ".join(tally_details(snap))


# -- HTML ---------------------------------------------------------------------------------------------

_NOWRAP = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0"
# status, id, details, step bar, times: the same columns in every row, so the bars line up; the
# details column gives way first on narrow screens (its text is cut, the full text is the tooltip)
_ROW_COLUMNS = "92px 78px minmax(40px,1fr) minmax(48px,120px) 96px"
_MUTED = "opacity:0.7"


def _td(text: str, style: str = "", html: str | None = None) -> str:
    """One grid cell, never wrapping: long text is cut with an ellipsis, the full text is its tooltip."""
    return f'<div style="{_NOWRAP};{style}" title="{_display.esc(text)}">{html if html is not None else _display.esc(text)}</div>'


def step_bar(value: float, colour: str) -> str:
    return (
        f'<div class="comfynb-step" style="height:8px;width:100%;background:rgba(128,128,128,0.22);'
        f'border-radius:3px;overflow:hidden"><div style="height:100%;width:{100 * value:.1f}%;'
        f'background:{colour}"></div></div>'
    )


def short_times(job: Job, now: float, started: float | None) -> str:
    """The one figure a row has room for: run time once running, else the wait so far."""
    if started is None and job.status != SUCCESS:
        return f"waited {_display.seconds(max(0.0, (job.finished_at or now) - job.submitted_at))}"
    return job_times(job, now, started).rpartition(" · ")[2]


def row_html(tally: Tally, job: Job, now: float, full: bool = False) -> str:
    """One job as a fixed grid row: status, short id, details (cut, full text as tooltip), step bar,
    times (``full``: wait and run time, else the one that matters now, both in the tooltip)."""
    status = shown_status(job)
    colour = _display.COLOURS.get(job.status, "#9e9e9e")
    _, params = tally.where(job)
    details = " · ".join(job_details(job, now, tally.start_of(job), params))
    times = job_times(job, now, tally.start_of(job))
    cells = [
        _td(status, html=_display.badge(job.status, status)),
        _td(job.prompt_id, html=f"<code>{job.prompt_id[:8]}</code>"),
        _td(details),
        step_bar(fraction(job), colour),
        _td(
            times,
            f"text-align:right;{_MUTED}",
            _display.esc(times if full else short_times(job, now, tally.start_of(job))),
        ),
    ]
    columns = _ROW_COLUMNS.replace("96px", "minmax(96px,auto)") if full else _ROW_COLUMNS
    return (
        f'<div class="comfynb-row" style="display:grid;grid-template-columns:{columns};gap:8px;'
        f'align-items:center;line-height:20px">{"".join(cells)}</div>'
    )


def header_html(tally: Tally, snap: Snapshot) -> str:
    """Title and stacked bar; then the counts line and the rate or the time it took."""
    details = " · ".join(tally_details(snap)[1:])
    ended = f"{snap.ended}/{snap.total}"
    title = tally.title()
    bar = _display.stacked_bar(snap.counts, snap.total, len(snap.running), snap.queued)
    title_html = f'<b>{_display.esc(title)}</b> <span style="{_MUTED}">{ended}</span>'
    return (
        '<div class="comfynb-head" style="display:grid;grid-template-columns:minmax(0,1fr) minmax(96px,35%);'
        'gap:2px 12px;align-items:center;line-height:20px">'
        f"{_td(title, html=title_html)}"
        f"{bar}"
        f"{_td(details, 'grid-column:1 / -1', _coloured_details(details, snap))}"
        "</div>"
    )


def _coloured_details(details: str, snap: Snapshot) -> str:
    out = _display.esc(details)
    for o in _display.OUTCOMES:
        n = snap.counts.get(o)
        if n:
            out = out.replace(
                f"{n} {o}", f'<span style="color:{_display.OUTCOME_COLOURS[o]};font-weight:bold">{n} {o}</span>', 1
            )
    return out


def servers_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = [
        [
            _td(r["server"], html=f"<code>{_display.esc(r['server'])}</code>"),
            f'<span style="color:{_display.COLOURS["error"] if r["state"] == "down" else _display.OUTCOME_COLOURS["ok"]}">'
            f"{r['state']}</span>",
            str(r["running"]),
            str(r["ok"]),
            str(r["failed"]),
        ]
        for r in rows
    ]
    return _display.table(["server", "state", "running", "ok", "failed"], body, widths=["260px"])


def notices_html(snap_notices: list[tuple[float, str]], count: int) -> str:
    if not snap_notices:
        return ""
    lines = "".join(
        _td(text, f"color:{_display.COLOURS['interrupted']}", f"⚠ {_display.esc(text)}") for _, text in snap_notices
    )
    more = (
        f'<div style="{_MUTED}">+{count - len(snap_notices)} earlier warning(s)</div>'
        if count > len(snap_notices)
        else ""
    )
    return f'<div class="comfynb-notices" style="line-height:20px">{lines}{more}</div>'


def failures_of(tally: Tally) -> str:
    return _display.failures_html(tally.failures, more=tally.failed_total - len(tally.failures), where=tally.where)


def strip_html(thumbs: list[tuple[Job, dict, str | None]]) -> str:
    """The latest finished thumbnails with their parameters."""
    if not thumbs:
        return ""
    cells = []
    for job, params, uri in thumbs:
        full = _display.params_text({"params": params}, 200) or job.prompt_id
        caption = _display.params_text({"params": params}, 200, short=True) or job.prompt_id[:8]
        picture = (
            f'<img src="{uri}" style="width:96px;height:96px;object-fit:contain;display:block">'
            if uri
            else '<div style="width:96px;height:96px"></div>'
        )
        cells.append(
            f'<figure style="margin:0 6px 0 0;width:96px;display:inline-block;vertical-align:top">{picture}'
            f'<figcaption style="font-size:11px;{_NOWRAP}" title="{_display.esc(full)}">'
            f"{_display.esc(caption)}</figcaption></figure>"
        )
    return f'<div class="comfynb-strip" style="white-space:nowrap;overflow:hidden">{"".join(cells)}</div>'


def _frame(body: str) -> str:
    """The view's box. ``contain:inline-size`` keeps its long one-line texts from widening the
    widget's flex box (they are cut instead); the line height is ours, not the widget's 28 px."""
    return (
        '<div class="comfynb-view" style="width:100%;max-width:100%;contain:inline-size;overflow:hidden;'
        f'font-size:13px;line-height:20px;white-space:normal">{body}</div>'
    )


# -- views ------------------------------------------------------------------------------------------


class View:
    """Jobs followed and how they are shown; the flusher calls :meth:`flush`."""

    def __init__(self, on_job: Any = None):
        self.tally = Tally(on_job)
        self._flush_lock = threading.RLock()  # re-entered by a text view's done-callback, which
        # runs at once (and flushes) when a job that already ended joins it
        self._rewatch = False  # set by the flusher's watch(): new work arrived during a flush
        _router.attach(self)

    def add(self, item: Job | Sweep | Iterable) -> View:
        """Follow more jobs (a job, a sweep, or an iterable of them)."""
        if self.tally.add(item):
            _flusher.watch(self)
        return self

    def flush(self) -> bool:
        """Show what changed; False once everything ended and was shown."""
        with self._flush_lock:
            return self._render(self.tally.refresh())

    def _render(self, snap: Snapshot) -> bool:
        raise NotImplementedError

    def notice(self, text: str) -> None:
        self.tally.note(text)

    def stop(self) -> str:
        """Cancel every unfinished job of this view (what its Stop button does)."""
        said = self.tally.stop()
        _flusher.watch(self)
        return said

    def line(self) -> str:
        snap = self.tally.refresh()
        single = self.tally.single
        if single is not None:
            return job_line(single, time.time(), self.tally.start_of(single))
        return tally_line(snap, self.tally.title())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.line()}>"


class WidgetView(View):
    """An ipywidgets view with a fixed set of widgets, whatever the number of jobs."""

    def __init__(self, rows: int = ROWS):
        import ipywidgets as widgets

        super().__init__()
        self.rows = max(1, rows)
        # a definite width: the body's long lines are cut to it, never pushing the button away
        self._body = widgets.HTML(layout=widgets.Layout(width="calc(100% - 88px)", min_width="0"))
        self._stop = widgets.Button(
            description="Stop",
            icon="stop",
            tooltip="cancel every unfinished job of this view",
            layout=widgets.Layout(width="76px", flex="0 0 auto"),
        )
        self._stop.on_click(lambda _: self.stop())
        self._strip = widgets.HTML()
        self._preview = widgets.Image(format="jpeg", layout=widgets.Layout(display="none", max_width="256px"))
        self.widget = widgets.VBox(
            [
                widgets.HBox([self._body, self._stop], layout=widgets.Layout(align_items="flex-start")),
                self._strip,
                self._preview,
            ],
            layout=widgets.Layout(max_width="100%", overflow="hidden"),
        )
        self._sent: dict[int, dict[str, Any]] = {}
        self._shown_preview: Any = None
        self._thumbnails: Any = None  # (result, refs, future of their bytes) once the single job succeeded
        self._strip_at = 0.0
        self._thumbs: dict[str, str | None] = {}  # prompt_id -> thumbnail data URI (None: none)
        self._fetching: dict[str, Any] = {}  # prompt_id -> future of its first image's bytes
        self._display_id: str | None = None
        self._summary: str | None = None  # the static HTML once the view ended

    # -- how it is displayed ----------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        """Shown with a display id, so the static summary can take the widget's place when it ends."""
        from IPython.display import display

        if self._display_id is None:
            self._display_id = uuid.uuid4().hex
        display(self._bundle(), raw=True, display_id=self._display_id)

    def _bundle(self) -> dict:
        if self._summary is not None:
            return {"text/html": self._summary, "text/plain": self.line()}
        bundle = self.widget._repr_mimebundle_()
        bundle = bundle[0] if isinstance(bundle, tuple) else dict(bundle)
        bundle["text/plain"] = self.line()
        return bundle

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return self._bundle()

    def _set(self, widget: Any, **values: Any) -> None:
        """Assign only the values that differ from those last sent, in one message."""
        last = self._sent.setdefault(id(widget), {})
        changed = {k: v for k, v in values.items() if k not in last or last[k] != v}
        if not changed:
            return
        with widget.hold_sync():
            for name, value in changed.items():
                setattr(widget, name, value)
        last.update(changed)

    def _show(self, widget: Any, visible: bool) -> None:
        self._set(widget.layout, display=None if visible else "none")

    # -- rendering --------------------------------------------------------------------------------

    def _render(self, snap: Snapshot) -> bool:
        if not snap.total:
            return True
        single = self.tally.single
        body, live = self._render_single(single) if single is not None else self._render_many(snap)
        body += notices_html(snap.notices, snap.notice_count)
        if self.tally.stopped:
            body += f'<div style="{_MUTED}">■ {_display.esc(self.tally.stopped)}</div>'
        self._set(self._body, value=_frame(body))
        if single is None and self._update_strip(final=not live) and not live:
            return True  # the last thumbnails are still on their way
        if not live:
            self._end()
        return live

    def _render_single(self, job: Job) -> tuple[str, bool]:
        now = time.time()
        body = row_html(self.tally, job, now, full=True)
        preview = job.latest_preview
        if not job.done():
            if preview is not None and preview is not self._shown_preview:
                self._shown_preview = preview  # compared by identity: the bytes are not compared
                with self._preview.hold_sync():
                    self._preview.format = preview.mime.rpartition("/")[2]
                    self._preview.value = preview.image
                self._show(self._preview, True)
            return body, True
        self._show(self._preview, False)
        if job.status != SUCCESS:
            return body + (_display.error_html(job.error) if job.error else ""), False
        if self._thumbnails is None:
            result = _result(job)
            refs = _display.thumbnail_refs(result, THUMBNAILS)
            self._thumbnails = (result, refs, _loop.submit(_display.fetch_images(refs)))
        result, refs, fetching = self._thumbnails
        if not fetching.done():
            return body, True
        return body + _display.result_html(result, THUMBNAILS, fetching.result(), head=False), False

    def _render_many(self, snap: Snapshot) -> tuple[str, bool]:
        now = time.time()
        parts = [header_html(self.tally, snap)]
        if snap.open:
            parts.extend(row_html(self.tally, job, now) for job in snap.running[: self.rows])
            if len(snap.running) > self.rows:
                parts.append(f'<div style="{_MUTED}">+{len(snap.running) - self.rows} more running</div>')
        parts.append(servers_html(snap.servers))
        parts.append(failures_of(self.tally))
        return "".join(parts), snap.open > 0

    def _update_strip(self, final: bool) -> bool:
        """The latest successes' thumbnails: fetched in the background, sent at most once a second
        (and at the end). True while some are still being fetched."""
        recent = list(self.tally.recent)
        for job in recent:
            pid = job.prompt_id
            if pid in self._thumbs or pid in self._fetching:
                continue
            images = _display.thumbnail_refs(_result(job), 1)
            if images:
                self._fetching[pid] = _loop.submit(_display.fetch_images(images))
            else:
                self._thumbs[pid] = None
        for pid, fut in list(self._fetching.items()):
            if fut.done():
                blob = fut.result()[0]
                self._thumbs[pid] = _display.thumbnail_uri(blob, 96) if isinstance(blob, bytes) else None
                del self._fetching[pid]
        keep = {job.prompt_id for job in recent}
        self._thumbs = {k: v for k, v in self._thumbs.items() if k in keep or k in self._fetching}
        now = time.monotonic()
        pending = bool(self._fetching)
        if (final and pending) or (not final and now - self._strip_at < STRIP_INTERVAL):
            return pending
        self._strip_at = now
        shown = [(job, self.tally.where(job)[1], self._thumbs.get(job.prompt_id)) for job in reversed(recent)]
        self._set(self._strip, value=strip_html([s for s in shown if s[2] is not None]))
        return pending

    def _end(self) -> None:
        """Replace the widget by the static summary wherever it was displayed."""
        self._show(self._stop, False)
        self._summary = self.summary_html()
        if self._display_id is not None:
            try:
                from IPython.display import update_display

                update_display(self._bundle(), raw=True, display_id=self._display_id)
            except Exception:
                log.warning("could not replace the progress view by its summary", exc_info=True)

    def summary_html(self) -> str:
        """What stays in the notebook: counts, time, recovery, failures, and a strip of thumbnails."""
        return f"<div>{self._body.value}{self._strip.value}</div>"


class TextView(View):
    """One line on stderr: redrawn in place on a terminal (or a notebook's stream), a new line
    every few seconds otherwise, and always a final line once everything ended. Warnings about
    its jobs are written as lines of their own above it."""

    def __init__(self):
        super().__init__(on_job=self._watch_job)
        self.closed = False
        self._partial = False  # an unfinished line is on the terminal
        self._stream: Any = None
        self._live = False  # redraw in place (a terminal or a notebook stream)
        self._columns = 0
        self._width = 0
        self._last = ""
        self._last_at = 0.0
        self._unended = 0
        self._count_lock = threading.Lock()
        self._told = 0  # notices written so far

    def add_open(self, item: Job | Sweep | Iterable) -> TextView | None:
        """Like :meth:`View.add`, but None once the line was finished (then start another view)."""
        with self._flush_lock:
            if self.closed:
                return None
            self.add(item)
            return self

    def _watch_job(self, job: Job) -> None:
        if _kernel_shell() is not None:
            # In a kernel, output follows the asyncio context that settles the job, which can
            # be another cell's: only the flusher, a plain thread, writes to the running cell.
            return
        with self._count_lock:
            self._unended += 1
        job._state.future.add_done_callback(self._job_ended)

    def _job_ended(self, _: Any) -> None:
        """The last job ended: write the final line now, before the caller waiting for it goes on
        printing (this runs on comfynb's loop thread, as the job's outcome is set)."""
        with self._count_lock:
            self._unended -= 1
            last = self._unended == 0
        if last:
            self.flush()

    def _render(self, snap: Snapshot) -> bool:
        if self.closed:
            return False
        single = self.tally.single
        if single is not None:
            body = job_line(single, time.time(), self.tally.start_of(single))
        else:
            body = tally_line(snap, self.tally.title())
        text = "comfynb " + body
        final = snap.total > 0 and snap.open == 0
        stream = sys.stderr
        if stream is None:
            return not final
        if stream is not self._stream:
            # Looked up once per stream: isatty() releases the GIL, which would let a thread
            # waiting for the last job print before the final line.
            kernel = _kernel_shell() is not None
            self._stream, self._live = stream, kernel or _isatty(stream)
            self._columns = 200 if kernel else shutil.get_terminal_size().columns - 1
        live = self._live
        notes = (
            [t for _, t in list(self.tally.notices)[-(self.tally.notice_count - self._told) :]]
            if (self.tally.notice_count > self._told)
            else []
        )
        now = time.monotonic()
        if not final and not notes and (text == self._last or (not live and now - self._last_at < PIPE_INTERVAL)):
            return True
        out = ""
        if notes:
            self._told = self.tally.notice_count
            clear = "\r" + " " * self._width + "\r" if live and self._partial else ""
            out += clear + "".join(f"comfynb ⚠ {t}\n" for t in notes)
            self._width, self._partial = 0, False
        if live:
            text = text[: self._columns]
            out += "\r" + text.ljust(self._width)
            self._width = len(text)
        else:
            out += text
        if final or not live:
            out += "\n"
        try:
            stream.write(out)
            stream.flush()
        except (OSError, ValueError):  # a closed stream (interpreter shutdown, captured output gone)
            pass
        self._last, self._last_at = text, now
        self._partial = live and not final
        if final:
            self.closed = True
        return not final

    def end_line(self) -> None:
        """Leave the terminal on a new line (at exit, if the process ends before its jobs)."""
        with self._flush_lock:
            if self._partial and not self.closed:
                self.closed = True
                try:
                    sys.stderr.write("\n")
                except (OSError, ValueError, AttributeError):
                    pass


def _isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- comfynb's warnings, into the view they concern ------------------------------------------------

_PROMPT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Router(logging.Handler):
    """A handler on the ``comfynb`` logger: a warning naming a prompt (``extra={"prompt_id": ...}``,
    or its id in the message) or a server of a live view becomes a line in that view. Being a
    handler in the hierarchy, it also keeps logging's last-resort handler from printing those
    records as red stderr in whatever cell runs; one no view takes is printed as that handler
    would (unless the application configured logging, whose handlers get every record anyway)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self._views: list = []  # weak in spirit: views leave once ended and shown
        self._views_lock = threading.Lock()
        self._installed = False

    def attach(self, view: View) -> None:
        with self._views_lock:
            self._views = [v for v in self._views if not _ended(v)] + [view]
            if not self._installed:
                logging.getLogger("comfynb").addHandler(self)
                self._installed = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            given = getattr(record, "prompt_id", None)
            pids: list[str] = [str(given)] if given else []
            pids += _PROMPT_ID.findall(message)
            server = getattr(record, "server", None)
            with self._views_lock:
                views = [v for v in self._views if not _ended(v)]
            taken = False
            for view in views:
                tally = view.tally
                if any(tally.follows(p) for p in pids) or (not pids and _names_server(tally, server, message)):
                    text = message
                    for pid in set(pids):
                        text = text.replace(pid, pid[:8])
                    view.notice(text)
                    taken = True
            if not taken and not logging.getLogger().handlers and logging.lastResort is not None:
                logging.lastResort.handle(record)
        except Exception:
            self.handleError(record)


def _ended(view: View) -> bool:
    return getattr(view, "closed", False) or getattr(view, "_summary", None) is not None


def _names_server(tally: Tally, server: str | None, message: str) -> bool:
    for session in tally.sessions:
        for s in getattr(session, "_servers", ()):
            if s.url == server or (server is None and s.url in message):
                return True
    return False


_router = _Router()


# -- the flusher ---------------------------------------------------------------------------------


class _Flusher:
    """The one thread that updates every live view, every ``INTERVAL`` seconds; it exits when
    no view is live and is started again by the next one."""

    def __init__(self):
        self._views: list[View] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, view: View) -> None:
        with self._lock:
            view._rewatch = True
            if view not in self._views:
                self._views.append(view)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="comfynb-progress", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                views = list(self._views)
                if not views:
                    self._thread = None
                    return
            for view in views:
                with self._lock:
                    view._rewatch = False
                try:
                    live = view.flush()
                except Exception:
                    log.exception("a progress view failed and stops updating (please report)")
                    live = False
                if not live:
                    with self._lock:
                        if not view._rewatch:
                            self._views.remove(view)
            time.sleep(INTERVAL)


_flusher = _Flusher()


# -- entry points ------------------------------------------------------------------------------------


def progress(jobs: Job | Sweep | Iterable, *, mode: str = "auto", rows: int = ROWS) -> View:
    """A live view of a job, a sweep, or any jobs (``comfynb.progress(jobs)``).

    In a kernel with ipywidgets it is a widget: make it a cell's last expression, or ``display()``
    it; once everything ended it turns into a static summary. Elsewhere (``mode="text"`` forces it)
    it writes one line on stderr until the jobs end. One header and ``rows`` rows, whatever the
    number of jobs; its Stop button (or ``view.stop()``) cancels what has not ended.
    """
    kind = resolve_mode(mode)
    if kind is None:
        raise ValueError("progress() needs mode 'auto', 'widget' or 'text'")
    return WidgetView(rows).add(jobs) if kind == "widget" else _text(jobs)


_lock = threading.Lock()
_cell = 0  # counts cells run by the kernel (an IPython pre_run_cell hook)
_cell_hooked = False
_cell_view: tuple[int, WidgetView] | None = None
_text_view: TextView | None = None


def _next_cell(*_: Any) -> None:
    global _cell
    _cell += 1


def _text(item: Job | Sweep | Iterable) -> TextView:
    """The process's text line (two lines redrawn in place would garble each other); a new one
    once the last one ended."""
    global _text_view
    with _lock:
        view = _text_view.add_open(item) if _text_view is not None else None
        if view is None:
            _text_view = view = TextView()
            view.add(item)
        return view


@atexit.register
def _end_text_line() -> None:
    if _text_view is not None:
        _text_view.end_line()


def announce(session: Any, item: Job | Sweep) -> None:
    """The session's submit hook: show ``item`` as ``session.progress`` says. Never raises, so a
    display problem cannot fail a submission."""
    global _cell_hooked, _cell_view
    try:
        _display.remember(session)  # results frames of its jobs can show thumbnails
        mode = resolve_mode(session.progress)
        if mode is None:
            return
        if mode == "text":
            _text(item).tally.watch(session)
            return
        shell = _kernel_shell()
        with _lock:
            if shell is not None and not _cell_hooked:
                shell.events.register("pre_run_cell", _next_cell)
                _cell_hooked = True
            if shell is not None and _cell_view is not None and _cell_view[0] == _cell and not _ended(_cell_view[1]):
                _cell_view[1].tally.watch(session)
                _cell_view[1].add(item)
                return
            view = WidgetView()
            view.tally.watch(session)
            view.add(item)
            if shell is not None:
                _cell_view = (_cell, view)
        from IPython.display import display

        display(view)
    except Exception:
        log.warning("could not show the progress of %r", item, exc_info=True)


if announce not in _session.submit_hooks:
    _session.submit_hooks.append(announce)
