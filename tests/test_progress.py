"""Live progress: widget views updated by one flusher with only changed values, honest counts by
outcome, recovery and warnings inside the view, a Stop button, a static summary once a view ends,
a text line on stderr outside kernels, and interruptible waits in a real kernel. Real jobs from
simulated sessions; widget messages are counted at ipywidgets' comm seam."""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time

import pytest
from notebook_helpers import FAST, WAIT, comms, make_session, txt2img, until  # noqa: F401 (fixtures)

import comfynb
from comfynb import Session, ValidationError, Workflow
from comfynb.progress import TextView, WidgetView, fraction, job_line, resolve_mode, shown_status
from comfynb.sim import Simulator
from comfynb.sim.library import load_workflow

P = sys.modules["comfynb.progress"]  # `comfynb.progress` is the function


def wait_ended(view, timeout: float = WAIT) -> None:
    """Flush until the view says everything ended and was shown."""
    until(lambda: not view.flush(), timeout)


def text_of(html: str) -> str:
    """The words of some HTML, tags dropped (what a reader sees)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&nbsp;", " ")


# -- a job's widget -------------------------------------------------------------------------------


def test_job_widget_shows_steps_preview_then_thumbnails_and_a_summary(make_session, comms):
    session = make_session(step_time=0.03, preview_method="latent2rgb")
    job = session.submit(txt2img(seed=7, steps=6))
    view = comfynb.progress(job, mode="widget")
    assert isinstance(view, WidgetView)
    seen = set()
    while view.flush():
        if job.status == "running" and "KSampler #3 " in view._body.value:
            seen.add("steps")
        if view._preview.layout.display is None and view._preview.value:
            seen.add("preview")
        if job.progress.nodes_done and not job.done():
            assert fraction(job) > 0  # the step bar is never empty once a node finished
        time.sleep(0.01)
    assert seen == {"steps", "preview"}
    frames = [state for cid, state in comms.updates() if cid == view._preview.comm.comm_id and "value" in state]
    assert len(frames) >= 2 and bytes(view._preview.value).startswith(b"\xff\xd8")  # JPEG previews replaced
    assert view._preview.layout.display == "none"  # replaced by the result once it ended
    words = text_of(view._body.value)
    assert "success" in words and "nodes 7/7" in words and job.prompt_id[:8] in words
    assert re.search(r"waited \d+\.\d+ s · ran \d+\.\d+ s", words), words  # queue wait and run time apart
    assert view._body.value.count('<img src="data:image/jpeg;base64,') == len(job.result().images) == 1
    # The view ended: the Stop button went, and the static summary (what a saved notebook keeps) is ready.
    assert view._stop.layout.display == "none"
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"} and "nodes 7/7" in bundle["text/html"]
    assert bundle["text/plain"].startswith(f"{job.prompt_id[:8]} · success · ")


def test_job_widget_shows_validation_errors_per_node_once(make_session, comms):
    session = make_session()
    bad = txt2img()
    bad["KSampler.steps"] = 0
    bad["KSampler.sampler_name"] = "no_such_sampler"
    job = session.submit(bad)
    view = comfynb.progress(job, mode="widget")
    wait_ended(view)
    with pytest.raises(ValidationError):
        job.result()
    body = view._body.value
    assert body.count("<table") == 1 and body.count("<tr>") == 3  # header + one row per bad input
    assert "padding:3px 10px" in body  # padded cells
    assert "value_smaller_than_min" in body and "value_not_in_list" in body
    assert "KSampler" in body and "steps" in body and "sampler_name" in body and "error" in body


def test_job_widget_shows_failing_node_and_exception(make_session, comms):
    session = make_session()
    job = session.submit(load_workflow("runtime_error"))
    view = comfynb.progress(job, mode="widget")
    wait_ended(view)
    body = view._body.value
    assert "ExecutionError" in body and "<b>2</b> (ImageToMask)" in body
    assert "IndexError" in body and "index 3 is out of bounds" in body


def test_a_job_whose_final_message_is_lost_reads_finishing_not_running(make_session):
    """Every node ran but `executing {node: null}` never came: the job is being looked up, and
    the view says so instead of `running · nodes 7/7` until reconciliation settles it."""
    session = make_session(faults={"drop": {"executing_done": 1.0}}, reconcile_after=1.5)
    job = session.submit(txt2img(seed=2))
    view = comfynb.progress(job, mode="text")
    line = until(lambda: job.progress.nodes_done == 7 and not job.done() and view.line())
    assert shown_status(job) == "finishing" and " · finishing · nodes 7/7" in line, line
    job.result(WAIT)
    assert " · success · nodes 7/7" in view.line()


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
    assert 0 < len(updates) <= flushes * 5  # body, strip, preview (+ its layout), Stop's layout
    events = sum(job.events for job in sweep.jobs)
    assert events > 5 * len(updates), (events, len(updates))
    last: dict = {}
    for cid, state in updates:
        assert any(last.get(cid, {}).get(k, object()) != v for k, v in state.items()), state
        last.setdefault(cid, {}).update(state)
    words = text_of(view._body.value)
    assert "sweep agg 60/60" in words and "60 ok" in words and "failed" not in words
    assert 'title="60 ok" style="width:100.000%' in view._body.value  # the stacked bar, all green
    assert "comfynb-row" not in view._body.value  # nothing runs any more
    # The strip holds the latest thumbnails, captioned with their parameters.
    assert view._strip.value.count("<img") == P.STRIP and "KSampler.seed=59" in view._strip.value
    before = len(comms.sent)
    assert view.flush() is False and view.flush() is False
    assert len(comms.sent) == before


def test_rows_follow_running_jobs_in_a_fixed_grid_and_failures_are_listed(make_session, comms):
    session = make_session(step_time=0.01)
    good = [session.submit(txt2img(seed=s, steps=5)) for s in range(5)]
    bad = txt2img()
    bad["KSampler.cfg"] = -5.0
    failed = session.submit(bad)
    view = comfynb.progress([*good, failed], mode="widget", rows=2)
    shown = set()
    while view.flush():
        body = view._body.value
        rows = re.findall(r'class="comfynb-row" style="display:grid;grid-template-columns:([^;]+);', body)
        assert len(rows) <= 2 and len(set(rows)) <= 1  # every row has the same columns: bars line up
        for job in good:
            if job.prompt_id[:8] in body:
                shown.add(job.prompt_id)
        time.sleep(0.005)
    assert shown and shown <= {j.prompt_id for j in good}
    words = text_of(view._body.value)
    assert "5 ok · 1 error" in words
    table = view._body.value[view._body.value.index("comfynb-failures") :]
    assert failed.prompt_id[:8] in table and "ValidationError" in table
    assert table.count(failed.prompt_id) == 1  # once, as the short id's tooltip: not repeated in the message


def test_cancelling_a_sweep_counts_cancelled_not_failed(make_session, comms):
    """The Stop button cancels everything unfinished and says what it stopped; the counts then
    read `N ok · M cancelled` (no failure, no failures table), in the widget and as text."""
    session = make_session(node_time=0.05)
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": range(12)}, concurrency=2, tag="stop-me")
    view = comfynb.progress(sweep, mode="widget")
    until(lambda: sum(job.status == "success" for job in sweep.jobs) >= 2)
    view._stop.click()  # what a click in the browser does
    sweep.result(WAIT)
    wait_ended(view)
    counts = view.tally.refresh().counts
    assert counts.get("ok", 0) >= 2 and counts["ok"] + counts["cancelled"] == 12 and set(counts) == {"ok", "cancelled"}
    words = text_of(view._body.value)
    assert f"{counts['ok']} ok · {counts['cancelled']} cancelled" in words
    assert re.search(r"stopped \d+ job\(s\): .*not sent, dropped", words), words
    assert "comfynb-failures" not in view._body.value and "error" not in words and "failed" not in words
    assert f"12/12 · {counts['ok']} ok · {counts['cancelled']} cancelled" in view.line()


def test_closing_the_session_counts_closed_not_failed(make_session):
    session = make_session(node_time=0.1)
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": range(6)}, concurrency=2)
    view = comfynb.progress(sweep, mode="text")
    until(lambda: any(job.status == "running" for job in sweep.jobs))
    session.close()
    line = until(lambda: view.tally.refresh().open == 0 and view.line())
    assert "closed" in line and "error" not in line and "failed" not in line, line


def test_failover_is_told_as_moved_and_its_warnings_stay_in_the_view(make_session, capsys):
    """A server cut off: the view names it down, its jobs move (`moved` in the end line), and the
    pool's warnings about them become lines of this view, not stray stderr; logging still gets them."""
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            caught.append(record)

    keep = Keep(logging.WARNING)
    logging.getLogger("comfynb").addHandler(keep)
    try:
        session = make_session(n=2, down_after=0.2, failover_after=0.3, node_times={"KSampler": 0.2})
        sweep = session.sweep(txt2img(seed=1), grid={"KSampler.seed": range(8)}, concurrency=4, tag="moves")
        view = comfynb.progress(sweep, mode="text")
        dead = session.simulators[1]
        until(lambda: any(job.server == dead.url and job.status == "running" for job in sweep.jobs))
        dead.partition(downtime=3.0)
        until(lambda: dead.url in session.down_servers())
        assert f"1 server(s) down: {dead.url}" in view.line()
        sweep.result(WAIT)
        until(lambda: view.closed)
    finally:
        logging.getLogger("comfynb").removeHandler(keep)
    snap = view.tally.refresh()
    assert snap.moved >= 1 and "8 ok" in view.line() and f"{snap.moved} moved" in view.line()
    assert any("again" in text for _, text in view.tally.notices)  # "submitting prompt ... again"
    err = capsys.readouterr().err
    assert "comfynb ⚠" in err and "again" in err  # told as a line of the text view...
    assert not any(line.startswith(("WARNING", "comfynb.pool")) for line in err.splitlines())  # ...not as a log line
    assert any("again" in r.getMessage() for r in caught)  # and logging got the record too


