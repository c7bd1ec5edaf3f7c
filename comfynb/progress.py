"""Live progress of jobs and sweeps: ipywidgets in a Jupyter kernel, one text line on stderr elsewhere.

Layering: the client never imports this module. Importing ``comfynb`` imports it, which appends
:func:`announce` to ``comfynb.session.submit_hooks``; the session calls those hooks with every job
and sweep it starts, and :func:`announce` shows them as ``Session(progress=...)`` asks. A hook,
rather than an IPython formatter, because progress must appear when work is *submitted*
(``job = session.submit(wf)`` displays nothing by itself) and in plain scripts, which have no IPython.

Cost: events only touch plain attributes (see ``tracker.py``). One daemon thread, the flusher,
wakes a few times a second, reads those attributes for every live view, and pushes only the
values that changed, each widget's changes as one message (``hold_sync``). A view has a fixed set
of widgets (an aggregate bar, a small pool of rows reused for the jobs running now, a preview, a
detail pane), never one per job, so the number of comm messages grows with elapsed time, not with
the number of jobs or events.

In a kernel, everything one cell submits shares one view, shown in that cell's output: a single
job gets the detailed view (status, nodes, sampler steps, elapsed time, latest preview, then the
result's thumbnails or the error); when a second job or a sweep joins it, the view turns into the
aggregate one (done / failed / total, rate, ETA, rows for the running jobs, failures table).
"""

from __future__ import annotations

import atexit
import collections
import functools
import importlib.util
import logging
import shutil
import sys
import threading
import time
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
_FAILURES = 10  # failed jobs kept for the failures table
_BAR = 20  # characters of the text bar
_STYLES = {"success": "success", "error": "danger", "interrupted": "warning", "lost": "danger", "running": "info"}


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


# -- what a view follows -------------------------------------------------------------------------


class Snapshot:
    """Counts of a view's jobs at one flush."""

    def __init__(self, tally: Tally, running: list[Job], queued: int, waiting: int, now: float):
        self.total = tally.total
        self.ended = sum(tally.ended.values())
        self.done = tally.ended[SUCCESS]
        self.failed = self.ended - self.done
        self.running = running
        self.queued = queued
        self.waiting = waiting  # not accepted by a server yet (or held by a sweep)
        self.open = tally.total - self.ended
        self.elapsed = (now if self.open else tally.last_end or now) - tally.started
        self.rate = self.ended / self.elapsed if self.ended and self.elapsed > 0 else None
        self.eta = self.open / self.rate if self.rate else None
        self.down = [url for session in tally.sessions for url in session.down_servers()]


class Tally:
    """The jobs a view follows. Ended jobs are counted once and dropped, so a refresh only looks
    at unfinished ones; ``on_job`` is called once for every job that joins."""

    def __init__(self, on_job: Any = None):
        self.items: list[Job | Sweep] = []
        self.total = 0
        self.ended: collections.Counter[str] = collections.Counter()
        self.failures: list[Job] = []
        self.started = time.time()
        self.last_end: float | None = None
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
            jobs = list(item.jobs)
            for job in jobs:
                self._seen.add(job.prompt_id)
                new.append(job)
            self._late.append((item, len(jobs)))  # rows are sent lazily: their jobs join as they come
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            for each in item:
                self._add(each, new)
        else:
            raise TypeError(f"progress follows jobs and sweeps, not {type(item).__name__}")

    def watch(self, session: Any) -> None:
        """Show which of ``session``'s servers are down."""
        if session is not None and all(session is not s for s in self.sessions):
            self.sessions.append(session)

    def _joined(self, job: Job) -> None:
        with self._lock:
            self._open.append(job)
        if self._on_job is not None:
            self._on_job(job)

    def refresh(self) -> Snapshot:
        """Count the jobs that ended since the last refresh; list those running now."""
        if self._late:
            with self._lock:
                late, self._late, made = self._late, [], []
                for sweep, joined in late:
                    done = sweep.done()  # read first: a sweep is done only once its last job exists
                    jobs = sweep.jobs[joined:]
                    made += jobs
                    joined += len(jobs)
                    if joined >= len(sweep):
                        continue
                    if done:  # rows never sent (cancelled, or the session closed) end here
                        for status, n in sweep.unsent().items():
                            self.ended[status] += n
                    else:
                        self._late.append((sweep, joined))
            for job in made:
                self._joined(job)
        now = time.time()
        with self._lock:
            still, running, queued, waiting = [], [], 0, 0
            for job in self._open:
                status = job.status
                if status in TERMINAL:
                    self.ended[status] += 1
                    self.last_end = max(self.last_end or 0.0, job.finished_at or now)
                    if status != SUCCESS and len(self.failures) < _FAILURES:
                        self.failures.append(job)
                    continue
                still.append(job)
                if status == RUNNING:
                    running.append(job)
                elif status == QUEUED:
                    queued += 1
                else:
                    waiting += 1
            self._open = still
            unsent = sum(len(sweep) - joined for sweep, joined in self._late)
            return Snapshot(self, running, queued, waiting + unsent, now)

    def title(self) -> str:
        sweeps = [i for i in self.items if isinstance(i, Sweep)]
        if len(sweeps) == 1 and len(self.items) == 1:
            sweep = sweeps[0]
            return f"sweep {sweep.tag} ({sweep.sweep_id})" if sweep.tag else f"sweep {sweep.sweep_id}"
        return f"{self.total} jobs"


