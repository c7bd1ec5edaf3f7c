"""Property tests (Hypothesis): random JSON shapes as history entries, /object_info and WebSocket
messages, from the hostile server over real sockets. Whatever the shape, nothing but a ComfyError
escapes, nothing is logged as an internal error, and every job ends."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfynb import ComfyError, Session, _loop
from comfynb.capabilities import Capabilities, read_capabilities
from comfynb.errors import ProtocolError
from comfynb.frames import frame_from_rows, history_row
from comfynb.history import EntryError, check_entry
from tests.hostile import Hostile
from tests.test_hostile import FAST, WAIT, workflow

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("prompt", "outputs", "status", "meta")


@st.composite
def entries(draw):
    """A real entry with some fields (or the parts of one) replaced by random JSON, or any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        anything = draw(json_values)
        return lambda e: anything
    replaced = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2))
    deep = draw(
        st.dictionaries(
            st.sampled_from(["status_str", "completed", "messages", "timestamp", "images", "filename", "extra"]),
            json_values,
            max_size=2,
        )
    )

    def apply(e: dict) -> dict:
        e = {**e, **replaced}
        if isinstance(e.get("status"), dict):
            for key in ("status_str", "completed", "messages"):
                if key in deep:
                    e["status"][key] = deep[key]
            messages = e["status"].get("messages")
            last = messages[-1] if isinstance(messages, list) and messages else None
            if "timestamp" in deep and isinstance(last, list) and len(last) > 1 and isinstance(last[1], dict):
                last[1]["timestamp"] = deep["timestamp"]
        out = e.get("outputs")
        if isinstance(out, dict) and isinstance(out.get("9"), dict):
            if "images" in deep:
                out["9"]["images"] = deep["images"]
            elif "filename" in deep and out["9"].get("images"):
                out["9"]["images"][0]["filename"] = deep["filename"]
        if "extra" in deep and isinstance(e.get("prompt"), list) and len(e["prompt"]) > 3:
            e["prompt"][3] = deep["extra"]
        return e

    return apply


@pytest.fixture(scope="module")
def served():
    with Hostile().serving() as hostile:
        with Session(hostile.url, **{**FAST, "reconcile_after": 0.2}, resubmit_lost=False) as session:
            yield hostile, session


def _no_internal_errors(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("comfynb")]
    assert not bad, [r.getMessage() for r in bad]


@PROPERTY
@given(shape=entries())
def test_random_history_entries(served, caplog, shape):
    hostile, session = served
    hostile.entry = lambda pid, e: shape(e)
    caplog.clear()
    job = session.submit(workflow(1))
    try:
        job.result(timeout=WAIT)
    except ComfyError:
        pass
    assert job.done()
    frame = frame_from_rows([history_row(job.prompt_id, job.history, hostile.url)] if job.history is not None else [])
    assert len(frame) == (job.history is not None)
    _no_internal_errors(caplog)


@PROPERTY
@given(value=json_values)
def test_random_history_values_offline(value):
    try:
        check_entry(value, "http://x", "p")
    except EntryError:
        pass
    row = history_row("p", value, "http://x")
    assert len(frame_from_rows([row])) == 1


@PROPERTY
@given(info=st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values)
def test_random_object_info(served, info):
    hostile, _ = served
    try:
        Capabilities(info, url="http://x").missing(
            {"1": {"class_type": "KSampler", "inputs": {"ckpt": "a.safetensors"}}}
        )
    except ProtocolError:
        pass
    hostile.object_info = info
    from comfynb.transport import Transport

    async def read():
        transport = Transport(hostile.url)
        try:
            return await read_capabilities(transport)
        finally:
            await transport.close()

    caps = _loop.run_sync(read())
    assert caps.any or isinstance(caps.classes, frozenset)


KINDS = [
    "executing",
    "executed",
    "progress",
    "progress_state",
    "execution_cached",
    "execution_start",
    "execution_success",
    "execution_error",
    "execution_interrupted",
    "status",
    "feature_flags",
    "x",
]
ws_messages = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(KINDS) | json_values},
        optional={
            "data": st.dictionaries(
                st.sampled_from(["node", "value", "max", "nodes", "output", "prompt_id", "display_node", "status"]),
                json_values | st.just("__PID__"),
                max_size=4,
            ).map(lambda d: {"prompt_id": "__PID__", **d})
            | json_values
        },
    ).map(json.dumps)
    | st.text(max_size=20),
    max_size=6,
)


@PROPERTY
@given(messages=ws_messages)
def test_random_websocket_messages(served, caplog, messages):
    hostile, session = served
    hostile.entry = None
    hostile.ws_messages = lambda pid: [m.replace("__PID__", pid) for m in messages]
    caplog.clear()
    job = session.submit(workflow(2))
    try:
        job.result(timeout=WAIT)
    except ComfyError:
        pass
    assert job.done()
    _no_internal_errors(caplog)
