"""Shared helpers for the client-core tests: every test talks to the embedded simulator over
real sockets, with short reconcile and heartbeat settings so recovery takes a fraction of a second."""

from __future__ import annotations

import pytest

from comfynb import Session, Timeouts, Workflow
from comfynb.sim.images import read_params
from comfynb.sim.library import load_workflow

FAST = {
    "reconcile_after": 0.3,
    "backoff": 0.05,
    "progress": False,
    "timeout": Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
}
WAIT = 30.0  # upper bound for any job in these tests; they normally end in milliseconds


def txt2img(seed: int, *, steps: int = 2, size: int = 64, text: str | None = None) -> Workflow:
    """The simulator's SD-shaped default graph, small and fast, made unique by its seed."""
    wf = Workflow.load(load_workflow("default_txt2img"))
    wf["KSampler.seed"] = seed
    wf["KSampler.steps"] = steps
    wf["EmptyLatentImage.width"] = size
    wf["EmptyLatentImage.height"] = size
    if text is not None:
        wf["6.text"] = text
    return wf


def params_of(result) -> dict:
    """The generation parameters the simulator wrote into the first image's PNG."""
    return read_params(result.images[0].data)


@pytest.fixture
def make_session():
    """Session.simulated with test settings; every session made is closed at the end."""
    sessions: list[Session] = []

    def make(**options) -> Session:
        session = Session.simulated(**{**FAST, **options})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