# -- one-line text --------------------------------------------------------------------------------


def clock(value: float | None) -> str:
    if value is None:
        return "?"
    minutes, secs = divmod(int(value + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _node_name(job: Job, node: str | None) -> str:
    """``KSampler #3``: the node's class, read from the prompt the job sent."""
    if node is None:
        return ""
    body = job._state.body
    cls = ((body or {}).get("prompt") or {}).get(node, {}).get("class_type")
    return f"{cls} #{node}" if cls else f"node {node}"


def job_details(job: Job, now: float) -> list[str]:
    """What one job is doing: parameters, nodes, the running node and its step, elapsed time, error."""
    prog = job.progress
    parts = []
    params = _display.params_text(job.tags, 60)
    if params:
        parts.append(params)
    if prog.nodes_total:
        parts.append(f"nodes {prog.nodes_done}/{prog.nodes_total}")
    if not job.done() and prog.node is not None:
        parts.append(_node_name(job, prog.node) + (f" {prog.value}/{prog.max}" if prog.max else ""))
    if job.done():
        parts.append(_display.seconds((job.finished_at or now) - job.submitted_at))
        if job.error is not None:
            parts.append(_display.error_text(job.error, 120))
    else:
        parts.append(f"{int(now - job.submitted_at)} s")
    return parts


def job_line(job: Job, now: float) -> str:
    return " · ".join([job.prompt_id[:8], job.status, *job_details(job, now)])


def tally_details(snap: Snapshot) -> list[str]:
    """The aggregate: ended/total, failures, what runs, rate and ETA (or the time it all took)."""
    parts = [f"{snap.ended}/{snap.total}"]
    if snap.failed:
        parts.append(f"{snap.failed} failed")
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
        parts.append(_display.seconds(snap.elapsed))
    if snap.down:
        parts.append(f"{len(snap.down)} server(s) down: {', '.join(snap.down)}")
    return parts


def tally_line(snap: Snapshot) -> str:
    filled = _BAR * snap.ended // snap.total if snap.total else 0
    return f"[{'#' * filled}{'-' * (_BAR - filled)}] " + " · ".join(tally_details(snap))


# -- views ------------------------------------------------------------------------------------------


class View:
    """Jobs followed and how they are shown; the flusher calls :meth:`flush`."""

    def __init__(self, on_job: Any = None):
        self.tally = Tally(on_job)
        self._flush_lock = threading.RLock()  # re-entered by a text view's done-callback, which
        # runs at once (and flushes) when a job that already ended joins it
        self._rewatch = False  # set by the flusher's watch(): new work arrived during a flush

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

    def line(self) -> str:
        snap = self.tally.refresh()
        single = self.tally.single
        return job_line(single, time.time()) if single is not None else tally_line(snap)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.line()}>"


class _Row:
    """One reusable row of a widget view: the job's line, and its sampler step bar."""

    def __init__(self, widgets: Any):
        self.info = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, layout=widgets.Layout(width="160px"))
        self.box = widgets.HBox([self.info, self.bar], layout=widgets.Layout(display="none"))
        self.job: Job | None = None
        self.steps = (0, 1)  # the last step counter seen, kept while other nodes run


