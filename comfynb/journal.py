"""Optional SQLite record of submissions, so a sweep survives a dead kernel and a restarted server.

The server's history is the record of what *finished*; it is lost on a restart, together with the
queue. The journal is the client's record of what was *sent*: each submission (with the prompt,
needed to resubmit it) is written before its POST, and its state is updated as it progresses.
``Session.resume`` compares the two. A sweep's UI workflow (what its prompts embed in their output
files) is stored once with the sweep, not with each row, so resumed rows carry it too. Several processes may share one file: WAL mode, a busy timeout,
and a compare-and-swap on ``attempts`` so that a lost prompt is resubmitted by one process only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TERMINAL = frozenset({"success", "error", "interrupted", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id TEXT PRIMARY KEY, tag TEXT, workflow TEXT NOT NULL, plan TEXT NOT NULL,
    total INTEGER NOT NULL, concurrency INTEGER NOT NULL, created_at REAL NOT NULL, ui TEXT
);
CREATE TABLE IF NOT EXISTS submissions (
    prompt_id TEXT PRIMARY KEY, server TEXT NOT NULL, sweep_id TEXT, idx INTEGER, tag TEXT,
    params TEXT NOT NULL, prompt TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, outcome TEXT
);
CREATE INDEX IF NOT EXISTS submissions_sweep ON submissions (sweep_id, idx);
"""


@dataclass(frozen=True, slots=True)
class Submission:
    """One journalled prompt (without its graph: :meth:`Journal.prompt` loads that on demand)."""

    prompt_id: str
    server: str
    sweep_id: str | None
    index: int | None
    tag: str | None
    params: dict
    state: str
    attempts: int
    created_at: float
    updated_at: float
    outcome: dict | None  # outputs, status and create_time of the history entry, once finished

    @property
    def tags(self) -> dict:
        """The ``extra_data["comfynb"]`` tags the prompt was sent with."""
        return {"tag": self.tag, "sweep_id": self.sweep_id, "index": self.index, "params": self.params}

    def entry(self) -> dict | None:
        """A history-shaped entry rebuilt from the outcome (the server may have lost the real one).

        It has no graph: :meth:`Journal.prompt` has that.
        """
        if self.outcome is None:
            return None
        extra = {"create_time": self.outcome.get("create_time"), "comfynb": self.tags}
        return {
            "prompt": [None, self.prompt_id, {}, extra, []],
            "outputs": self.outcome.get("outputs") or {},
            "status": self.outcome.get("status") or {},
            "meta": {},
        }


@dataclass(frozen=True, slots=True)
class SweepRecord:
    """What is needed to rebuild a sweep's rows in another process."""

    sweep_id: str
    tag: str | None
    workflow: dict
    plan: dict
    total: int
    concurrency: int
    ui: dict | None = None  # the UI workflow its prompts embed (extra_pnginfo.workflow), if known


