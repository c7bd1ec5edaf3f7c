"""The `Simulator`: lifecycle of one embedded ComfyUI server (start, stop, restart, threads).

It runs inside the caller's event loop (``async with``) or in its own loop on a daemon thread
(``with sim.running()``). The listening socket is managed directly so a simulated restart can
refuse connections for a while and then come back on the same port, with queue, history and
cache forgotten but files kept, like a real server process restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from .cloud import CloudEngines, CloudHub, CloudSettings, Storage, build_cloud_app, partner_node
from .engine import Engine, Settings
from .faults import Faults
from .files import Files
from .hub import Hub
from .ledger import Ledger, Outage
from .media import all_nodes
from .nodes import NodeClass
from .served import served_nodes
from .server import build_app

_TICK = 0.05  # granularity of the close_every fault


class Simulator:
    """A protocol-faithful ComfyUI 0.8.0 server on 127.0.0.1, without models or a GPU.

    ``object_info`` (a real server's ``GET /object_info``) makes it serve and validate against
    those node classes instead of its own (see :mod:`comfynb.sim.served`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        root: str | Path | None = None,
        node_time: float = 0.0,
        step_time: float = 0.0,
        node_times: dict[str, float] | None = None,
        max_history: int = 10000,
        checkpoints: list[str] | None = None,
        preview_method: str | None = None,
        jobs_api: bool = True,
        faults: Faults | dict | None = None,
        seed: int = 0,
        cloud: bool = False,
        api_key: str | None = None,
        max_parallel: int = 3,
        max_queue: int = 0,
        retry_after: float | None = None,
        partner_nodes: bool = False,
        object_info: Mapping[str, Any] | None = None,
    ):
        """``cloud=True`` serves Comfy Cloud's API instead (see :mod:`comfynb.sim.cloud`): ``api_key``
        required, ``max_parallel`` prompts at once, 429 (with ``Retry-After: retry_after`` if set)
        beyond ``max_queue`` more. ``partner_nodes`` adds the partner node class to a local server."""
        self.host = host
        self.port = port
        self.url: str | None = None
        self.settings = Settings(node_time, step_time, dict(node_times or {}), preview_method, max_history)
        self.jobs_api = jobs_api
        self.faults = faults if isinstance(faults, Faults) else Faults(seed, **(faults or {}))
        self.ledger = Ledger()  # what really ran, across restarts (ledger.py)
        self.requests: Counter[str] = Counter()  # "GET /history/{prompt_id}" -> HTTP requests received
        self.killed = False
        self._root_arg = root
        self._checkpoint_names = checkpoints
        self._object_info = object_info  # serve and validate against this /object_info (see served.py)
        self.root: Path | None = None
        self.files: Files | None = None
        self.nodes: dict[str, NodeClass] = {}
        self.hub: Hub | None = None
        self.engine: Engine | CloudEngines | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.alive = False  # running (False before start, and from a restart or kill until it is back)
        self._tasks: set[asyncio.Task] = set()
        self._retired: list[Engine | CloudEngines] = []
        self._coming_up: asyncio.Task | None = None
        self._remove_root: weakref.finalize | None = None
        self.cloud = CloudSettings(api_key or "sim-cloud-key", max_parallel, max_queue, retry_after) if cloud else None
        self.partner_nodes = partner_nodes or cloud
        self.storage = Storage(self) if cloud else None

    @property
    def checkpoints(self) -> list[str]:
        return list(self.nodes["CheckpointLoaderSimple"].info["input"]["required"]["ckpt_name"][0])

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Simulator:
        self._loop = asyncio.get_running_loop()
        self.root = Path(tempfile.mkdtemp(prefix="comfynb-sim-")) if self._root_arg is None else Path(self._root_arg)
        if self._root_arg is None:  # removed by stop(), or at exit if stop() never came
            self._remove_root = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self.files = Files(self.root)
        self.nodes = all_nodes(self._checkpoint_names, self.files.dirs["input"])
        if self._object_info is not None:
            self.nodes = served_nodes(self._object_info, self.nodes, self.files.dirs["input"])
        if self.partner_nodes:
            self.nodes["PartnerTextSim"] = partner_node()
        self._fresh_state()
        app = build_cloud_app(self) if self.cloud else build_app(self)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        try:
            if self.storage is not None:
                await self.storage.start(self.host)
            await self._runner.setup()
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._close_every())
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        if self.hub is not None:
            self.hub.drop_all()
        for engine in [*self._retired, self.engine]:
            if engine is not None:
                await engine.stop()
        self._retired.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.storage is not None:
            await self.storage.stop()
        if self._remove_root is not None:
            self._remove_root()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Simulator]:
        """Run in a private event loop on a daemon thread, for synchronous callers."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_serve, args=(loop,), name="comfynb-sim", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()

    # -- run-time controls (any thread) --------------------------------------------------------

    def restart(self, downtime: float = 0.0) -> None:
        """Simulate a server restart: sockets and HTTP connections dropped, queue, history, cache
        and interrupt forgotten, files kept; the port refuses connections for ``downtime`` s.

        From another thread this returns once the server is back. On the simulator's own loop
        it returns after the "down" half; the server comes back on its own after ``downtime``.
        """
        self._wait_back(self._on_loop(lambda: self._go_down(downtime)))

    def partition(self, downtime: float) -> None:
        """Cut the network for ``downtime`` s: connections refused and dropped, but unlike
        :meth:`restart` the server keeps running its queue and keeps its history.

        Returns like :meth:`restart`: from another thread, once the server is reachable again.
        """
        self._wait_back(self._on_loop(lambda: self._go_down(downtime, forget=False)))

    def _wait_back(self, up: Any) -> None:
        """From another thread, wait until the server is reachable again; stopping the simulator
        meanwhile ends the wait too (nothing will come back)."""
        if self._on_loop_thread():
            return

        async def back_up() -> None:
            await up

        assert self._loop is not None  # _on_loop raised if it were not running
        with contextlib.suppress(concurrent.futures.CancelledError):
            asyncio.run_coroutine_threadsafe(back_up(), self._loop).result()

    def kill(self) -> None:
        """The server process dies for good: like :meth:`restart`, but it never comes back
        (connections refused until :meth:`stop`). Its files stay, and so does :attr:`ledger`."""
        self._on_loop(self._kill)

    def drop_sockets(self) -> None:
        """Close every WebSocket (no close frame, as a network drop would)."""

        def drop() -> None:
            assert self.hub is not None  # started: _on_loop raises otherwise
            self.faults.counts["drop_sockets"] += self.hub.drop_all()

        self._on_loop(drop)

    def stall(self, client_id: str | None = None) -> None:
        """Make one socket (``client_id``'s, or the first registered) go silent but stay open."""

        def stall() -> None:
            assert self.hub is not None  # started: _on_loop raises otherwise
            self.hub.stall(client_id)

        self._on_loop(stall)

    # -- internals -----------------------------------------------------------------------------

    def _fresh_state(self) -> None:
        assert self.files is not None  # start() made them
        engine: Engine | CloudEngines
        if self.cloud is not None:
            self.hub = CloudHub(self.faults, self.ledger)
            engine = CloudEngines(self.cloud, self.nodes, self.hub, self.files, self.settings, self.ledger)
        else:
            self.hub = Hub(self.faults, self.ledger)
            engine = Engine(self.nodes, self.hub, self.files, self.settings, self.ledger)
        self.engine = engine
        engine.start()

    async def _listen(self) -> None:
        assert self._loop is not None and self._runner is not None and self._runner.server is not None  # start() set up
        self._listener = await self._loop.create_server(self._runner.server, self.host, self.port, reuse_address=True)
        self.alive = True
        self.port = self._listener.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"

    def _go_down(self, downtime: float, forget: bool = True) -> asyncio.Task:
        if self.killed:
            raise RuntimeError("the simulator was killed; it cannot come back")
        kind = "restart" if forget else "partition"
        self.faults.counts[kind] += 1
        outage = self._cut(kind)
        assert self.engine is not None  # running
        if forget:
            self._retired.append(self.engine)
            self.engine.abandon()
            self._fresh_state()
        if self._coming_up is not None:
            self._coming_up.cancel()  # restarted again while down: the later one wins
        self._coming_up = self._spawn(self._come_up(downtime, outage))
        return self._coming_up

    def _kill(self) -> None:
        if self.killed:
            return
        self.faults.counts["kill"] += 1
        self._cut("kill")
        self.killed = True
        assert self.engine is not None  # running
        self.engine.abandon()
        if self._coming_up is not None:
            self._coming_up.cancel()

    def _cut(self, kind: str) -> Outage:
        """Refuse and drop every connection; record the outage (and, unless the server keeps
        running, the prompts it drops: the running one first, then the queue in order)."""
        engine = self.engine
        assert engine is not None and self.hub is not None  # running
        assert self._runner is not None and self._runner.server is not None
        abandoned = []
        if kind != "partition":
            running = [engine.running[1]] if engine.running is not None else []
            abandoned = running + [entry[1] for entry in sorted(engine.pending)]
        outage = self.ledger.down(kind, abandoned)
        if kind != "partition":  # a process going down drops the requests inside it; a cut-off one goes on
            self.alive = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.hub.drop_all()
        for connection in self._runner.server.connections:
            connection.force_close()
        return outage

    async def _come_up(self, downtime: float, outage: Outage) -> None:
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self._listen()
        outage.end = time.monotonic()

    async def _close_every(self) -> None:
        """The close_every fault: drop all sockets every N seconds while the knob is set."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            every, now = self.faults.close_every, loop.time()
            if not every:
                last = now
                await asyncio.sleep(_TICK)
            elif now - last < every:
                await asyncio.sleep(min(_TICK, every - (now - last)))
            else:
                last = now
                assert self.hub is not None  # start() made it before spawning this task
                self.faults.counts["close_every"] += self.hub.drop_all()

    def _spawn(self, coro: Any) -> asyncio.Task:
        assert self._loop is not None  # start() set it
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the simulator's loop: directly there, else handed over and waited for."""
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        if self._on_loop_thread():
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return future.result()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
