"""Live progress: widget views updated by one flusher with only changed values, a text line on
stderr outside kernels, and Session(progress=...) wiring. Real jobs from a simulated session;
widget messages are counted at ipywidgets' comm seam."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from notebook_helpers import WAIT, comms, make_session, txt2img, until  # noqa: F401 (fixtures)

import comfynb
from comfynb import Session, ValidationError, Workflow
from comfynb.progress import ROWS, TextView, WidgetView, job_line, resolve_mode
from comfynb.sim.library import load_workflow

P = sys.modules["comfynb.progress"]  # `comfynb.progress` is the function


def wait_ended(view, timeout: float = WAIT) -> None:
    """Flush until the view says everything ended and was shown."""
    until(lambda: not view.flush(), timeout)


# -- a job's widget -------------------------------------------------------------------------------


def test_job_widget_shows_steps_preview_then_thumbnails(make_session, comms):
    session = make_session(step_time=0.03, preview_method="latent2rgb")
    job = session.submit(txt2img(seed=7, steps=6))
    view = comfynb.progress(job, mode="widget")
    assert isinstance(view, WidgetView)
    seen = set()
    while view.flush():
        row = view._rows[0]
        if job.status == "running" and row.bar.max == 6:
            seen.add("steps")
        if view._preview.layout.display is None and view._preview.value:
            seen.add("preview")
        time.sleep(0.01)
    assert seen == {"steps", "preview"}
    frames = [state for cid, state in comms.updates() if cid == view._preview.comm.comm_id and "value" in state]
    assert len(frames) >= 2 and bytes(view._preview.value).startswith(
        b"\xff\xd8"
    )  # new JPEG previews replaced older ones
    assert view._preview.layout.display == "none"  # replaced by the result once it ended
    info = view._rows[0].info.value
    assert "success" in info and "nodes 7/7" in info and job.prompt_id[:8] in info
    assert view._rows[0].bar.value == view._rows[0].bar.max == 6
    assert view._header.layout.display == "none"  # no aggregate bar for one job
    assert view._detail.value.count('<img src="data:image/jpeg;base64,') == len(job.result().images) == 1


def test_job_widget_shows_validation_errors_per_node(make_session, comms):
    session = make_session()
    bad = txt2img()
    bad["KSampler.steps"] = 0
    bad["KSampler.sampler_name"] = "no_such_sampler"
    job = session.submit(bad)
    view = comfynb.progress(job, mode="widget")
    wait_ended(view)
    with pytest.raises(ValidationError):
        job.result()
    detail = view._detail.value
    assert "<table>" in detail and detail.count("<tr>") == 3  # header + one row per bad input
    assert "value_smaller_than_min" in detail and "value_not_in_list" in detail
    assert "KSampler" in detail and "steps" in detail and "sampler_name" in detail
    assert "error" in view._rows[0].info.value


def test_job_widget_shows_failing_node_and_exception(make_session, comms):
    session = make_session()
    job = session.submit(load_workflow("runtime_error"))
    view = comfynb.progress(job, mode="widget")
    wait_ended(view)
    detail = view._detail.value
    assert "ExecutionError" in detail and "<b>2</b> (ImageToMask)" in detail
    assert "IndexError" in detail and "index 3 is out of bounds" in detail
    assert view._rows[0].bar.bar_style == "danger"


# -- the aggregate widget ----------------------------------------------------------------------------


def test_aggregate_widget_is_fixed_size_and_sends_only_changes(make_session, comms):
    session = make_session()
    sweep = session.sweep(txt2img(steps=12), grid={"KSampler.seed": range(60)}, concurrency=6, tag="agg")
    view = WidgetView()
    opened = comms.count("comm_open")
    flushes = 0
    real_flush = view.flush

    def counting_flush():
        nonlocal flushes
        flushes += 1
        return real_flush()

    view.flush = counting_flush  # the flusher thread calls this
    view.add(sweep)
    sweep.result(timeout=WAIT)
    until(lambda: view not in P._flusher._views)
    # Every widget exists from the start: nothing was opened for the 60 jobs.
    assert comms.count("comm_open") == opened
    # Each flush sends at most one message per widget (hold_sync) and never a value unchanged.
    updates = comms.updates()
    models = 3 + 2 * ROWS + 1 + 1  # header texts and bar, rows, preview, detail
    layouts = 1 + ROWS + 1  # header, rows, preview can be shown or hidden
    assert 0 < len(updates) <= flushes * (models + layouts)
    events = sum(job.events for job in sweep.jobs)
    assert events > 5 * len(updates), (events, len(updates))
    last: dict = {}
    for cid, state in updates:
        assert any(last.get(cid, {}).get(k, object()) != v for k, v in state.items()), state
        last.setdefault(cid, {}).update(state)
    assert view._bar.value == view._bar.max == 60 and view._bar.bar_style == "success"
    assert view._label.value.startswith("&nbsp;60/60")
    assert "sweep agg" in view._title.value
    assert all(row.box.layout.display == "none" for row in view._rows)  # nothing runs any more
    before = len(comms.sent)
    assert view.flush() is False and view.flush() is False
    assert len(comms.sent) == before


def test_aggregate_rows_follow_running_jobs_and_failures_are_listed(make_session, comms):
    session = make_session(step_time=0.01)
    good = [session.submit(txt2img(seed=s, steps=5)) for s in range(5)]
    bad = txt2img()
    bad["KSampler.cfg"] = -5.0
    failed = session.submit(bad)
    view = comfynb.progress([*good, failed], mode="widget", rows=2)
    shown = set()
    while view.flush():
        for row in view._rows:
            if row.box.layout.display is None and row.job is not None and row.job.status == "running":
                assert row.job.prompt_id[:8] in row.info.value
                shown.add(row.job.prompt_id)
        time.sleep(0.005)
    assert len(view._rows) == 2 and shown <= {j.prompt_id for j in good} and shown
    assert view._bar.value == 6 and view._bar.bar_style == "warning"  # some failed
    assert "1 failed" in view._label.value
    assert failed.prompt_id in view._detail.value and "ValidationError" in view._detail.value


def test_one_cell_shows_one_widget_and_switches_to_aggregate(make_session, comms, monkeypatch):
    """progress="auto" in a kernel: one view per cell, shown once, whatever is submitted."""
    shown, hooks = [], []

    class Shell:
        kernel = object()

        class events:
            @staticmethod
            def register(name, callback):
                hooks.append((name, callback))

    monkeypatch.setattr(P, "_kernel_shell", lambda: Shell)
    monkeypatch.setattr(P, "_cell_hooked", False)
    monkeypatch.setattr(P, "_cell_view", None)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    session = make_session(progress="auto")
    first = session.submit(txt2img(seed=1))
    assert len(shown) == 1 and isinstance(shown[0], WidgetView)
    view = shown[0]
    until(lambda: view._rows[0].box.layout.display is None)
    assert view._header.layout.display == "none"  # one job: the detailed view
    more = [session.submit(txt2img(seed=s)) for s in range(2, 5)]
    assert len(shown) == 1 and view.tally.total == 4
    [job.result(WAIT) for job in [first, *more]]
    until(lambda: view._bar.value == 4)
    assert view._header.layout.display is None  # now the aggregate view
    assert [name for name, _ in hooks] == ["pre_run_cell"]
    hooks[0][1](None)  # the kernel starts the next cell
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": range(10, 13)})
    assert len(shown) == 2 and shown[1] is not view and shown[1].tally.items == [sweep]
    sweep.result(WAIT)


def test_one_flusher_thread_for_all_views(make_session, comms):
    session = make_session(step_time=0.02)
    jobs = [session.submit(txt2img(seed=s, steps=4)) for s in range(4)]
    views = [comfynb.progress(job, mode="widget") for job in jobs] + [comfynb.progress(jobs, mode="widget")]
    threads = [t for t in threading.enumerate() if t.name == "comfynb-progress"]
    assert len(threads) == 1
    for job in jobs:
        job.result(WAIT)
    until(lambda: not any(v in P._flusher._views for v in views))
    until(lambda: not any(t.name == "comfynb-progress" for t in threading.enumerate()))


# -- text line, modes, session wiring ---------------------------------------------------------------


def test_text_line_outside_a_kernel(make_session, capsys):
    assert resolve_mode("auto") == "text"  # pytest is no Jupyter kernel
    session = make_session(progress="auto", step_time=0.01)
    started = time.monotonic()
    job = session.submit(txt2img(seed=3, steps=3))
    job.result(WAIT)
    until(lambda: P._text_view is not None and P._text_view.closed)
    took = time.monotonic() - started
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith(f"comfynb {job.prompt_id[:8]} · success · nodes 7/7 · ")
    # stderr is no terminal here: a line at the start, one every PIPE_INTERVAL, one at the end
    assert len(lines) <= 2 + took / P.PIPE_INTERVAL


def test_text_line_aggregates_and_is_throttled(make_session, capsys, monkeypatch):
    monkeypatch.setattr(P, "PIPE_INTERVAL", 0.2)
    session = make_session(progress="text", step_time=0.01)
    sweep = session.sweep(txt2img(steps=3), grid={"KSampler.seed": range(30)}, concurrency=4)
    started = time.monotonic()
    sweep.result(WAIT)
    took = time.monotonic() - started
    until(lambda: P._text_view.closed)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("comfynb [####################] 30/30 · ")
    assert all(line.startswith("comfynb [") for line in lines)
    assert len(lines) <= took / 0.2 + 3


def test_text_line_redraws_in_place_on_a_terminal(make_session, monkeypatch):
    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    session = make_session(progress="text", step_time=0.05)
    job = session.submit(txt2img(seed=4, steps=10))
    job.result(WAIT)
    until(lambda: P._text_view.closed)
    assert terminal.text.startswith("\rcomfynb ") and terminal.text.endswith("\n")
    assert terminal.text.count("\n") == 1 and terminal.text.count("\r") >= 2
    assert terminal.text.rstrip("\n").rsplit("\r", 1)[1].startswith(f"comfynb {job.prompt_id[:8]} · success")


def test_progress_false_shows_nothing(make_session, capsys, monkeypatch):
    monkeypatch.setattr(P, "_text_view", None)
    session = make_session(progress=False)
    session.submit(txt2img(seed=5)).result(WAIT)
    session.sweep(txt2img(), grid={"KSampler.seed": range(2)}).result(WAIT)
    assert P._text_view is None
    assert capsys.readouterr().err == ""


def test_progress_settings_are_checked():
    with pytest.raises(ValueError, match="progress must be"):
        Session("http://127.0.0.1:1", progress="bars")
    with pytest.raises(ValueError):
        comfynb.progress([], mode=False)
    with pytest.raises(TypeError, match="jobs and sweeps"):
        comfynb.progress(Workflow.load(load_workflow("tiny")), mode="text")


def test_view_repr_is_its_line(make_session):
    session = make_session()
    job = session.submit(txt2img(seed=6))
    job.result(WAIT)
    view = TextView()
    view.add(job)
    assert repr(view) == f"<TextView {job_line(job, time.time())}>"


def test_views_say_which_servers_are_down(make_session):
    """A sweep's view names a server of its session that is marked down, and stops once it is back."""
    session = make_session(n=2, down_after=0.2, node_times={"KSampler": 0.05})
    sweep = session.sweep(txt2img(seed=1), grid={"KSampler.seed": range(8)})
    view = comfynb.progress(sweep, mode="text")
    dead = session.simulators[1]
    dead.partition(downtime=1.5)
    until(lambda: dead.url in session.down_servers())
    assert f"1 server(s) down: {dead.url}" in view.line()
    sweep.result(WAIT)
    until(lambda: not session.down_servers())
    assert "down" not in view.line()
