"""The SQLite journal: records, states, sharing across processes, one resubmitter; and recovery of a
sweep after a killed kernel and a restarted server."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import killed_mid_sweep
from PIL import Image

import comfynb.sim
from comfynb import _loop
from comfynb.embedded import read_embedded
from comfynb.errors import WorkflowError
from comfynb.journal import TERMINAL, Journal
from comfynb.results import ImageRef
from comfynb.session import Session
from comfynb.sim import Simulator
from comfynb.transport import Transport

TAGS = {"tag": "t", "sweep_id": "s1", "index": 3, "params": {"KSampler.seed": 3}}
PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}


def test_record_and_read_back(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.record("p3", server="http://s", prompt=PROMPT, tags=TAGS)
    journal.record("p1", server="http://s", prompt=PROMPT, tags={**TAGS, "index": 1})
    journal.record("other", server="http://s", prompt=PROMPT)
    subs = journal.submissions("s1")
    assert [s.prompt_id for s in subs] == ["p1", "p3"]  # by index
    assert subs[1].tags == TAGS and subs[1].state == "submitting" and subs[1].attempts == 1
    assert journal.prompt("p3") == PROMPT
    assert [s.prompt_id for s in journal.submissions()] == ["p3", "p1", "other"]
    assert journal.get("other").sweep_id is None and journal.get("nope") is None
    assert "sqlite" in repr(journal)
    journal.close()


def test_record_twice_keeps_the_first_but_follows_the_server(tmp_path):
    """A resubmission (failover) moves the row to the new server, so resume looks there."""
    journal = Journal(tmp_path / "j.sqlite")
    journal.record("p", server="http://a", prompt=PROMPT, tags=TAGS)
    journal.record("p", server="http://b", prompt={}, tags=TAGS)
    assert journal.get("p").server == "http://b" and journal.prompt("p") == PROMPT


def test_terminal_states_are_not_overwritten_by_late_updates(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.record("p", server="http://s", prompt=PROMPT, tags=TAGS)
    journal.set_state("p", "queued")
    journal.set_state("p", "success")
    journal.set_state("p", "running")  # a late event must not resurrect a finished prompt
    assert journal.get("p").state == "success"
    journal.set_state("p", "error")  # but a corrected outcome is kept
    assert journal.get("p").state == "error"


def test_sweep_record(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    plan = {"kind": "grid", "axes": [["KSampler.seed", [1, 2]]]}
    journal.add_sweep("s1", tag="t", workflow=PROMPT, plan=plan, total=2, concurrency=4)
    record = Journal(tmp_path / "j.sqlite").sweep("s1")
    assert (record.tag, record.workflow, record.plan, record.total, record.concurrency) == ("t", PROMPT, plan, 2, 4)
    assert journal.sweep("nope") is None


def test_claim_resubmit_is_granted_once_across_threads(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.record("p", server="http://s", prompt=PROMPT, tags=TAGS)
    wins = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        wins.append(journal.claim_resubmit("p", 1))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and journal.get("p").attempts == 2


def _claim_in_child(path, queue):
    queue.put(Journal(path).claim_resubmit("p", 1))


def test_claim_resubmit_is_granted_once_across_processes(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.record("p", server="http://s", prompt=PROMPT, tags=TAGS)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_child, args=(path, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results.count(True) == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_forked_child_opens_its_own_connection(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.record("p", server="http://s", prompt=PROMPT, tags=TAGS)
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=journal.set_state, args=("p", "running"))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0 and journal.get("p").state == "running"


# -- recovery: a killed kernel, a restarted server ------------------------------------------------


REPO = Path(__file__).resolve().parents[1]
TXT2IMG = Path(comfynb.sim.__file__).parent / "workflows" / "default_txt2img.json"
CHILD = """
import sys, time
from comfynb.session import Session
url, journal, workflow = sys.argv[1:4]
session = Session(url, journal=journal)
sweep = session.sweep(workflow, grid={"KSampler.seed": range(20), "KSampler.cfg": [4.0, 7.0]},
                      concurrency=8, tag="recovery")
