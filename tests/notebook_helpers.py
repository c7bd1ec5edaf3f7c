"""Shared by the notebook-layer tests: simulated sessions, and a widget comm that records what
ipywidgets sends (``comm.create_comm`` is the seam ipywidgets itself uses to get its comms)."""

from __future__ import annotations

import time

import comm
import pytest
from comm.base_comm import BaseComm

from comfynb import Session, Timeouts, Workflow
from comfynb.sim.library import load_workflow

FAST = {
    "reconcile_after": 0.3,
    "backoff": 0.05,
    "timeout": Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
}
WAIT = 30.0


def txt2img(seed: int = 1, *, steps: int = 2, size: int = 64) -> Workflow:
    wf = Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.seed"] = seed
    wf["KSampler.steps"] = steps
    wf["EmptyLatentImage.width"] = size
    wf["EmptyLatentImage.height"] = size
    return wf


def until(predicate, timeout: float = WAIT, step: float = 0.02):
    """Poll until ``predicate()`` is truthy; its value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


class CommLog:
    """Every message the widgets sent: (msg_type, comm_id, data)."""

    def __init__(self):
        self.sent: list[tuple[str, str, dict]] = []

    def count(self, msg_type: str) -> int:
        return sum(1 for kind, _, _ in self.sent if kind == msg_type)

    def updates(self) -> list[tuple[str, dict]]:
        return [
            (cid, data["state"])
            for kind, cid, data in self.sent
            if kind == "comm_msg" and data.get("method") == "update"
        ]


@pytest.fixture
def comms(monkeypatch) -> CommLog:
    log = CommLog()

    class CountingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            data = dict(data or {})
            if "state" in data:  # put binary values (images) back where ipywidgets took them out
                data["state"] = dict(data["state"])
                for path, buffer in zip(data.get("buffer_paths") or (), buffers or ()):
                    data["state"][path[0]] = bytes(buffer)
            log.sent.append((msg_type, self.comm_id, data))

    monkeypatch.setattr(comm, "create_comm", CountingComm)
    return log


@pytest.fixture
def make_session():
    """Session.simulated with fast test settings and progress off unless asked; all closed at the end."""
    sessions: list[Session] = []

    def make(**options) -> Session:
        session = Session.simulated(**{**FAST, "progress": False, **options})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
