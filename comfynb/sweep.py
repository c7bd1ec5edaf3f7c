"""Parameter sweeps: many prompts from one workflow, with bounded concurrency and a results frame.

A sweep of 10,000 prompts must not flood the server's queue nor the client's memory, so rows are
computed from a compact :class:`Plan` when their slot opens, and at most ``concurrency`` prompts
are on the server at once; the others are cheap pending jobs that can be cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import json
import math
import os
import re
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _loop, checks
from .errors import Cancelled, ComfyError, TagError, Timeout, WorkflowError
from .frames import COLUMNS, KIND_COLUMNS, MEDIA_COLUMNS, frame_from_rows, history_row
from .journal import TERMINAL, Submission
from .results import IN_MEMORY, FileRef, first_frame, write_file
from .tracker import CANCELLED, ERROR, PENDING
from .uploads import is_image, upload
from .workflow import Workflow

_SEED_INPUTS = ("seed", "noise_seed")
_FILE_INPUTS = ("image", "mask", "video", "audio", "file")  # loader inputs that take an uploaded file
MAX_ROWS = 100_000  # a sweep above this needs max_rows= raised: a typo in a grid can mean 10^9 prompts
_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")


class Plan:
    """A sweep's rows, computed on demand from axes (never materialised: a 10,000-row grid is a few lists).

    ``kind`` is ``grid`` (cartesian product, first axis slowest), ``zip`` (aligned lists) or ``rows``
    (explicit dicts); an optional seed axis multiplies every row (seed fastest). Values are JSON, so
    a plan can be journalled and rebuilt in another process.
    """

    def __init__(
        self,
        kind: str,
        axes: list[tuple[str, list]],
        rows: list[dict] | None = None,
        seed: tuple[str, list] | None = None,
    ):
        self.kind, self.axes, self.rows, self.seed = kind, axes, rows, seed
        if kind == "grid":
            base = math.prod(len(values) for _, values in axes)
        elif kind == "zip":
            base = len(axes[0][1]) if axes else 1
        else:
            base = len(rows or ())
        self.total = base * (len(seed[1]) if seed else 1)

    @property
    def addresses(self) -> list[str]:
        """Every swept address, in column order."""
        names = (
            [a for a, _ in self.axes]
            if self.kind != "rows"
            else list(dict.fromkeys(k for row in self.rows or () for k in row))
        )
        return names + ([self.seed[0]] if self.seed else [])

    def __len__(self) -> int:
        return self.total

    def row(self, i: int) -> dict:
        """The parameters of row ``i``."""
        if not 0 <= i < self.total:
            raise IndexError(i)
        params: dict = {}
        if self.seed:
            i, s = divmod(i, len(self.seed[1]))
        if self.kind == "grid":
            digits = []
            for _, values in reversed(self.axes):
                i, d = divmod(i, len(values))
                digits.append(d)
            params = {a: values[d] for (a, values), d in zip(self.axes, reversed(digits))}
        elif self.kind == "zip":
            params = {a: values[i] for a, values in self.axes}
        else:
            assert self.rows is not None  # without rows the total is 0, so i failed the range check
            params = dict(self.rows[i])
        if self.seed:
            params[self.seed[0]] = self.seed[1][s]
        return params

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "axes": [[a, v] for a, v in self.axes],
            "rows": self.rows,
            "seed": list(self.seed) if self.seed else None,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        seed = data.get("seed")
        return cls(
            data["kind"],
            [(a, list(v)) for a, v in data["axes"]],
            data.get("rows"),
            (seed[0], list(seed[1])) if seed else None,
        )


# -- checking a sweep's definition -------------------------------------------------------------


def _json(value: Any, where: str = "", _open: frozenset = frozenset()) -> Any:
    """Plain JSON data (numpy scalars, tuples converted): plans go into tags and the journal.
    A list or dict that contains itself is a WorkflowError, not a RecursionError."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, FileRef):  # an earlier job's output: "sub/name.png [output]", remembering its server
        return value.as_input()
    if isinstance(value, (list, tuple, Mapping)):
        if id(value) in _open:
            raise WorkflowError(f"the values of '{where}' contain a list or dict that contains itself")
        inside = _open | {id(value)}
        if isinstance(value, Mapping):
            return {k: _json(v, where, inside) for k, v in value.items()}
        return [_json(v, where, inside) for v in value]
    return value


def _axis(address: str, values: Any) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise WorkflowError(
            f"the values of '{address}' must be a list (or range, array...) of values to sweep, "
            f"not {type(values).__name__} {values!r:.60}; for one value use a one-item list"
        )
    values = list(values)
    if not values:
        raise WorkflowError(f"'{address}' has no values to sweep")
    return values