def test_prompts_a_restarted_server_forgot_are_told_as_resent(make_session):
    session = make_session(node_time=0.05)
    jobs = [session.submit(txt2img(seed=s)) for s in range(6)]
    view = comfynb.progress(jobs, mode="text")
    until(lambda: any(job.status == "running" for job in jobs))
    session.simulator.restart()
    for job in jobs:
        job.result(WAIT)
    resent = sum(job.attempts - 1 for job in jobs)
    assert resent >= 1
    line = until(lambda: view.closed and view.line())
    assert "6/6 · 6 ok · " in line and f"{resent} resent" in line and "moved" not in line, line
    assert any("again" in text for _, text in view.tally.notices)


def test_resumed_rows_are_not_throughput_and_a_finished_sweep_has_no_negative_time(tmp_path):
    journal = tmp_path / "sweeps.sqlite"
    with Simulator(node_time=0.01).running() as sim:
        with Session(sim.url, journal=journal, progress=False, **FAST) as first:
            sweep = first.sweep(txt2img(), grid={"KSampler.seed": range(10)}, concurrency=4)
            sweep.result(WAIT)
            sweep_id = sweep.sweep_id
        again = comfynb.progress(sweep, mode="text")  # a finished sweep shown again
        line = again.line()
        assert "10/10 · 10 ok · " in line and "-" not in line.split("10 ok")[1], line
        assert "/s" not in line
        with Session(sim.url, journal=journal, progress=False, **FAST) as second:
            resumed = second.resume(sweep_id)
            view = comfynb.progress(resumed, mode="text")
            resumed.result(WAIT)
            snap = view.tally.refresh()
            assert snap.ended == 10 and view.tally.fresh == 0 and snap.rate is None  # read back, not done now
            assert "/s" not in view.line() and "ETA" not in view.line()


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
    session = make_session(progress="auto", node_time=0.05)
    first = session.submit(txt2img(seed=1))
    assert len(shown) == 1 and isinstance(shown[0], WidgetView)
    view = shown[0]
    until(lambda: "comfynb-row" in view._body.value)
    assert "comfynb-head" not in view._body.value  # one job: the detailed view
    more = [session.submit(txt2img(seed=s)) for s in range(2, 5)]
    assert len(shown) == 1 and view.tally.total == 4
    [job.result(WAIT) for job in [first, *more]]
    until(lambda: "4/4" in view._body.value)
    assert "comfynb-head" in view._body.value  # now the aggregate view
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
    assert lines[-1].startswith(f"comfynb {job.prompt_id[:8]} · success · nodes 7/7 · waited ")
    # stderr is no terminal here: a line at the start, one every PIPE_INTERVAL, one at the end
    assert len(lines) <= 2 + took / P.PIPE_INTERVAL


