"""The private loop bridge: plain code, inside a running loop, nest_asyncio, fork, misuse."""

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

from comfynb import _loop
from comfynb.errors import Timeout


async def _thread_and_value(value):
    await asyncio.sleep(0)
    return threading.get_ident(), value


def test_run_sync_from_plain_code():
    ident, value = _loop.run_sync(_thread_and_value(7))
    assert value == 7 and ident != threading.get_ident()
    assert not _loop.in_loop_thread()
    assert _loop.get_loop() is _loop.get_loop()


def test_run_sync_raises_the_coroutines_exception():
    async def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        _loop.run_sync(boom())


def test_submit_from_many_threads():
    results = []

    def worker(i):
        results.append(_loop.submit(_thread_and_value(i)).result(5)[1])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(20))


def test_timeout_maps_to_timeout_and_cancels():
    cancelled = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(Timeout) as info:
        _loop.run_sync(slow(), timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert cancelled.wait(2)


def test_a_timeout_raised_by_the_coroutine_is_its_own():
    async def own():
        raise TimeoutError("inner")

    with pytest.raises(TimeoutError, match="inner") as info:
        _loop.run_sync(own(), timeout=5)
    assert not isinstance(info.value, Timeout)


def test_run_sync_on_the_loop_thread_says_use_await():
    async def misuse():
        assert _loop.in_loop_thread()
        inner = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="await"):
            _loop.run_sync(inner)
        return inner.cr_frame is None  # closed, so no "never awaited" warning

    assert _loop.run_sync(misuse()) is True


async def test_inside_a_running_loop():
    """Jupyter-like: this test runs on pytest-asyncio's loop, a different one from ours."""
    assert asyncio.get_running_loop() is not _loop.get_loop()
    assert _loop.run_sync(_thread_and_value(1))[1] == 1  # blocks this loop briefly, no deadlock
    ident, value = await _loop.wrap(_loop.submit(_thread_and_value(2)))
    assert value == 2 and ident != threading.get_ident()
    # many awaits at once
    got = await asyncio.gather(*(_loop.wrap(_loop.submit(_thread_and_value(i))) for i in range(50)))
    assert [v for _, v in got] == list(range(50))


def test_wrap_on_the_private_loop_itself():
    async def outer():
        return await _loop.wrap(_loop.submit(_thread_and_value(3)))

    assert _loop.run_sync(outer())[1] == 3


def test_cancelling_an_await_cancels_the_work():
    started, cancelled = threading.Event(), threading.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main():
        task = asyncio.ensure_future(_loop.wrap(_loop.submit(slow()), cancel=True))  # the caller's own call
        await asyncio.to_thread(started.wait, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.to_thread(cancelled.wait, 2)

    assert asyncio.run(main())


def _run_script(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


COMMON = """
import asyncio, os, signal, sys, threading, time
from comfynb import _loop

# Ctrl-C raises KeyboardInterrupt even where the parent ignores SIGINT (a job started in the
# background by a non-interactive shell passes SIG_IGN on, and Python then keeps it)
signal.signal(signal.SIGINT, signal.default_int_handler)

async def value(v):
    await asyncio.sleep(0.01)
    return v
"""


def test_with_nest_asyncio_applied_before_first_use():
    out = _run_script(
        COMMON
        + """
import nest_asyncio
nest_asyncio.apply()
from comfynb.sim import Simulator
from comfynb.transport import Transport

async def main(t):
    assert _loop.run_sync(value(1)) == 1
    assert await _loop.wrap(_loop.submit(value(2))) == 2
    # a nested run inside the running loop, as notebooks with nest_asyncio do
    assert asyncio.get_event_loop().run_until_complete(_loop.wrap(_loop.submit(value(3)))) == 3
    assert asyncio.run(_loop.wrap(_loop.submit(value(4)))) == 4
    # real sockets on the private loop while asyncio is patched
    assert _loop.run_sync(t.get_queue()) == ([], [])
    assert await _loop.wrap(_loop.submit(t.get_queue())) == ([], [])
    return 5

with Simulator().running() as sim:
    t = Transport(sim.url)
    assert asyncio.run(main(t)) == 5
    assert _loop.run_sync(value(6)) == 6
    _loop.run_sync(t.close())
print("OK")
"""
    )
    assert "OK" in out


def test_with_nest_asyncio_applied_after_the_loop_started():
    out = _run_script(
        COMMON
        + """
assert _loop.run_sync(value(1)) == 1
import nest_asyncio
nest_asyncio.apply()
async def main():
    assert await _loop.wrap(_loop.submit(value(2))) == 2
    assert _loop.run_sync(value(3)) == 3
asyncio.run(main())
assert _loop.run_sync(value(4), timeout=5) == 4
print("OK")
"""
    )
    assert "OK" in out


def test_after_fork_the_child_gets_a_fresh_loop():
    out = _run_script(
        COMMON
        + """
parent_loop = _loop.get_loop()
assert _loop.run_sync(value(1)) == 1
pid = os.fork()
if pid == 0:
    try:
        assert _loop.get_loop() is not parent_loop
        assert _loop.run_sync(value(2), timeout=5) == 2
        os._exit(0)
    except BaseException:
        os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert _loop.run_sync(value(3)) == 3  # the parent is unaffected
print("OK")
"""
    )
    assert "OK" in out


def test_ctrl_c_while_blocked_cancels_the_coroutine():
    out = _run_script(
        COMMON
        + """
cancelled = threading.Event()
async def forever():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.set()
        raise
main = threading.main_thread().ident
threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
try:
    _loop.run_sync(forever())
except KeyboardInterrupt:
    pass
assert cancelled.wait(2)
print("OK")
"""
    )
    assert "OK" in out