def make_plan(
    wf: Workflow,
    *,
    grid: Mapping | None = None,
    zip: Mapping | None = None,
    rows: Iterable[Mapping] | None = None,
    seeds: int | Iterable[int] | None = None,
    upload: Callable[[list], dict[int, str]] | None = None,
    max_rows: int | None = None,
) -> Plan:
    """Check a sweep's definition against the workflow, before anything is submitted.

    Every address must resolve (AddressError, with suggestions), no input may be swept under two
    addresses, aligned lists must have equal lengths, the number of rows must not exceed
    ``max_rows``, and every value must be settable (JSON, not over a link), so a sweep never fails
    half-way because of its own definition. File values (see :func:`is_image`) of loader inputs are
    given to ``upload``, which returns ``{id(image): server name}``; the plan holds the names.
    """
    given = [name for name, v in (("grid", grid), ("zip", zip), ("rows", rows)) if v is not None]
    if len(given) > 1:
        raise WorkflowError(f"give one of grid=, zip= or rows=, not {' and '.join(given)}")
    for name, value in (("grid", grid), ("zip", zip)):
        if value is not None and not value and seeds is None:
            raise WorkflowError(
                f"{name}={{}} has nothing to sweep: give an address and its values, e.g. "
                f"{name}={{'KSampler.seed': [1, 2]}}, or use session.submit for one prompt"
            )
    if rows is not None:
        if isinstance(rows, Mapping):
            raise WorkflowError("rows= takes a list of dicts {address: value}, one per prompt")
        row_list = [dict(r) for r in rows]
        if not row_list:
            raise WorkflowError("rows= is empty: nothing to sweep")
        plan_kind, axes = "rows", []
    else:
        row_list = None
        plan_kind = "zip" if zip is not None else "grid"
        axes = [(address, _axis(address, values)) for address, values in (grid or zip or {}).items()]
        if zip is not None:
            lengths = {a: len(v) for a, v in axes}
            if len(set(lengths.values())) > 1:
                shown = ", ".join(f"'{a}': {n}" for a, n in lengths.items())
                raise WorkflowError(
                    f"zip= needs lists of equal length (one value per prompt); got {shown}. "
                    "Use grid= for every combination."
                )
    if not given and seeds is None:
        raise WorkflowError("give grid=, zip= or rows= (or seeds=) to say what to sweep")
    seed = _seed_axis(wf, seeds) if seeds is not None else None
    plan = Plan(plan_kind, axes, row_list, seed)
    _check_addresses(wf, plan)
    if max_rows is not None and plan.total > max_rows:
        raise WorkflowError(
            f"this sweep has {plan.total:,} rows, more than max_rows={max_rows:,}: pass max_rows={plan.total} "
            "(or None) if you mean it, or sweep fewer values (rows are sent lazily, but each one runs)"
        )
    images = _images(wf, plan)
    if images:
        if upload is None:
            raise WorkflowError("this sweep has images as values; run it through session.sweep, which uploads them")
        names = upload(images)
        axes = [(a, [names.get(id(v), v) for v in values]) for a, values in axes]
        row_list = (
            [{a: names.get(id(v), v) for a, v in row.items()} for row in row_list or ()]
            if row_list is not None
            else None
        )
    axes = [(a, _json(values, a)) for a, values in axes]
    row_list = _json(row_list, "rows")
    plan = Plan(plan_kind, axes, row_list, seed)
    _check(wf, plan)
    return plan


def _check_addresses(wf: Workflow, plan: Plan) -> None:
    """Every address resolves, and no input is swept under two addresses (the frame would show
    values for one of them that were never used)."""
    seen: dict[tuple[str, str], str] = {}
    for address in plan.addresses:
        key = wf.resolve(address)
        if key in seen:
            raise WorkflowError(
                f"'{seen[key]}' and '{address}' are the same input ('{key[1]}' of node {key[0]}): it is swept "
                "already; sweep it under one address only"
                + (" (seeds= sweeps it too: drop seeds= or drop it from the sweep)" if plan.seed else "")
            )
        seen[key] = address


def _file_input(wf: Workflow, address: str) -> bool:
    """Whether an input takes an uploaded file's name: a loader's (``LoadImage.image``) or one named like it."""
    nid, name = wf.resolve(address)
    node = wf._graph[nid]
    return name in _FILE_INPUTS or str(node.get("class_type", "")).startswith("Load")


