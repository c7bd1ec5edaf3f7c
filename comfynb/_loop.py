"""The private asyncio loop that runs all client I/O, in one daemon thread per process.

Keeping our sockets on a loop we own (the fsspec / dask pattern) means the same client works
from a plain script, from inside someone else's running loop (Jupyter), and with
``nest_asyncio`` applied: callers only ever block on, or await, a ``concurrent.futures.Future``.

Waiting must stay interruptible. A Jupyter interrupt is a SIGINT, whose Python handler only runs
once the kernel's main thread wakes up; ipykernel 7's loop sleeps until a socket has data, and a
future resolved on our thread wakes it only at the very end. So while anything awaits one of our
futures, one timer per loop (:func:`awake`) wakes that loop every ``WAKE`` seconds: one, however
many jobs ``asyncio.gather`` awaits. An interrupted wait (a cancelled ``await``, or Ctrl-C in
a blocking one) says in one line what is still running and how to stop it, instead of a traceback
through ``concurrent.futures``; the work itself goes on until it is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from .errors import Timeout

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_inherited: list[asyncio.AbstractEventLoop] = []
WAKE = 0.2  # seconds between two wake-ups of a caller's loop awaiting one of our futures
_SLICE = 0.25  # the longest a blocked caller goes without looking for a Ctrl-C (see _block)
_awake: dict[asyncio.AbstractEventLoop, list] = {}  # loop -> [waiters, its timer task]


def _forget_after_fork() -> None:
    """A forked child has the parent's loop object but not its thread: start afresh.

    The old loop is kept referenced and never closed: its epoll set is shared with the parent,
    so closing it would unregister the parent's file descriptors.
    """
    global _lock, _loop, _thread
    _lock = threading.Lock()  # may have been held by another thread at fork time
    if _loop is not None:
        _inherited.append(_loop)
    _loop = None
    _thread = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The private loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_run, args=(loop,), name="comfynb-loop", daemon=True)
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    """True on the private loop's own thread, where blocking on it would deadlock."""
    return _thread is not None and threading.get_ident() == _thread.ident


def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
    """Schedule ``coro`` on the private loop from any thread (including the loop's own)."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run_sync(coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run ``coro`` on the private loop and block this thread until it is done.

    On timeout (:class:`comfynb.errors.Timeout`) or an interrupt such as Ctrl-C, the coroutine
    is cancelled so nothing keeps running unseen.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError(
            "a blocking comfynb call was made on comfynb's own event loop thread, which would "
            "deadlock; use `await` there instead"
        )
    fut = submit(coro)
    try:
        done = _block(fut, timeout)
    except BaseException:
        fut.cancel()
        raise
    if not done:
        fut.cancel()
        raise Timeout(f"gave up waiting after {timeout:g} s")
    return fut.result()


def still_running(exc: BaseException, message: str) -> BaseException:
    """``exc`` (an interrupt) made to show as the one line ``message`` in IPython
    (``_render_traceback_``) and to carry it as a note elsewhere; returned for ``raise``."""
    exc._render_traceback_ = lambda: [message]  # type: ignore[attr-defined]
    if message not in str(exc):
        exc.add_note(message)
    return exc


async def _tick(loop: asyncio.AbstractEventLoop) -> None:
    """Wake ``loop`` every ``WAKE`` s while something of ours is awaited on it."""
    while _awake[loop][0] > 0:
        await asyncio.sleep(WAKE)
    del _awake[loop]


@contextlib.asynccontextmanager
async def awake() -> AsyncIterator[None]:
    """Keep the running loop waking up every ``WAKE`` s for the duration (one timer per loop)."""
    loop = asyncio.get_running_loop()
    entry = _awake.get(loop)
    if entry is None:
        entry = _awake[loop] = [0, None]
    entry[0] += 1
    if entry[1] is None:
        entry[1] = loop.create_task(_tick(loop))
    try:
        yield
    finally:
        entry[0] -= 1


async def wrap(
    cfut: concurrent.futures.Future, *, describe: Callable[[], str] | None = None, cancel: bool = False
) -> Any:
    """Await a concurrent future from whatever loop the caller is running, waking that loop every
    ``WAKE`` s (so a kernel interrupt is seen at once).

    Cancelling the awaiting task does not cancel ``cfut`` (a job's or a sweep's outcome is not the
    caller's to cancel) unless ``cancel`` is set (the future stands for the caller's own call);
    ``describe()`` then gives the one line shown instead of the cancellation's traceback.
    """
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    def copy(_: concurrent.futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:  # the caller's loop was closed meanwhile: nobody waits any more
            pass

    cfut.add_done_callback(copy)
    try:
        async with awake():
            await ready
    except asyncio.CancelledError as exc:
        if cancel:
            cfut.cancel()
        elif describe is not None and not cfut.done():
            raise still_running(exc, describe()) from None
        raise
    return cfut.result()


def wait(cfut: concurrent.futures.Future, timeout: float | None, describe: Callable[[], str]) -> bool:
    """Block until ``cfut`` is done or ``timeout`` passed (False then). On an interrupt (Ctrl-C, a
    kernel's interrupt), raise a KeyboardInterrupt that says ``describe()`` in one line."""
    try:
        return _block(cfut, timeout)
    except KeyboardInterrupt:
        if cfut.done():
            raise
        raise still_running(KeyboardInterrupt(describe()), describe()) from None


def _block(fut: concurrent.futures.Future, timeout: float | None) -> bool:
    """Wait for ``fut`` (True) or ``timeout`` (False) in slices of at most ``_SLICE`` s.

    A Ctrl-C that lands just as this thread goes to sleep on a lock is otherwise noticed only
    when the lock is released: with no timeout, never, if the job never ends. Waking up in
    slices lets the interpreter run the signal's handler.
    """
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SLICE if end is None else min(_SLICE, end - time.monotonic())
        if left <= 0:
            return fut.done()
        done, _ = concurrent.futures.wait([fut], timeout=left)
        if done:
            return True


async def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the private loop and await it from whatever loop the caller is running:
    the ``await`` twin of :func:`run_sync` (cancelling the caller cancels ``coro``)."""
    return await wrap(submit(coro), cancel=True)
