"""Fixtures shared by the tests that run several servers (pool, cloud): simulators started on
demand, and sessions with fast failure detection, all stopped at the end of the test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfynb import Session, Timeouts
from comfynb.sim import Simulator

FAST_FAILOVER = {
    "reconcile_after": 0.3,
    "backoff": 0.05,
    "progress": False,
    "down_after": 0.2,
    "failover_after": 0.3,
    "timeout": Timeouts(connect=2.0, read=5.0, total=10.0, ws_heartbeat=0.5),
}


@pytest.fixture
def start():
    """start(**options) -> a running Simulator, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(Simulator(**options).running())


@pytest.fixture
def connect():
    """connect(urls, **options) -> a Session with fast failure detection, closed at the end."""
    sessions = []

    def make(urls, **options):
        session = Session(urls, **{**FAST_FAILOVER, **options})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def killed_mid_sweep(script: str, *args) -> str:
    """Run ``script`` (a journalled sweep, with ``args``) in a child process and kill it once it
    prints the sweep's id and ``ready``: a kernel that died mid-sweep. The sweep's id."""
    repo = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
        cwd=repo,
    )
    try:
        sweep_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.kill()
        child.wait(30)
    return sweep_id