def _images(wf: Workflow, plan: Plan) -> list:
    """The image values to upload; a Path that is missing, or an image for an input that does not
    take one, is a WorkflowError naming where it is."""
    found = []
    places = [(f"'{a}' value {n}", a, v) for a, values in plan.axes for n, v in enumerate(values)]
    places += [(f"row {i} '{a}'", a, v) for i, row in enumerate(plan.rows or ()) for a, v in row.items()]
    for where, address, value in places:
        if not is_image(value):
            continue
        if not _file_input(wf, address):
            hint = " Give str(path) to send the path as text." if isinstance(value, os.PathLike) else ""
            raise WorkflowError(
                f"{where}: '{address}' is not an input that takes a file (a loader's), so a "
                f"{type(value).__name__} cannot go there (it would be uploaded).{hint}"
            )
        if isinstance(value, os.PathLike) and not Path(value).is_file():
            raise WorkflowError(f"{where}: no such file {os.fspath(value)!r} to upload")
        found.append(value)
    return found


def _seed_axis(wf: Workflow, seeds: int | Iterable[int]) -> tuple[str, list]:
    """The seed input and its values: ``seeds=n`` counts up from the workflow's own seed."""
    params = wf.parameters()
    found = params[params.input.isin(_SEED_INPUTS)]
    if len(found) != 1:
        which = (
            "has no seed input"
            if found.empty
            else f"has several seed inputs ({', '.join(repr(a) for a in found.address)})"
        )
        raise WorkflowError(
            f"seeds= needs one seed input, but this workflow {which}; sweep a seed "
            "explicitly instead, e.g. grid={'<node>.seed': [1, 2, 3]}"
        )
    address = found.address.iloc[0]
    if isinstance(seeds, bool) or not isinstance(seeds, (int, Iterable)) or isinstance(seeds, (str, bytes)):
        raise WorkflowError(f"seeds= takes a number of seeds or a list of seeds, not {seeds!r:.60}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise WorkflowError("seeds= must be at least 1")
        base = wf[address] if isinstance(wf[address], int) else 0
        return address, [base + k for k in range(seeds)]
    return address, _axis(address, seeds)


def _check(wf: Workflow, plan: Plan) -> None:
    """Resolve every address and set every distinct value once, on a scratch copy."""
    for address in plan.addresses:
        wf.resolve(address)
    scratch = wf.copy()
    columns = [*plan.axes, *([plan.seed] if plan.seed else [])]
    for address, values in columns:
        for value in values:
            scratch.set(address, value)
    for row in plan.rows or ():
        for address, value in row.items():
            scratch.set(address, value)


# -- running a sweep ---------------------------------------------------------------------------


class Sweep:
    """One prompt per row of a :class:`Plan`, at most ``concurrency`` of them on the servers at once.

    Rows are built and sent lazily, as slots free up: a sweep's memory grows with the rows sent,
    never with the size of its grid. ``len(sweep)`` is the number of rows; ``jobs`` holds the
    :class:`~comfynb.jobs.Job` of each row sent so far, in the order sent. ``await sweep`` or
    ``sweep.result()`` give the results frame (see :mod:`comfynb.frames`), one row per plan row.
    """

    def __init__(
        self,
        session,
        workflow: Workflow,
        plan: Plan,
        *,
        concurrency: int = 8,
        tag: str | None = None,
        sweep_id: str | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.session = session
        self.workflow = workflow
        self.plan = plan
        self.concurrency = concurrency
        self.tag = tag
        self.sweep_id = sweep_id or uuid.uuid4().hex[:16]
        self.jobs: list = []  # the job of every row sent so far, in the order sent
        self._rows: dict[int, Any] = {}  # row index -> its job
        self._finished: list = []  # jobs in the order they ended (as_completed)
        self._flying: set = set()  # futures of the jobs on a server (each holds a slot)
        self._by_future: dict[concurrent.futures.Future, Any] = {}  # the job of each row still running
        self._remaining = plan.total
        self._stopped_at: int | None = None  # rows from here on that were not sent will never be
        self._stop_error: BaseException | None = None  # why (None: cancelled)
        self._loop = _loop.get_loop()
        self._wake: asyncio.Event | None = None
        self._cancelled = False
        self._done: concurrent.futures.Future = concurrent.futures.Future()
        self._tick: concurrent.futures.Future = concurrent.futures.Future()  # resolved when a row ends
        self._template = workflow.to_api()

    # -- starting ---------------------------------------------------------------------------------

    def _start(self, sent: Mapping[int, Submission] | None = None) -> Sweep:
        """Start sending rows; ``sent`` maps rows submitted earlier (resume) to their journal records."""
        sent = sent or {}
        if sent:
            _loop.run_sync(self._adopt_all(sent))
        self.session._sweeps[self.sweep_id] = self
        # the session holds a sweep until every row ended (dropping it must not stop it); then only
        # its caller does: the jobs' futures hold it weakly (see _add), so it can be let go
        self.session._live_sweeps.add(self)
        self._done.add_done_callback(lambda _: self.session._live_sweeps.discard(self))
        _loop.submit(self._run(sent)).add_done_callback(self._crashed)
        return self

    def _crashed(self, fut: concurrent.futures.Future) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        if not self._done.done():
            self._done.set_exception(fut.exception())
        self._ticked()

    async def _adopt_all(self, sent: Mapping[int, Submission]) -> None:
        await asyncio.wrap_future(self.session._started)
        for i in sorted(sent):
            job = self._adopt(sent[i])
            if not job.done():
                self._flying.add(job._state.future)
            self._add(i, job)

    def _add(self, index: int, job: Any) -> None:
        self._rows[index] = job
        self.jobs.append(job)
        self._by_future[job._state.future] = job
        job._state.future.add_done_callback(functools.partial(_row_ended, weakref.ref(self)))

    async def _run(self, sent: Mapping[int, Submission]) -> None:
        """Build and send the rows in row order as slots free up (rows sent earlier hold slots too)."""
        self._wake = asyncio.Event()
        for i in range(self.plan.total):
            while len(self._flying) >= self.concurrency and not self._cancelled:
                self._wake.clear()
                await self._wake.wait()
            if self._cancelled:
                self._stop(i, None)
                return
            if i in sent:
                continue
            try:
                job = self.session._hold()
            except ComfyError:  # the session was closed
                self._stop(i, Cancelled(f"the session was closed before row {i} of sweep {self.sweep_id} was sent"))
                return
            self._flying.add(job._state.future)
            self._add(i, job)
            try:
                params = self.plan.row(i)
                tags = {"tag": self.tag, "sweep_id": self.sweep_id, "index": i, "params": params}
                self.session._send_held(job, self._prompt(params), tags, self._ui(params))
            except Exception as exc:  # the row cannot be sent: neither can the ones after it
                self._stopped_at, self._stop_error = i + 1, exc  # known before a waiting caller wakes
                self._done.set_exception(exc)  # then: result() raises it, whatever ends next
                self.session._settle_unsent(job._state, exc)
                self._stop(i + 1, exc)
                return

    def _stop(self, index: int, error: BaseException | None) -> None:
        """Rows from ``index`` on that were not sent never will be (cancelled, session closed, failed)."""
        self._stopped_at, self._stop_error = index, error
        self._remaining -= self.plan.total - index - sum(1 for i in self._rows if i >= index)
        if self._remaining == 0 and not self._done.done():
            self._done.set_result(None)
        self._ticked()

    def _ticked(self) -> None:
        tick, self._tick = self._tick, concurrent.futures.Future()
        tick.set_result(None)

    def _ui(self, params: Mapping) -> dict | None:
        """The UI workflow a row's prompt embeds in its outputs (None if unknown)."""
        ui = self.workflow.ui_workflow()
        if ui is not None and any("@" in address for address in params):  # bypass/mute axes show in it
            ui = self.workflow.with_values(params).ui_workflow()
        return ui

    def _prompt(self, params: Mapping) -> dict:
        """The row's API graph, sharing every part it leaves unchanged with all other rows (memory)."""
        return _share(self.workflow.with_values(params).to_api(), self._template)

    def _adopt(self, sub: Submission):
        """A job for a row sent earlier: settled from the journal if it ended, else looked up on the server."""
        if sub.state in TERMINAL:
            return self.session._adopt(
                sub.prompt_id,
                server=sub.server,
                prompt=None,
                tags=sub.tags,
                attempts=sub.attempts,
                entry=sub.entry(),
                status=sub.state,
            )
        return self.session._adopt(
            sub.prompt_id,
            server=sub.server,
            prompt=self.session.journal.prompt(sub.prompt_id),
            tags=sub.tags,
            attempts=sub.attempts,
            ui=self._ui(sub.params),  # if the server lost it, it is sent again as it was first sent
        )

    def _job_done(self, fut: concurrent.futures.Future) -> None:
        """A row's job ended (on the loop)."""
        job = self._by_future.pop(fut)
        if fut in self._flying:
            self._flying.discard(fut)
            if self._wake is not None:
                self._wake.set()
        self._finished.append(job)
        self._remaining -= 1
        if self._remaining == 0 and not self._done.done():
            self._done.set_result(None)
        self._ticked()

    # -- waiting and results ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.plan.total

    def __await__(self):
        return self._aresult().__await__()

    async def _aresult(self) -> pd.DataFrame:
        await _loop.wrap(self._done, describe=self._still_running)
        return self.frame()

    def result(self, timeout: float | None = None) -> pd.DataFrame:
        """Block until every row has ended, then return the frame (failed rows included, not raised)."""
        if _loop.in_loop_thread():
            raise RuntimeError("sweep.result() would deadlock on comfynb's own loop thread; use `await sweep`")
        if not _loop.wait(self._done, timeout, self._still_running):
            raise Timeout(
                f"sweep {self.sweep_id}: {self._remaining} of {self.plan.total} rows not finished within {timeout:g} s"
            )
        self._done.result()
        return self.frame()

    def _still_running(self) -> str:
        """What an interrupted wait says: the sweep goes on until cancelled."""
        ended = self.plan.total - self._remaining
        return f"sweep {self.tag or self.sweep_id} still running ({ended}/{self.plan.total}): sweep.cancel() stops it"

    def done(self) -> bool:
        return self._done.done()

    def as_completed(self, timeout: float | None = None) -> _Completed:
        """Jobs in finishing order, including rows sent after the call: ``for job in ...`` blocks,
        ``async for job in ...`` awaits. Rows cancelled before being sent have no job."""
        return _Completed(self, timeout)

    def cancel(self) -> int:
        """Cancel every unfinished row: rows not sent are dropped, queued ones deleted, running ones
        interrupted. Returns how many rows were stopped (jobs asked to stop, and rows never sent)."""
        self._cancelled = True
        asked = sum(job.cancel() for job in list(self.jobs))
        if self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return asked + self.plan.total - len(self._rows)

    def frame(self) -> pd.DataFrame:
        """The results frame now: finished rows from their history, the others from their state."""
        return frame_from_rows(self._row(i) for i in range(self.plan.total))

    def _row(self, index: int) -> dict:
        job = self._rows.get(index)
        if job is not None and job.history is not None:
            return history_row(job.prompt_id, job.history, job.server)
        if job is not None:
            status, error, prompt_id, server = job.status, job.error, job.prompt_id, job.server
        else:
            status, error = self._unsent_status(index), self._stop_error
            prompt_id = server = None
        return {
            "params": self.plan.row(index),
            "prompt_id": prompt_id,
            "status": status,
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "server": server,
            "tag": self.tag,
            "sweep_id": self.sweep_id,
            "index": index,
        }

    def _unsent_status(self, index: int) -> str:
        if self._stopped_at is None or index < self._stopped_at:
            return PENDING
        return CANCELLED if self._stop_error is None or isinstance(self._stop_error, Cancelled) else ERROR

    def never_sent(self) -> tuple[list[int], str | None, BaseException | None]:
        """The rows that will never be sent (the sweep was cancelled, its session closed, or
        sending failed), their status, and why (None: cancelled)."""
        if self._stopped_at is None:
            return [], None, None
        rows = [i for i in range(self._stopped_at, self.plan.total) if i not in self._rows]
        return rows, self._unsent_status(self.plan.total - 1), self._stop_error

    def counts(self) -> dict[str, int]:
        """Rows per status (rows not sent yet are ``pending``)."""
        counts = collections.Counter(job.status for job in list(self.jobs))
        counts.update(self.unsent())
        return dict(counts)

    def unsent(self) -> dict[str, int]:
        """Rows without a job, by status: ``pending`` (not sent yet), or ``cancelled``/``error``
        (never to be sent: the sweep was cancelled, its session closed, or sending failed)."""
        unsent = self.plan.total - len(self._rows)
        return {self._unsent_status(self.plan.total - 1): unsent} if unsent else {}

    def __repr__(self) -> str:
        counts = self.counts()
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        tag = f" tag={self.tag!r}" if self.tag else ""
        return f"<Sweep {self.sweep_id}{tag}: {self.plan.total} rows over {self.plan.addresses}; {summary}>"

    # -- images ------------------------------------------------------------------------------------

    def contact_sheet(self, x: str, y: str, *, size: int = 192):
        """A PIL image grid of each row's first image, ``x`` values across and ``y`` values down.

        Where other parameters vary too, each cell shows the first matching row. Rows without an
        image show their status. PIL images display themselves in notebooks.
        """
        return contact_sheet(self.session, self.frame(), x, y, size=size)

    def save(self, folder: str | os.PathLike, *, wait: bool = True) -> Path:
        """Write every output into ``folder``, one subfolder per kind (``images/``, ``videos/``,
        ``audio/``, ``texts/``...), streamed from the servers, plus ``results.parquet`` and ``.csv``.

        Local names are built from the row index (``00012.png``, ``00012-1.mp4``...), never from
        the server's names, which are not trusted as paths. SaveImageWebsocket images, which exist
        only in this session's memory, are written too (``images/00012-ws-1.png``). Returns the folder.
        """
        frame = self.result() if wait else self.frame()
        extra: dict[int, list[FileRef]] = {}
        for position, job in sorted(self._rows.items()):  # the frame has one row per plan row
            if job.status == "success":
                refs = [f for f in job.result().files if f.type == IN_MEMORY]
                if refs:
                    extra[position] = refs
        return save_frame(self.session, frame, folder, in_memory=extra)


def _row_ended(sweep: weakref.ref[Sweep], future: concurrent.futures.Future) -> None:
    """A row's job ended (in any thread): tell its sweep on the loop, if anyone still holds it.
    The job's state may outlive the sweep and the job (a server's tracker keeps the latest finished
    ones), so this callback holds neither."""
    held = sweep()
    if held is not None:
        held._loop.call_soon_threadsafe(held._job_done, future)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class _Completed:
    """A sweep's jobs as they end (see :meth:`Sweep.as_completed`)."""

    def __init__(self, sweep: Sweep, timeout: float | None):
        self._sweep = sweep
        self._timeout = timeout

    def _expired(self) -> Timeout:
        s = self._sweep
        return Timeout(
            f"sweep {s.sweep_id}: {s._remaining} of {s.plan.total} rows not finished within {self._timeout:g} s"
        )

    def __iter__(self) -> Iterator:
        if _loop.in_loop_thread():
            raise RuntimeError("as_completed() would deadlock on comfynb's own loop thread; use `async for`")
        sweep, seen = self._sweep, 0
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            tick = sweep._tick
            if seen < len(sweep._finished):
                seen += 1
                yield sweep._finished[seen - 1]
            elif sweep._done.done():
                return
            else:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not concurrent.futures.wait([tick], remaining).done:
                    raise self._expired()

    async def __aiter__(self) -> AsyncIterator:
        sweep, seen = self._sweep, 0
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            tick = sweep._tick
            if seen < len(sweep._finished):
                seen += 1
                yield sweep._finished[seen - 1]
            elif sweep._done.done():
                return
            else:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(tick)), remaining)
                except TimeoutError:
                    raise self._expired() from None


