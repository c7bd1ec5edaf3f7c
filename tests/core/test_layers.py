"""The core's layers stand alone: a Server and a Pool are built and run without a Session.

Each gets its settings as a value and reports to a recording listener, against real simulators
over real sockets. That they work this way is the proof that nothing below the session reaches up.
"""

from __future__ import annotations

import asyncio
import uuid

from comfynb.pool import Pool
from comfynb.server import UP, Server
from comfynb.settings import Settings
from comfynb.sim import Simulator
from comfynb.sim.images import read_params
from comfynb.tracker import SUCCESS, PromptState
from comfynb.transport import Transport

from .conftest import txt2img

CLIENT = "layers-test-client"


def state_for(seed: int) -> PromptState:
    prompt_id = str(uuid.uuid4())
    body = {"prompt": txt2img(seed).to_api(), "client_id": CLIENT, "prompt_id": prompt_id, "extra_data": {}}
    state = PromptState(prompt_id, body, None)
    state.posting = True
    return state


async def until(predicate, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class ServerRecord:
    """A server.Listener that writes down what it is told and decides nothing."""

    def __init__(self):
        self.events: list = []
        self.posted: list = []
        self.endings: list = []
        self.forgot: list = []
        self.down: list = []

    def heard(self, server, item):
        self.events.append(item)

    def posting(self, server, state):
        self.posted.append(state.prompt_id)

    def ended(self, server, state, status, *, result=None, error=None):
        self.endings.append((state.prompt_id, status, result, error))

    def forgotten(self, server, state):
        self.forgot.append(state.prompt_id)

    def unreachable(self, server, error):
        self.down.append(error)


async def test_a_server_reports_to_its_listener_and_settles_nothing_itself():
    async with Simulator() as sim:
        record = ServerRecord()
        server = Server(Transport(sim.url), CLIENT, Settings(), record)
        try:
            await server.start()
            server.health = UP
            state = state_for(7)
            await server.submit(state)
            await until(lambda: record.endings)
            (prompt_id, status, result, error) = record.endings[0]
            assert (prompt_id, status, error) == (state.prompt_id, SUCCESS, None)
            ref = result.images[0]
            assert read_params(await server.transport.view(ref.filename, ref.subfolder, ref.type))["seed"] == 7
            assert record.posted == [state.prompt_id]
            assert any(getattr(e, "type", None) == "execution_start" for e in record.events)
            assert not state.done  # the server reported; only its listener may settle the job
        finally:
            await server.close()


async def test_a_server_marked_down_is_sent_no_post():
    async with Simulator() as sim:
        record = ServerRecord()
        server = Server(Transport(sim.url), CLIENT, Settings(), record)
        try:
            await server.start()
            server.health = "down"
            state = state_for(1)
            await server.submit(state)
            assert not state.sent and record.posted == [] and sim.engine.counter == 0
            assert len(record.down) == 1
        finally:
            await server.close()


class PoolRecord:
    def __init__(self):
        self.ended: list = []
        self.posts: list = []

    def heard(self, url, item):
        pass

    def posting(self, state, url):
        self.posts.append(url)

    def settled(self, state):
        self.ended.append(state)

    def may_resubmit(self, state):
        return True


async def test_a_pool_dispatches_and_settles_without_a_session():
    async with Simulator() as a, Simulator() as b:
        record = PoolRecord()
        pool = Pool([Transport(a.url), Transport(b.url)], CLIENT, Settings(), record)
        try:
            await pool.start()
            states = [state_for(seed) for seed in range(6)]
            for state in states:
                await pool.enqueue(state)
            await until(lambda: len(record.ended) == 6)
            assert all(s.status == SUCCESS for s in states)
            assert {s.server for s in states} == {a.url, b.url}  # two per server at a time: both used
            assert len(a.engine.history) + len(b.engine.history) == 6
        finally:
            await pool.close()
