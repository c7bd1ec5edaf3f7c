"""Rich display: HTML views of jobs, results, sweeps and errors, registered with a real IPython
DisplayFormatter, with the objects' own repr as the text/plain fallback."""

from __future__ import annotations

import dataclasses
import re

import pytest
from IPython.core.formatters import DisplayFormatter
from notebook_helpers import WAIT, make_session, txt2img, until  # noqa: F401 (fixture)

from comfynb import ComfyError, ExecutionError, NodeError, ServerUnavailable, ValidationError
from comfynb.display import register
from comfynb.sim.library import load_workflow


@pytest.fixture
def formatter() -> DisplayFormatter:
    fmt = DisplayFormatter()
    assert register(fmt)
    return fmt


def shown(formatter: DisplayFormatter, obj) -> tuple[str, str]:
    data, _ = formatter.format(obj)
    return data["text/html"], data["text/plain"]


def test_finished_job_shows_status_and_thumbnails(make_session, formatter):
    session = make_session()
    job = session.submit(txt2img(seed=11), tags={"params": {"KSampler.seed": 11}})
    result = job.result(WAIT)
    html, text = shown(formatter, job)
    assert text == repr(job)
    assert "● success" in html and job.prompt_id in html and "nodes 7/7" in html
    assert "KSampler.seed=11" in html
    assert html.count('<img src="data:image/jpeg;base64,') == 1
    assert result.images[0].filename in html


def test_result_shows_thumbnails_and_timings(make_session, formatter):
    session = make_session()
    result = session.submit(load_workflow("multi_output")).result(WAIT)
    html, text = shown(formatter, result)
    assert text == repr(result)
    assert html.count('<img src="data:image/jpeg;base64,') == len(result.images) >= 2
    assert "ran " in html and f"{len(result.images)} images" in html
    assert all("data" in ref._cache for ref in result.images)  # fetched once, kept for later use


def test_result_lists_what_it_cannot_fetch(make_session, formatter):
    session = make_session()
    result = session.submit(txt2img(seed=12)).result(WAIT)

    async def server_gone(*_):
        raise ServerUnavailable("connection refused", url=result.server)

    unreachable = dataclasses.replace(
        result, images=[dataclasses.replace(r, fetcher=server_gone) for r in result.images]
    )
    html, _ = shown(formatter, unreachable)
    assert "<img" not in html and result.images[0].filename in html and "ServerUnavailable" in html


def test_validation_error_is_a_table_of_node_inputs(make_session, formatter):
    session = make_session()
    bad = txt2img()
    bad["KSampler.steps"] = 0
    job = session.submit(bad)
    with pytest.raises(ValidationError) as caught:
        job.result(WAIT)
    html, text = shown(formatter, caught.value)
    assert text.endswith(repr(caught.value))  # IPython adds the module
    assert html.count("<table") == 1 and "<th" in html and "padding:3px 10px" in html  # padded, once
    assert "value_smaller_than_min" in html and "<td" in html and "KSampler" in html and "steps" in html
    assert shown(formatter, job)[0].count("value_smaller_than_min") == 1  # a failed job shows its error


def test_error_text_from_the_server_is_escaped(formatter):
    error = ValidationError(
        "rejected <b>",
        type="prompt_outputs_failed_validation",
        node_errors=[
            NodeError(
                "3",
                "Evil<script>",
                "value_not_in_list",
                "bad <img src=x onerror=alert(1)>",
                input_name="a&b",
                received="<i>",
            )
        ],
    )
    html, _ = shown(formatter, error)
    assert "<script>" not in html and "<img" not in html and "<i>" not in html
    assert "Evil&lt;script&gt;" in html and "a&amp;b" in html


def test_execution_error_shows_node_exception_and_folded_traceback(make_session, formatter):
    session = make_session()
    job = session.submit(load_workflow("runtime_error"))
    with pytest.raises(ExecutionError) as caught:
        job.result(WAIT)
    html, _ = shown(formatter, caught.value)
    assert "at node <b>2</b> (ImageToMask)" in html
    assert "<code>IndexError</code>: index 3 is out of bounds" in html
    assert "<details><summary>traceback</summary>" in html