def _share(value: Any, base: Any) -> Any:
    """``value`` with each part equal to the same part of ``base`` replaced by ``base``'s object."""
    if value == base:
        return base
    if isinstance(value, dict) and isinstance(base, dict):
        return {k: _share(v, base[k]) if k in base else v for k, v in value.items()}
    return value


# -- frames -> images and files (also for frames from history) ---------------------------------


def _fetcher(session, url: str):
    server = next((s for s in session._servers if url.startswith(s.url + "/view?")), None)
    if server is None:
        raise ComfyError(f"{url} is not on a server of this session")
    return server.transport.view


async def _fetch_all(session, urls: list[str], limit: int = 8) -> list[bytes | BaseException]:
    gate = asyncio.Semaphore(limit)

    async def one(url: str) -> bytes | BaseException:
        ref = FileRef.from_url(url, fetcher=_fetcher(session, url))
        async with gate:
            try:
                return await ref._download()
            except ComfyError as exc:
                return exc

    return await asyncio.gather(*(one(u) for u in urls))


async def _write_all(session, downloads: list[tuple[str, Path]], limit: int = 8) -> None:
    """Stream each ``/view`` URL to its path, a few at a time; the first failure is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(url: str, path: Path) -> None:
        async with gate:
            await write_file(FileRef.from_url(url, fetcher=_fetcher(session, url)), path)

    await asyncio.gather(*(one(u, p) for u, p in downloads))


def _picture_url(row: Any) -> str | None:
    """The URL a contact sheet shows for a row: its first still image, else the first animation,
    else the first video (whose first frame is shown)."""
    for column in ("images", "animations", "videos"):
        urls = row.get(column)
        if urls is not None and len(urls):
            return urls[0]
    return None


def _label(value: Any, limit: int = 24) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def contact_sheet(session, frame: pd.DataFrame, x: str, y: str, *, size: int = 192):
    """A labelled grid of first images by two columns of a results frame (see :meth:`Sweep.contact_sheet`)."""
    from PIL import Image, ImageDraw, ImageFont

    for name in (x, y):
        if name not in frame.columns:
            params = [c for c in frame.columns if c not in COLUMNS and c not in MEDIA_COLUMNS]
            raise KeyError(f"'{name}' is not a column of this sweep; its parameters are {params}")
    xs = list(dict.fromkeys(frame[x].tolist()))
    ys = list(dict.fromkeys(frame[y].tolist()))
    cells: dict[tuple, tuple[str | None, str]] = {}
    for _, row in frame.iterrows():
        vx, vy, url = row[x], row[y], _picture_url(row)
        if (vx, vy) not in cells or (cells[(vx, vy)][0] is None and url is not None):
            cells[(vx, vy)] = (url, str(row["status"]))
    urls = [u for u, _ in cells.values() if u is not None]
    fetched = dict(zip(urls, _loop.run_sync(_fetch_all(session, urls)))) if urls else {}
    # Labels of at least 14 px (legible at 100 % zoom), light on a dark neutral ground: the sheet
    # reads the same in light and dark notebook themes.
    font = ImageFont.load_default(size=max(14, size // 9))
    band = max(22, size // 6)
    ink, ground, empty = "#f0f0f0", "#2b2b2b", "#454545"
    left = band // 2 + max((int(font.getlength(_label(v))) for v in ys), default=0) + 8
    sheet = Image.new("RGB", (left + size * len(xs), band * 2 + size * len(ys)), ground)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, band // 2), f"across: {x}   down: {y}", fill=ink, font=font, anchor="lm")
    for c, vx in enumerate(xs):
        draw.text((left + c * size + size // 2, band + band // 2), _label(vx), fill=ink, font=font, anchor="mm")
    for r, vy in enumerate(ys):
        top = band * 2 + r * size
        draw.text((left - 8, top + size // 2), _label(vy), fill=ink, font=font, anchor="rm")
        for c, vx in enumerate(xs):
            url, status = cells.get((vx, vy), (None, "missing"))
            box = (left + c * size, top)
            data = fetched.get(url) if url is not None else None
            if isinstance(data, bytes):
                try:
                    thumb = first_frame(data)  # a picture, an animation's or a video's first frame
                    thumb.thumbnail((size - 4, size - 4))
                    sheet.paste(thumb, (box[0] + (size - thumb.width) // 2, box[1] + (size - thumb.height) // 2))
                    continue
                except Exception as exc:  # an output that is not a picture (e.g. a video)
                    status = type(exc).__name__
            draw.rectangle((box[0] + 2, box[1] + 2, box[0] + size - 3, box[1] + size - 3), fill=empty)
            draw.text((box[0] + size // 2, box[1] + size // 2), status, fill=ink, font=font, anchor="mm")
    return sheet


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ".bin"


def save_frame(
    session, frame: pd.DataFrame, folder: str | os.PathLike, *, in_memory: dict[int, list[FileRef]] | None = None
) -> Path:
    """Stream a frame's files into ``folder/<column>/`` (``images``, ``videos``, ``audio``...),
    write each row's texts to ``texts/<row>.txt``, and the frame itself (with a ``files`` column).

    Files are named by row index (by position if the frame mixes sweeps), never by server names.
    ``in_memory`` adds files that are on no server (SaveImageWebsocket images), by row position.
    """
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    downloads: list[tuple[str, Path]] = []
    files: list[list[str]] = []
    by_index = frame["index"].notna().all() and frame["index"].is_unique  # one sweep: its row numbers
    columns = [c for c in KIND_COLUMNS.values() if c in frame.columns]
    for position, (_, row) in enumerate(frame.iterrows()):
        stem = f"{int(row['index']) if by_index else position:05d}"
        names = []
        for column in columns:
            for k, url in enumerate(row[column]):
                name = f"{column}/{stem}{f'-{k}' if k else ''}{_suffix(FileRef.from_url(url).filename)}"
                names.append(name)
                downloads.append((url, root / name))
        for k, ref in enumerate((in_memory or {}).get(position, ()), 1):
            name = f"images/{stem}-ws-{k}{_suffix(ref.filename)}"
            names.append(name)
            _write_bytes(root / name, ref.data)
        if "texts" in frame.columns and len(row["texts"]):
            name = f"texts/{stem}.txt"
            names.append(name)
            _write_bytes(root / name, "\n".join(row["texts"]).encode("utf-8"))
        files.append(names)
    for _, path in downloads:
        path.parent.mkdir(parents=True, exist_ok=True)
    if downloads:
        _loop.run_sync(_write_all(session, downloads))
    out = frame.assign(files=pd.Series(files, index=frame.index, dtype=object))
    joined = {c: out[c].map(" ".join) for c in (*columns, "files") if c != "texts"}
    if "texts" in out.columns:
        joined["texts"] = out["texts"].map(json.dumps)  # texts may hold spaces and newlines
    out.assign(**joined).to_csv(root / "results.csv", index=False)
    try:
        out.to_parquet(root / "results.parquet", index=False)
    except ImportError as exc:
        warnings.warn(
            f"results.parquet not written ({exc}); install pyarrow (pip install 'comfynb[parquet]')", stacklevel=3
        )
    return root


# -- entry points used by Session ------------------------------------------------------------------


async def upload_everywhere(session, images: list) -> dict[int, str]:
    """Upload each distinct image to every server of the session: ``{id(image): name}``.

    Every server gets it because any of them may run any row; names are content-addressed, so
    they agree.
    """
    await session._ready()
    names: dict[int, str] = {}
    for image in {id(i): i for i in images}.values():
        for server in session._pool.up():
            names[id(image)] = await upload(server.transport, image, session._uploads)
    return names


def start(
    session,
    workflow: Any,
    *,
    grid: Mapping | None = None,
    zip: Mapping | None = None,
    rows: Iterable[Mapping] | None = None,
    concurrency: int = 8,
    tag: str | None = None,
    seeds: int | Iterable[int] | None = None,
    max_rows: int | None = MAX_ROWS,
    check: bool = True,
) -> Sweep:
    """Check the definition (and, with ``check``, every row against the server), upload its images,
    journal it, and start sending rows (see Session.sweep)."""
    if tag is not None and not isinstance(tag, str):
        raise TagError(f"tag must be a string, not {type(tag).__name__}")
    wf = (
        workflow.copy()
        if isinstance(workflow, Workflow)
        else Workflow.load(workflow, session=session if check else None)
    )
    plan = make_plan(
        wf,
        grid=grid,
        zip=zip,
        rows=rows,
        seeds=seeds,
        upload=lambda images: _loop.run_sync(upload_everywhere(session, images)),
        max_rows=max_rows,
    )
    checks.check_sweep(session, wf, plan, check=check)
    sweep = Sweep(session, wf, plan, concurrency=concurrency, tag=tag)
    session._tags({"tag": tag, "plan": plan.to_json()})  # refuses credentials before anything is sent
    ui = wf.ui_workflow()
    where = session._secrets.find(ui) if ui is not None else None
    if where is not None:
        raise WorkflowError(
            f"the UI workflow holds a credential of this session (at '{where}'); every output file would carry "
            "it (extra_pnginfo.workflow), so nothing was sent: remove it from the workflow"
        )
    if session.journal is not None:
        session.journal.add_sweep(
            sweep.sweep_id,
            tag=tag,
            workflow=wf.to_api(),
            plan=plan.to_json(),
            total=plan.total,
            concurrency=concurrency,
            ui=ui,  # once per sweep: resumed rows embed it too
        )
    return sweep._start()


def resume(session, sweep_id: str) -> Sweep:
    """Finish a journalled sweep: rows that ended are read back, rows on the server are followed,
    rows the server lost are sent again (once, whichever process resumes), and rows never sent are sent.

    Idempotent: in this process the live sweep is returned; elsewhere, the journal and the server
    show every row as sent, so nothing is sent twice.
    """
    live = session._sweeps.get(sweep_id)
    if live is not None:
        return live
    journal = session.journal
    if journal is None:
        raise ComfyError("resume needs the journal the sweep was recorded in: Session(url, journal='sweeps.sqlite')")
    record = journal.sweep(sweep_id)
    if record is None:
        raise ComfyError(f"no sweep {sweep_id!r} in the journal {journal.path}")
    wf, plan = Workflow.load(record.workflow), Plan.from_json(record.plan)
    wf.ui = record.ui  # the UI workflow the first rows embedded (bypass and mute axes are applied per row)
    checks.check_sweep(session, wf, plan, check=False)  # bypass axes need the server's /object_info again
    sweep = Sweep(
        session,
        wf,
        plan,
        concurrency=record.concurrency,
        tag=record.tag,
        sweep_id=sweep_id,
    )
    return sweep._start({s.index: s for s in journal.submissions(sweep_id) if s.index is not None})
