"""Rich display: HTML views of jobs, results, sweeps and errors, registered with a real IPython
DisplayFormatter, with the objects' own repr as the text/plain fallback."""

from __future__ import annotations

import dataclasses

import pytest
from IPython.core.formatters import DisplayFormatter
from notebook_helpers import WAIT, make_session, txt2img  # noqa: F401 (fixture)

from comfynb import ExecutionError, NodeError, ServerUnavailable, ValidationError
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
    assert "<table>" in html and "<th" in html
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
    sweep = session.sweep(txt2img(), grid={"KSampler.cfg": [7.0, -1.0], "KSampler.seed": [1, 2]}, tag="look")
    sweep.result(WAIT)
    html, text = shown(formatter, sweep)
    assert text == repr(sweep)
    assert "Sweep <b>look</b>" in html and "4/4 ended" in html
    assert "2 success" in html and "2 error" in html
    assert html.count('title="2 ') == 2  # two coloured segments of the bar
    assert "KSampler.cfg=-1.0" in html and "ValidationError" in html


def test_a_job_in_flight_is_shown_as_it_is_now(make_session, formatter):
    session = make_session(node_time=0.5)
    job = session.submit(txt2img(seed=13))
    html, _ = shown(formatter, job)
    assert any(f"● {status}" in html for status in ("pending", "queued", "running"))
    assert "<img" not in html
    job.cancel()


def test_register_outside_ipython_does_nothing():
    assert register() is False  # pytest runs no IPython shell