def test_sweep_shows_counts_bar_and_failures(make_session, formatter):
    session = make_session()
    grid = {"KSampler.cfg": [7.0, -1.0], "KSampler.seed": [1, 2]}
    sweep = session.sweep(txt2img(), grid=grid, tag="look", check=False)  # the server refuses two rows
    sweep.result(WAIT)
    html, text = shown(formatter, sweep)
    assert text == repr(sweep)
    assert "Sweep <b>look</b>" in html and "4/4 ended" in html
    assert "2 ok · 2 error" in html  # counted by outcome, as the live view counts
    assert html.count('title="2 ') == 2  # two coloured segments of the bar
    assert "KSampler.cfg=-1.0" in html and "ValidationError" in html
    # ...and its results frame, compact: short ids, thumbnails in place of URLs
    frame = html[html.index("comfynb-frame") :]
    assert frame.count('<img src="data:image/jpeg;base64,') == 2
    assert all(f">{pid[:8]}</code>" in frame for pid in sweep.frame().prompt_id)


def test_failures_table_has_short_ids_a_cap_and_fills_rows_never_sent(make_session, formatter, monkeypatch):
    """Rows that failed before they were sent carry no tags (and, never sent, no prompt id): their
    row and parameters come from the sweep's plan. Ids are short (the full id is the tooltip) and
    not repeated in the message; beyond the cap, "+N more"."""
    from comfynb.sweep import Sweep

    real = Sweep._prompt

    def failing(self, params):  # what a sweep does when building or sending a row fails: from row 1 on
        if params["KSampler.seed"] >= 1:
            raise ComfyError("sending the rows failed")
        return real(self, params)

    monkeypatch.setattr(Sweep, "_prompt", failing)
    session = make_session(node_time=0.3)
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": range(14)}, concurrency=1, tag="unsent")
    with pytest.raises(ComfyError, match="sending the rows failed"):
        sweep.result(WAIT)
    until(lambda: sweep.counts().get("error") == 13)  # row 1's job ends on comfynb's loop, just after
    html, _ = shown(formatter, sweep)
    table = html[html.index("comfynb-failures") : html.index("comfynb-frame")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    failed = sweep.counts()["error"]
    assert failed >= 12 and len(rows) == 10 and f"+{failed - 10} more" in table  # 10 listed
    ids = {i: job.prompt_id for i, job in enumerate(sweep.jobs)}
    for row in rows:
        index = int(re.search(r"<td[^>]*>(\d+)</td>", row).group(1))
        assert f"KSampler.seed={index}" in row  # parameters filled for a row never sent
        if index in ids and sweep.jobs[index].status == "error":  # it has a job: a short id, once
            pid = ids[index]
            assert f">{pid[:8]}</code>" in row and row.count(pid) == 1  # the full id only as the tooltip
        else:
            assert "not sent" in row


def test_results_frame_accessor_is_compact_with_thumbnails(make_session):
    session = make_session()
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": [1, 2, 3]}, tag="frame")
    df = sweep.result(WAIT)
    view = df.comfynb.show()  # the session is found from the images' server
    html = view._repr_html_()
    assert html.count('<img src="data:image/jpeg;base64,') == 3 and "/view?" not in html.replace('title="', "")
    for pid in df.prompt_id:
        assert f'<code title="{pid}">{pid[:8]}</code>' in html
    assert "white-space:nowrap" in html and "KSampler.seed" in html and "waited" in html
    assert repr(view) == repr(df)
    # Without a session for the images (another server), the files are links.
    other = df.assign(images=[["http://127.0.0.1:9/view?filename=a.png&subfolder=&type=output"]] * 3)
    linked = other.comfynb.show()._repr_html_()
    assert "<img" not in linked and linked.count(">a.png</a>") == 3


def test_a_job_in_flight_is_shown_as_it_is_now(make_session, formatter):
    session = make_session(node_time=0.5)
    job = session.submit(txt2img(seed=13))
    html, _ = shown(formatter, job)
    assert any(f"● {status}" in html for status in ("pending", "queued", "running"))
    assert "<img" not in html
    job.cancel()


def test_register_outside_ipython_does_nothing():
    assert register() is False  # pytest runs no IPython shell


def test_contact_sheet_reads_in_dark_themes_with_legible_labels(make_session):
    """A dark neutral ground (no white block in a dark notebook) and labels at least 14 px tall."""
    session = make_session()
    sweep = session.sweep(txt2img(), grid={"KSampler.seed": [1, 2], "KSampler.cfg": [4.0, 7.0]})
    sweep.result(WAIT)
    sheet = sweep.contact_sheet("KSampler.seed", "KSampler.cfg", size=64).convert("L")
    assert sheet.getpixel((1, 1)) < 80  # dark ground
    # the title band: rows holding light (label) pixels span at least 10 px of height
    band = [y for y in range(22) if any(sheet.getpixel((x, y)) > 180 for x in range(sheet.width))]
    assert band and band[-1] - band[0] >= 10, band
