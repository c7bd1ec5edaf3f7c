"""The private asyncio loop that runs all client I/O, in one daemon thread per process.

Keeping our sockets on a loop we own (the fsspec / dask pattern) means the same client works
from a plain script, from inside someone else's running loop (Jupyter), and with
``nest_asyncio`` applied: callers only ever block on, or await, a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any

from .errors import Timeout

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_inherited: list[asyncio.AbstractEventLoop] = []


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
        done, _ = concurrent.futures.wait([fut], timeout=timeout)
    except BaseException:
        fut.cancel()
        raise
    if not done:
        fut.cancel()
        raise Timeout(f"gave up waiting after {timeout:g} s")
    return fut.result()


async def wrap(cfut: concurrent.futures.Future) -> Any:
    """Await a concurrent future from whatever loop the caller is running."""
    return await asyncio.wrap_future(cfut)


async def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the private loop and await it from whatever loop the caller is running:
    the ``await`` twin of :func:`run_sync`."""
    return await wrap(submit(coro))