class WidgetView(View):
    """An ipywidgets view with a fixed set of widgets, whatever the number of jobs."""

    def __init__(self, rows: int = ROWS):
        import ipywidgets as widgets

        super().__init__()
        self._title = widgets.HTML()
        self._bar = widgets.IntProgress(min=0, max=1, layout=widgets.Layout(width="320px"))
        self._label = widgets.HTML()
        self._header = widgets.HBox([self._title, self._bar, self._label], layout=widgets.Layout(display="none"))
        self._rows = [_Row(widgets) for _ in range(max(1, rows))]
        self._preview = widgets.Image(format="jpeg", layout=widgets.Layout(display="none", max_width="256px"))
        self._detail = widgets.HTML()
        self.widget = widgets.VBox([self._header, *(r.box for r in self._rows), self._preview, self._detail])
        self._sent: dict[int, dict[str, Any]] = {}
        self._shown_preview: Any = None
        self._thumbnails: Any = None  # (result, refs, future of their bytes) once the single job succeeded
        self._failures_shown = -1

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return self.widget._repr_mimebundle_(**kwargs)

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

    def _render(self, snap: Snapshot) -> bool:
        if not snap.total:
            return True
        single = self.tally.single
        if single is not None:
            return self._render_single(single)
        return self._render_many(snap)

    def _row(self, row: _Row, job: Job, now: float) -> None:
        prog = job.progress
        if prog.max:
            row.steps = (prog.value, prog.max)
        if job.status == SUCCESS:
            row.steps = (row.steps[1], row.steps[1])
        value, top = row.steps
        details = _display.esc(" · ".join(job_details(job, now)))
        self._set(row.info, value=f"{_display.badge(job.status)} <code>{job.prompt_id[:8]}</code> · {details}")
        self._set(row.bar, max=top, value=value, bar_style=_STYLES.get(job.status, ""))
        self._show(row.box, True)

    def _render_single(self, job: Job) -> bool:
        now = time.time()
        self._show(self._header, False)
        first = self._rows[0]
        if first.job is not job:
            first.job, first.steps = job, (0, 1)
        self._row(first, job, now)
        for row in self._rows[1:]:
            self._show(row.box, False)
        preview = job.latest_preview
        if not job.done():
            if preview is not None and preview is not self._shown_preview:
                self._shown_preview = preview  # compared by identity: the bytes are not compared
                with self._preview.hold_sync():
                    self._preview.format = preview.mime.rpartition("/")[2]
                    self._preview.value = preview.image
                self._show(self._preview, True)
            return True
        self._show(self._preview, False)
        if job.status != SUCCESS:
            self._set(self._detail, value=_display.error_html(job.error) if job.error else "")
            return False
        if self._thumbnails is None:
            result = job.result()
            refs = _display.thumbnail_refs(result, THUMBNAILS)
            self._thumbnails = (result, refs, _loop.submit(_display.fetch_images(refs)))
        result, refs, fetching = self._thumbnails
        if not fetching.done():
            return True
        self._set(self._detail, value=_display.result_html(result, THUMBNAILS, fetching.result(), head=False))
        return False

    def _render_many(self, snap: Snapshot) -> bool:
        now = time.time()
        self._show(self._header, True)
        self._set(self._title, value=f"<b>{_display.esc(self.tally.title())}</b>&nbsp;")
        style = "info" if snap.open else "success" if not snap.failed else "danger" if not snap.done else "warning"
        self._set(self._bar, max=max(1, snap.total), value=snap.ended, bar_style=style)
        self._set(self._label, value="&nbsp;" + _display.esc(" · ".join(tally_details(snap))))
        self._show(self._preview, False)
        # Rows: a job keeps its row while it runs; a row whose job stopped is reused by the next one.
        running = set(snap.running)
        kept = {row.job for row in self._rows if row.job in running}
        waiting = iter(job for job in snap.running if job not in kept)
        for row in self._rows:
            if row.job not in running:
                job = next(waiting, None)
                if job is not None:
                    row.job, row.steps = job, (0, 1)
            if row.job is None or not snap.open:
                self._show(row.box, False)
            else:
                self._row(row, row.job, now)
        if len(self.tally.failures) != self._failures_shown:
            self._failures_shown = len(self.tally.failures)
            self._set(self._detail, value=_display.failures_html(self.tally.failures))
        return snap.open > 0


class TextView(View):
    """One line on stderr: redrawn in place on a terminal (or a notebook's stream), a new line
    every few seconds otherwise, and always a final line once everything ended."""

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

    def add(self, item: Job | Sweep | Iterable) -> View | None:
        """Like :meth:`View.add`, but None once the line was finished (then start another view)."""
        with self._flush_lock:
            return None if self.closed else super().add(item)

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
        text = "comfynb " + (job_line(single, time.time()) if single is not None else tally_line(snap))
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
        now = time.monotonic()
        if not final and (text == self._last or (not live and now - self._last_at < PIPE_INTERVAL)):
            return True
        if live:
            text = text[: self._columns]
            out = "\r" + text.ljust(self._width)
            self._width = len(text)
        else:
            out = text
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
    it. Elsewhere (``mode="text"`` forces it) it writes one line on stderr until the jobs end.
    One aggregate bar and ``rows`` reused rows, whatever the number of jobs.
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
        view = _text_view.add(item) if _text_view is not None else None
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
            if shell is not None and _cell_view is not None and _cell_view[0] == _cell:
                _cell_view[1].add(item).tally.watch(session)
                return
            view = WidgetView()
            view.add(item).tally.watch(session)
            if shell is not None:
                _cell_view = (_cell, view)
        from IPython.display import display

        display(view)
    except Exception:
        log.warning("could not show the progress of %r", item, exc_info=True)


if announce not in _session.submit_hooks:
    _session.submit_hooks.append(announce)
