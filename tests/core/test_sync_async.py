"""The same scenario from a plain function, inside a running event loop, and with nest_asyncio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from comfynb import Session

from . import scenario
from .conftest import FAST


def test_plain_function(make_session):
    scenario.blocking(make_session())


async def test_inside_a_running_loop():
    async with Session.simulated(**FAST) as session:
        await scenario.awaiting(session)
        scenario.blocking(session)  # blocking calls from a coroutine, as in a notebook cell


def test_with_nest_asyncio_applied():
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent.parent), str(here)])}
    done = subprocess.run(
        [sys.executable, str(here / "scenario.py")], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nest_asyncio scenario ok" in done.stdout