print(sweep.sweep_id, flush=True)
while sum(job.status == "success" for job in sweep.jobs) < 10:
    time.sleep(0.005)
print("ready", flush=True)
time.sleep(600)
"""


def expected(index: int) -> tuple[int, float]:
    """(seed, cfg) of a row of the child's grid."""
    return index // 2, (4.0, 7.0)[index % 2]


def made(url: str) -> tuple[int, float]:
    """(seed, cfg) read back from the PNG the simulator wrote for a prompt."""
    png = _loop.run_sync(_view(url))
    params = json.loads(Image.open(io.BytesIO(png)).text["comfynb_sim"])
    return params["seed"], params["cfg"]


async def _view(url: str) -> bytes:
    transport = Transport(url.split("/view?")[0])
    try:
        return await ImageRef.from_url(url, fetcher=transport.view)._download()
    finally:
        await transport.close()


async def _history_ids(url: str) -> dict[str, dict]:
    """The server's whole (small) history, read directly."""
    transport = Transport(url)
    try:
        return await transport.get_history_page(1000)
    finally:
        await transport.close()


def test_recovery_after_a_killed_kernel_and_a_restarted_server(tmp_path):
    journal_path = tmp_path / "sweeps.sqlite"
    sim = Simulator(node_times={"KSampler": 0.15}, root=tmp_path / "sim")
    with sim.running():
        sweep_id = killed_mid_sweep(CHILD, sim.url, journal_path, TXT2IMG)

        # 1. A process that never saw the sweep rebuilds its frame from the server's history.
        session = Session(sim.url, journal=journal_path)
        before = set(_loop.run_sync(_history_ids(sim.url)))  # the queue still runs: bracket the read
        df = session.history_frame(sweep_id=sweep_id)
        after = set(_loop.run_sync(_history_ids(sim.url)))
        assert before <= set(df.prompt_id) <= after and len(df) >= 10
        assert (df.status == "success").all() and df["index"].is_monotonic_increasing
        for row in df.itertuples():
            assert (row._1, row._2) == expected(row.index) == made(row.images[0])
        journalled = Journal(journal_path).submissions(sweep_id)
        lost = {s.prompt_id for s in journalled if s.state not in TERMINAL}
        assert lost, "some prompts must still be queued when the server restarts"
        assert {s.prompt_id for s in journalled if s.state in TERMINAL} == set(df.prompt_id)
        never_sent = set(range(40)) - {s.index for s in journalled}

        # 2. The server restarts and forgets its queue; resume sends the lost prompts again, once.
        sim.restart()
        sweep = session.resume(sweep_id)
        final = sweep.result(timeout=120)
        assert len(final) == 40 and (final.status == "success").all()
        for row in final.itertuples():
            assert (row._1, row._2) == expected(row.index) == made(row.images[0])
        resent = _loop.run_sync(_history_ids(sim.url))
        by_index = dict(zip(final["index"], final.prompt_id))
        assert set(resent) == lost | {by_index[i] for i in never_sent}
        assert sim.engine.counter == len(resent)  # every POST since the restart is in that set: none twice
        print(
            f"recovery: {len(df)} finished before the restart, {len(lost)} lost and sent again, "
            f"{len(never_sent)} never sent by the killed process"
        )
        attempts = {s.prompt_id: s.attempts for s in Journal(journal_path).submissions(sweep_id)}
        assert {pid for pid, n in attempts.items() if n == 2} == lost and set(attempts.values()) <= {1, 2}
        assert len(attempts) == 40

        # 3. Resuming again submits nothing, in this process or in another.
        assert session.resume(sweep_id) is sweep
        with Session(sim.url, journal=journal_path) as other:
            again = other.resume(sweep_id).result(timeout=60)
        assert sim.engine.counter == len(resent)
        pd_cols = ["prompt_id", "status", "KSampler.seed", "KSampler.cfg"]
        assert again[pd_cols].equals(final[pd_cols])
        session.close()