def test_text_line_aggregates_and_is_throttled(make_session, capsys, monkeypatch):
    monkeypatch.setattr(P, "PIPE_INTERVAL", 0.2)
    session = make_session(progress="text", step_time=0.01)
    sweep = session.sweep(txt2img(steps=3), grid={"KSampler.seed": range(30)}, concurrency=4, tag="lines")
    started = time.monotonic()
    sweep.result(WAIT)
    took = time.monotonic() - started
    until(lambda: P._text_view.closed)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("comfynb sweep lines |████████████████████| 30/30 · 30 ok · ")
    assert all(line.startswith("comfynb sweep lines |") for line in lines)
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


# -- in a real kernel: interrupts, and the summary that replaces the widget -------------------------

jupyter_client = pytest.importorskip("jupyter_client")


@pytest.fixture(scope="module")
def kernel():
    """A kernel of this environment, as the notebooks get."""
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

    manager = jupyter_client.KernelManager(
        kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager()
    )
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def run_cell(kernel, code: str, interrupt_after: float | None = None, timeout: float = 60) -> tuple[list, float]:
    """Execute a cell (interrupting it after ``interrupt_after`` s); its iopub messages, and how
    long after the interrupt it ended."""
    manager, client = kernel
    msg_id = client.execute(code)
    messages, started, interrupted = [], time.monotonic(), None
    while time.monotonic() - started < timeout:
        if interrupt_after is not None and interrupted is None and time.monotonic() - started > interrupt_after:
            manager.interrupt_kernel()
            interrupted = time.monotonic()
        try:
            msg = client.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        messages.append(msg)
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages, (time.monotonic() - interrupted if interrupted else 0.0)
    raise AssertionError(f"cell did not end within {timeout} s: {code}")