class Journal:
    """A journal file. Thread-safe (one connection per process, behind a lock); fork-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._connection()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        """The process's connection; a forked child opens its own (sqlite handles do not survive fork)."""
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            if "ui" not in {row[1] for row in conn.execute("PRAGMA table_info(sweeps)")}:  # a journal from before
                try:
                    conn.execute("ALTER TABLE sweeps ADD COLUMN ui TEXT")
                except sqlite3.OperationalError:  # another process added it meanwhile
                    pass
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._connection().execute(sql, args)

    def _fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- sweeps -----------------------------------------------------------------------------

    def add_sweep(
        self,
        sweep_id: str,
        *,
        tag: str | None,
        workflow: dict,
        plan: dict,
        total: int,
        concurrency: int,
        ui: dict | None = None,
    ) -> None:
        """Record a sweep: its API workflow and plan rebuild every row, ``ui`` is the UI workflow they embed."""
        self._execute(
            "INSERT OR IGNORE INTO sweeps (sweep_id, tag, workflow, plan, total, concurrency, created_at, ui) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sweep_id,
                tag,
                json.dumps(workflow),
                json.dumps(plan),
                total,
                concurrency,
                time.time(),
                None if ui is None else json.dumps(ui),
            ),
        )

    def sweep(self, sweep_id: str) -> SweepRecord | None:
        rows = self._fetch(
            "SELECT sweep_id, tag, workflow, plan, total, concurrency, ui FROM sweeps WHERE sweep_id = ?", (sweep_id,)
        )
        if not rows:
            return None
        sid, tag, workflow, plan, total, concurrency, ui = rows[0]
        return SweepRecord(
            sid, tag, json.loads(workflow), json.loads(plan), total, concurrency, None if ui is None else json.loads(ui)
        )

    # -- submissions --------------------------------------------------------------------------

    def record(
        self, prompt_id: str, *, server: str, prompt: dict, tags: dict | None = None, state: str = "submitting"
    ) -> None:
        """Write a submission before its POST (so a crash right after the POST is still known).
        A resubmission keeps the row but moves it to ``server`` (failover)."""
        tags = tags or {}
        now = time.time()
        self._execute(
            "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, NULL) "
            "ON CONFLICT (prompt_id) DO UPDATE SET server = excluded.server",
            (
                prompt_id,
                server,
                tags.get("sweep_id"),
                tags.get("index"),
                tags.get("tag"),
                json.dumps(tags.get("params") or {}),
                json.dumps(prompt),
                state,
                now,
                now,
            ),
        )

    def set_state(self, prompt_id: str, state: str, entry: dict | None = None) -> None:
        """Record a state (and, when finished, the small part of the history entry that the frame needs).

        Terminal states are never overwritten by late non-terminal ones.
        """
        self._update([(prompt_id, state, entry)])

    def collect(self, items: Iterable[tuple[str, dict]], states: Mapping[str, str]) -> None:
        """Record outcomes found in a server's history (``states``: prompt id -> status), in one go.

        This is what lets ``resume`` tell, after a restart wiped the history, which prompts had finished.
        """
        self._update([(pid, states[pid], entry) for pid, entry in items if pid in states])

    def _update(self, changes: list[tuple[str, str, dict | None]]) -> None:
        terminal = ",".join("?" * len(TERMINAL))
        now = time.time()
        rows = [(state, now, _outcome(entry), pid, *TERMINAL, state, *TERMINAL) for pid, state, entry in changes]
        with self._lock:
            conn = self._connection()
            with conn:
                conn.execute("BEGIN")
                conn.executemany(
                    "UPDATE submissions SET state = ?, updated_at = ?, outcome = COALESCE(?, outcome) "
                    f"WHERE prompt_id = ? AND (state NOT IN ({terminal}) OR ? IN ({terminal}))",
                    rows,
                )

    def claim_resubmit(self, prompt_id: str, attempts: int) -> bool:
        """Compare-and-swap: True for the one caller that may send attempt ``attempts + 1``
        (and for prompts this journal does not know, which no one else can resubmit)."""
        cursor = self._execute(
            "UPDATE submissions SET attempts = attempts + 1, state = 'submitting', updated_at = ? "
            "WHERE prompt_id = ? AND attempts = ?",
            (time.time(), prompt_id, attempts),
        )
        return cursor.rowcount == 1 or self.get(prompt_id) is None

    # -- hooks of the session (on its event loop: a failing journal is logged, never raised) -----------

    def on_post(self, state: Any, server: str) -> None:
        """Before a POST /prompt: the first one records the submission; resubmissions keep the row."""
        try:
            self.record(state.prompt_id, server=server, prompt=state.body["prompt"], tags=state.tags)
        except sqlite3.Error as exc:
            log.warning("journal %s: could not record %s: %s", self.path, state.prompt_id, exc)

    def on_settle(self, state: Any) -> None:
        try:
            self.set_state(state.prompt_id, state.status, state.history)
        except sqlite3.Error as exc:
            log.warning("journal %s: could not record the end of %s: %s", self.path, state.prompt_id, exc)

    def may_resubmit(self, state: Any) -> bool:
        """Whether this process may send a lost prompt again (no other process did it already)."""
        try:
            return self.claim_resubmit(state.prompt_id, state.attempts)
        except sqlite3.Error as exc:
            log.warning("journal %s: could not claim %s; resubmitting anyway: %s", self.path, state.prompt_id, exc)
            return True

    def get(self, prompt_id: str) -> Submission | None:
        rows = self._fetch(f"SELECT {_COLUMNS} FROM submissions WHERE prompt_id = ?", (prompt_id,))
        return _submission(rows[0]) if rows else None

    def submissions(self, sweep_id: str | None = None) -> list[Submission]:
        """Journalled submissions, of one sweep (by index) or all (in submission order)."""
        if sweep_id is None:
            rows = self._fetch(f"SELECT {_COLUMNS} FROM submissions ORDER BY created_at, rowid")
        else:
            rows = self._fetch(
                f"SELECT {_COLUMNS} FROM submissions WHERE sweep_id = ? ORDER BY idx, rowid", (sweep_id,)
            )
        return [_submission(row) for row in rows]

    def prompt(self, prompt_id: str) -> dict:
        """The API-format graph a submission was sent with (to resubmit it unchanged)."""
        rows = self._fetch("SELECT prompt FROM submissions WHERE prompt_id = ?", (prompt_id,))
        if not rows:
            raise KeyError(prompt_id)
        return json.loads(rows[0][0])


_COLUMNS = "prompt_id, server, sweep_id, idx, tag, params, state, attempts, created_at, updated_at, outcome"


def _submission(row: tuple[Any, ...]) -> Submission:
    pid, server, sweep_id, index, tag, params, state, attempts, created, updated, outcome = row
    return Submission(
        pid,
        server,
        sweep_id,
        index,
        tag,
        json.loads(params),
        state,
        attempts,
        created,
        updated,
        None if outcome is None else json.loads(outcome),
    )


def _outcome(entry: dict | None) -> str | None:
    if entry is None:
        return None
    prompt: Sequence[Any] = entry.get("prompt") or ()
    extra = prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}
    return json.dumps(
        {
            "outputs": entry.get("outputs") or {},
            "status": entry.get("status") or {},
            "create_time": extra.get("create_time"),
        }
    )