UI_TXT2IMG = Path(comfynb.sim.__file__).parent / "workflows" / "ui" / "default_txt2img.json"
UI_CHILD = """
import sys, time
from comfynb import Workflow
from comfynb.session import Session
url, journal, workflow = sys.argv[1:4]
session = Session(url, journal=journal)
wf = Workflow.load(workflow, session=session)
sweep = session.sweep(wf, grid={"KSampler.seed": range(12)}, concurrency=4, tag="ui-recovery")
print(sweep.sweep_id, flush=True)
while sum(job.status == "success" for job in sweep.jobs) < 3:
    time.sleep(0.005)
print("ready", flush=True)
time.sleep(600)
"""


def test_resumed_rows_embed_the_ui_workflow_stored_once_per_sweep(tmp_path):
    """A sweep of a UI-format workflow, its kernel killed: after a server restart, the rows resume sends
    (lost ones again, never-sent ones first) carry the UI workflow in their files like the first ones."""
    journal_path = tmp_path / "sweeps.sqlite"
    ui = json.loads(UI_TXT2IMG.read_text())
    sim = Simulator(node_times={"KSampler": 0.15}, root=tmp_path / "sim")
    with sim.running():
        sweep_id = killed_mid_sweep(UI_CHILD, sim.url, journal_path, UI_TXT2IMG)
        journalled = Journal(journal_path).submissions(sweep_id)
        lost = {s.index for s in journalled if s.state not in TERMINAL}
        never_sent = set(range(12)) - {s.index for s in journalled}
        assert lost and never_sent, "the kill must leave rows queued and rows never sent"

        sim.restart()  # the queue is forgotten
        with Session(sim.url, journal=journal_path) as session:
            final = session.resume(sweep_id).result(timeout=120)
        assert len(final) == 12 and (final.status == "success").all()
        for row in final.itertuples():
            found = read_embedded(_loop.run_sync(_view(row.images[0])))
            assert found.workflow == ui, f"row {row.index} (lost: {row.index in lost})"
            assert found.extra["comfynb"]["index"] == row.index
            assert found.prompt["3"]["inputs"]["seed"] == row.index

    # once per sweep, never per row: the journal holds the UI workflow in the sweeps table only
    db = sqlite3.connect(journal_path)
    assert db.execute("SELECT count(*) FROM sweeps WHERE ui IS NOT NULL").fetchone() == (1,)
    assert json.loads(db.execute("SELECT ui FROM sweeps").fetchone()[0]) == ui
    rows = db.execute("SELECT prompt, params FROM submissions").fetchall()
    assert len(rows) == 12 and not any("widgets_values" in prompt + params for prompt, params in rows)


def test_a_journal_from_before_the_ui_column_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE sweeps (sweep_id TEXT PRIMARY KEY, tag TEXT, workflow TEXT NOT NULL, plan TEXT NOT NULL, "
        "total INTEGER NOT NULL, concurrency INTEGER NOT NULL, created_at REAL NOT NULL);"
        "INSERT INTO sweeps VALUES ('old', 't', '{}', '{}', 2, 4, 0);"
    )
    old.close()
    journal = Journal(path)
    assert journal.sweep("old").ui is None
    journal.add_sweep("new", tag=None, workflow=PROMPT, plan={}, total=1, concurrency=1, ui={"nodes": []})
    assert journal.sweep("new").ui == {"nodes": []}


def test_a_ui_workflow_holding_a_key_is_refused_before_anything_is_written(tmp_path):
    key = "comfyui-partner-key-0123456789abcdef"
    ui = json.loads(UI_TXT2IMG.read_text())
    next(n for n in ui["nodes"] if n["type"] == "CLIPTextEncode")["title"] = f"key {key}"
    sim = Simulator(root=tmp_path / "sim")
    with sim.running(), Session(sim.url, journal=tmp_path / "j.sqlite", api_key_comfy_org=key) as session:
        wf = comfynb.Workflow.load(ui, session=session)
        with pytest.raises(
            WorkflowError, match=r"UI workflow holds a credential of this session \(at 'nodes\[\d+\]\.title'\)"
        ):
            session.sweep(wf, grid={"KSampler.seed": range(2)})
        assert sim.engine.counter == 0
    assert key.encode() not in (tmp_path / "j.sqlite").read_bytes()