def errors(messages: list) -> list[dict]:
    return [m["content"] for m in messages if m["msg_type"] == "error"]


def test_waits_stop_at_an_interrupt_with_one_line_and_the_widget_leaves_a_summary(kernel):
    run_cell(
        kernel,
        "import comfynb as cn\n"
        "from comfynb.sim.library import load_workflow\n"
        "session = cn.Session.simulated(node_time=0.15)\n"
        "wf = cn.Workflow.load(load_workflow('default_txt2img'))\n"
        "sweep = session.sweep(wf, seeds=24, concurrency=2, tag='cfg-by-seed')",
    )
    for code in ("await sweep", "sweep.result()"):
        messages, after = run_cell(kernel, code, interrupt_after=1.0)
        [error] = errors(messages)
        assert len(error["traceback"]) == 1, error["traceback"]  # one line, no internals
        assert re.fullmatch(
            r"sweep cfg-by-seed still running \(\d+/24\): sweep\.cancel\(\) stops it", error["traceback"][0]
        )
        assert after < 5.0  # the cell stopped at the interrupt, long before the sweep ends
    messages, after = run_cell(kernel, "async for done in sweep.as_completed():\n    pass", interrupt_after=1.0)
    assert errors(messages) and after < 5.0  # `async for` over jobs stops at the interrupt too
    messages, _ = run_cell(kernel, "job = session.submit(wf)\njob.result()", interrupt_after=0.3)
    [error] = errors(messages)
    assert re.fullmatch(r"job \w{8} still (pending|queued|running): job\.cancel\(\) stops it", error["traceback"][0])
    messages, _ = run_cell(kernel, "print(sweep.done(), sweep.cancel() > 0, job.cancel())\nawait sweep")
    assert "False True True" in "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    # The sweep's widget (shown in the first cell) was replaced by its static summary.
    deadline = time.monotonic() + 10
    updates: list = []
    while time.monotonic() < deadline and not any(u["text/plain"].startswith("sweep cfg-by-seed |") for u in updates):
        more, _ = run_cell(kernel, "import time; time.sleep(0.3)")
        messages += more
        updates = [m["content"]["data"] for m in messages if m["msg_type"] == "update_display_data"]
    summary = next(u for u in updates if u["text/plain"].startswith("sweep cfg-by-seed |"))
    assert "application/vnd.jupyter.widget-view+json" not in summary
    assert "comfynb-view" in summary["text/html"] and "cancelled" in summary["text/html"]
    assert re.search(r"24/24 · \d+ ok · \d+ cancelled", summary["text/plain"]), summary["text/plain"]
    run_cell(kernel, "session.close()")
