"""Sweeps: expansion checked before anything is sent, then runs against the simulator."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import comfynb.sim
from comfynb import _loop
from comfynb.errors import AddressError, WorkflowError
from comfynb.frames import COLUMNS, history_frame
from comfynb.session import Session
from comfynb.sweep import Plan, make_plan
from comfynb.transport import Transport
from comfynb.workflow import Workflow

TXT2IMG = {
    "3": {
        "class_type": "KSampler",
        "_meta": {"title": "KSampler"},
        "inputs": {
            "seed": 100,
            "steps": 2,
            "cfg": 8.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "_meta": {"title": "Load Checkpoint"},
        "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"},
    },
    "5": {
        "class_type": "EmptyLatentImage",
        "_meta": {"title": "Empty Latent Image"},
        "inputs": {"width": 64, "height": 64, "batch_size": 1},
    },
    "6": {
        "class_type": "CLIPTextEncode",
        "_meta": {"title": "Positive"},
        "inputs": {"text": "a cat", "clip": ["4", 1]},
    },
    "7": {
        "class_type": "CLIPTextEncode",
        "_meta": {"title": "Negative"},
        "inputs": {"text": "blurry", "clip": ["4", 1]},
    },
    "8": {
        "class_type": "VAEDecode",
        "_meta": {"title": "VAE Decode"},
        "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
    },
    "9": {
        "class_type": "SaveImage",
        "_meta": {"title": "Save Image"},
        "inputs": {"filename_prefix": "sweep", "images": ["8", 0]},
    },
}


@pytest.fixture
def wf():
    return Workflow.load(TXT2IMG)


# -- expansion (no server) -------------------------------------------------------------------


def test_grid_is_cartesian_in_key_order(wf):
    plan = make_plan(wf, grid={"KSampler.cfg": [4.0, 7.0], "KSampler.seed": range(3)})
    assert plan.total == len(plan) == 6 and plan.addresses == ["KSampler.cfg", "KSampler.seed"]
    assert [plan.row(i) for i in range(6)] == [
        {"KSampler.cfg": c, "KSampler.seed": s} for c in (4.0, 7.0) for s in range(3)
    ]
    with pytest.raises(IndexError):
        plan.row(6)


def test_zip_aligns_and_rejects_unequal_lengths(wf):
    plan = make_plan(wf, zip={"Positive.text": ["a", "b"], "KSampler.seed": [1, 2]})
    assert [plan.row(i) for i in range(2)] == [
        {"Positive.text": "a", "KSampler.seed": 1},
        {"Positive.text": "b", "KSampler.seed": 2},
    ]
    with pytest.raises(WorkflowError, match="equal length.*'Positive.text': 2, 'KSampler.seed': 3"):
        make_plan(wf, zip={"Positive.text": ["a", "b"], "KSampler.seed": [1, 2, 3]})


def test_rows_and_seed_axis(wf):
    plan = make_plan(wf, rows=[{"KSampler.cfg": 4}, {"KSampler.steps": 3}], seeds=2)
    assert plan.addresses == ["KSampler.cfg", "KSampler.steps", "KSampler.seed"]
    assert [plan.row(i) for i in range(4)] == [
        {"KSampler.cfg": 4, "KSampler.seed": 100},
        {"KSampler.cfg": 4, "KSampler.seed": 101},
        {"KSampler.steps": 3, "KSampler.seed": 100},
        {"KSampler.steps": 3, "KSampler.seed": 101},
    ]
    assert make_plan(wf, seeds=[7, 9]).addresses == ["KSampler.seed"]
    assert make_plan(wf, grid={"KSampler.cfg": [1.0]}, seeds=[5]).row(0) == {"KSampler.cfg": 1.0, "KSampler.seed": 5}


def test_values_become_plain_json_and_plans_round_trip(wf):
    plan = make_plan(wf, grid={"KSampler.seed": np.arange(3), "KSampler.cfg": [np.float32(1.5)]}, seeds=None)
    assert type(plan.row(1)["KSampler.seed"]) is int and type(plan.row(0)["KSampler.cfg"]) is float
    again = Plan.from_json(plan.to_json())
    assert [again.row(i) for i in range(3)] == [plan.row(i) for i in range(3)]


def test_bad_definitions_fail_before_anything_is_sent(wf):
    with pytest.raises(AddressError, match="KSampler.seed"):
        make_plan(wf, grid={"KSampler.sed": [1]})
    with pytest.raises(AddressError, match="ambiguous"):
        make_plan(
            Workflow.load({**TXT2IMG, "7": {**TXT2IMG["7"], "_meta": {"title": "Positive"}}}),
            grid={"Positive.text": ["x"]},
        )
    with pytest.raises(WorkflowError, match="linked"):
        make_plan(wf, grid={"KSampler.model": ["x"]})
    with pytest.raises(WorkflowError, match="not JSON"):
        make_plan(wf, rows=[{"KSampler.cfg": object()}])
    with pytest.raises(WorkflowError, match="must be a list"):
        make_plan(wf, grid={"Positive.text": "a cat"})
    with pytest.raises(WorkflowError, match="no values"):
        make_plan(wf, grid={"KSampler.seed": []})
    with pytest.raises(WorkflowError, match="one of grid=, zip= or rows="):
        make_plan(wf, grid={"KSampler.seed": [1]}, zip={"KSampler.cfg": [1]})
    with pytest.raises(WorkflowError, match="give grid="):
        make_plan(wf)
    with pytest.raises(WorkflowError, match="swept already"):
        make_plan(wf, grid={"KSampler.seed": [1]}, seeds=2)
    with pytest.raises(WorkflowError, match="seed input"):
        make_plan(
            Workflow.load({"1": TXT2IMG["5"], "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}),
            seeds=2,
        )


def test_a_huge_grid_is_not_materialised(wf):
    plan = make_plan(wf, grid={"KSampler.seed": range(10_000), "KSampler.cfg": [1.0, 2.0, 3.0]})
    assert plan.total == 30_000 and plan.row(29_999) == {"KSampler.seed": 9_999, "KSampler.cfg": 3.0}


# -- against the simulator ----------------------------------------------------------------------


SIM_WORKFLOWS = Path(comfynb.sim.__file__).parent / "workflows"


def sim_params(png: bytes) -> dict:
    """The generation parameters the simulator wrote into the PNG (which prompt made this file)."""
    return json.loads(Image.open(io.BytesIO(png)).text["comfynb_sim"])


@pytest.fixture
def session():
    s = Session.simulated(node_time=0.005)
    yield s
    s.close()


@pytest.fixture
def txt2img():
    return Workflow.load(SIM_WORKFLOWS / "default_txt2img.json")


async def test_sweep_frame_matches_what_each_prompt_made(session, txt2img):
    sweep = session.sweep(
        txt2img, grid={"KSampler.seed": [1, 2, 3], "KSampler.cfg": [4.0, 7.5]}, concurrency=2, tag="study"
    )
    assert len(sweep) == 6 and len(sweep.jobs) <= 2  # rows are built and sent as slots open
    df = await sweep
    assert len(sweep.jobs) == 6
    assert list(df.columns) == ["KSampler.seed", "KSampler.cfg", *COLUMNS]
    assert df[["KSampler.seed", "KSampler.cfg"]].values.tolist() == [[s, c] for s in (1, 2, 3) for c in (4.0, 7.5)]
    assert (df.status == "success").all() and df["index"].tolist() == list(range(6))
    assert (
        (df.tag == "study").all()
        and (df.sweep_id == sweep.sweep_id).all()
        and (df.server == session.simulator.url).all()
    )
    assert df.queued_at.dt.tz is not None and (df.run_time >= 0).all() and (df.queue_wait >= 0).all()
    assert df.prompt_id.tolist() == [job.prompt_id for job in sweep.jobs]
    for row, job in zip(df.itertuples(), sweep.jobs):
        result = job.result()
        assert row.images == [ref.url for ref in result.images]
        made = sim_params(result.images[0].data)
        assert (made["seed"], made["cfg"]) == (row._1, row._2)
        assert job.history["prompt"][3]["comfynb"] == {
            "tag": "study",
            "sweep_id": sweep.sweep_id,
            "index": row.index,
            "params": {"KSampler.seed": row._1, "KSampler.cfg": row._2},
        }
    assert "6 success" in repr(sweep)


def test_sweep_from_plain_code_with_seeds_zip_and_rows(session, txt2img):
    df = session.sweep(txt2img, zip={"KSampler.cfg": [3.0, 5.0], "KSampler.steps": [2, 3]}, seeds=2).result(timeout=60)
    assert list(df.columns[:3]) == ["KSampler.cfg", "KSampler.steps", "KSampler.seed"]
    base = txt2img["KSampler.seed"]
    assert df["KSampler.seed"].tolist() == [base, base + 1] * 2 and (df.status == "success").all()
    df = session.sweep(txt2img, rows=[{"KSampler.steps": 2}, {"KSampler.cfg": 2.0}]).result(timeout=60)
    assert df["KSampler.steps"].tolist()[0] == 2 and pd.isna(df["KSampler.steps"][1])


async def test_concurrency_bounds_the_server_queue_and_holds_the_rest(txt2img):
    session = Session.simulated(node_time=0.02)
    try:
        sweep = session.sweep(txt2img, grid={"KSampler.seed": range(12)}, concurrency=3)
        assert len(sweep.jobs) <= 3 and sweep.counts()["pending"] >= 9  # the other rows are not built yet
        transport = Transport(session.simulator.url)
        seen = []
        while not sweep.done():
            running, pending = await transport.get_queue()
            seen.append(len(running) + len(pending))
            await asyncio.sleep(0.01)
        await transport.close()
        df = await sweep
        assert max(seen) <= 3 and 3 in seen
        assert (df.status == "success").all()
    finally:
        await session.aclose()


def test_cancel_drops_held_rows_and_stops_the_server_work(txt2img):
    session = Session.simulated(node_time=0.05)
    try:
        sweep = session.sweep(txt2img, grid={"KSampler.seed": range(20)}, concurrency=2)
        first = next(iter(sweep.as_completed(timeout=30)))
        assert first.status == "success"
        assert sweep.cancel() >= 17
        df = sweep.result(timeout=30)
        counts = df.status.value_counts()
        assert (
            counts["cancelled"] >= 17
            and counts.get("success", 0) + counts["cancelled"] + counts.get("interrupted", 0) == 20
        )
        assert session.simulator.engine.counter <= 4  # held rows never reached the server
        running, pending = _loop.run_sync(Transport(session.simulator.url).get_queue())
        assert running == [] and pending == []
    finally:
        session.close()


async def test_as_completed_sync_and_async(session, txt2img):
    sweep = session.sweep(txt2img, grid={"KSampler.seed": range(5)}, concurrency=2)
    ids = [job.prompt_id async for job in sweep.as_completed(timeout=60)]
    assert sorted(ids) == sorted(job.prompt_id for job in sweep.jobs)
    assert len(await asyncio.to_thread(lambda: list(sweep.as_completed(timeout=60)))) == 5


def test_bad_address_sends_nothing(session, txt2img):
    with pytest.raises(AddressError, match="Did you mean 'KSampler.seed'"):
        session.sweep(txt2img, grid={"KSampler.cfg": [1.0, 2.0], "KSampler.sed": [1]})
    assert session.simulator.engine.counter == 0 and session.jobs == []


def test_contact_sheet_is_a_labelled_grid(session, txt2img):
    sweep = session.sweep(txt2img, grid={"KSampler.seed": [1, 2, 3], "KSampler.cfg": [4.0, 7.0]})
    sweep.result(timeout=60)
    sheet = sweep.contact_sheet("KSampler.seed", "KSampler.cfg", size=64)
    assert sheet.width > 3 * 64 and sheet.height > 2 * 64
    assert hasattr(sheet, "_repr_png_")
    with pytest.raises(KeyError, match="KSampler.seed"):
        sweep.contact_sheet("KSampler.steps", "KSampler.cfg")


def test_save_uses_local_names_and_writes_the_frame(session, txt2img, tmp_path):
    txt2img["Save Image.filename_prefix"] = "nested/dir/run"  # the server names a subfolder
    sweep = session.sweep(txt2img, grid={"KSampler.seed": [5, 6]})
    root = sweep.save(tmp_path / "out")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "images/00000.png",
        "images/00001.png",
        "results.csv",
        "results.parquet",
    ]
    assert sim_params((root / "images/00001.png").read_bytes())["seed"] == 6
    back = pd.read_parquet(root / "results.parquet")
    assert back["files"].map(list).tolist() == [["images/00000.png"], ["images/00001.png"]]
    pd.testing.assert_frame_equal(back.drop(columns=["images", "files"]), sweep.frame().drop(columns=["images"]))
    csv = pd.read_csv(root / "results.csv")
    assert csv["files"].tolist() == ["images/00000.png", "images/00001.png"]


def test_upload_once_and_sweep_over_images(session, tmp_path):
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    path = tmp_path / "blue image.png"
    blue.save(path)
    name = session.upload(red)
    input_dir = session.simulator.root / "input"
    assert (input_dir / name).is_file()
    (input_dir / name).unlink()
    assert session.upload(Image.new("RGB", (16, 16), (255, 0, 0))) == name  # same content: not sent again
    assert not (input_dir / name).exists()
    with Session(session.simulator.url) as other:  # a new session: the server reuses the name
        assert other.upload(red) == name and other.upload(_png(red)) == name
    assert sorted(f.name for f in input_dir.iterdir()) == [name]

    wf = Workflow.load(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "none.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}},
        }
    )
    sweep = session.sweep(wf, grid={"LoadImage.image": [red, path, _png(red)]})
    df = sweep.result(timeout=60)
    names = df["LoadImage.image"].tolist()
    assert names[0] == names[2] == name and names[1].startswith("blue_image-") and names[1] != name
    assert len({f.name for f in input_dir.iterdir()}) == 2
    assert (df.status == "success").all()
    colours = [Image.open(io.BytesIO(job.result().images[0].data)).getpixel((0, 0)) for job in sweep.jobs]
    assert colours == [(255, 0, 0), (0, 0, 255), (255, 0, 0)]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_history_frame_pages_and_filters(session, txt2img):
    one = session.sweep(txt2img, grid={"KSampler.seed": range(7)}, tag="a")
    two = session.sweep(txt2img, grid={"KSampler.seed": range(3)}, tag="b")
    one.result(timeout=60), two.result(timeout=60)
    session.submit(SIM_WORKFLOWS / "tiny.json").result(timeout=30)  # untagged
    everything = history_frame(session.simulator.url, page_size=4)
    assert len(everything) == 11
    a = history_frame(session.simulator.url, tag="a", page_size=3)
    pd.testing.assert_frame_equal(a, one.frame())
    newest = session.history_frame(tag="a", limit=2)
    assert newest["KSampler.seed"].tolist() == [5, 6]
    assert session.history_frame(sweep_id=two.sweep_id)["index"].tolist() == [0, 1, 2]


def test_failed_rows_keep_their_timings_and_error(session):
    wf = Workflow.load(SIM_WORKFLOWS / "runtime_error.json")
    df = session.sweep(wf, grid={"ImageToMask.channel": ["red", "alpha"]}, tag="errors").result(timeout=60)
    assert df.status.tolist() == ["success", "error"]
    assert df.error[1] == "node 2 (ImageToMask): IndexError: index 3 is out of bounds for dimension 3 with size 3"
    assert pd.notna(df.run_time[1]) and df.images[1] == []
    pd.testing.assert_frame_equal(session.history_frame(tag="errors"), df)


def test_credentials_never_go_into_tags(txt2img):
    with Session.simulated(token="s3cret-token") as session:
        with pytest.raises(ValueError, match="credential"):
            session.sweep(txt2img, grid={"6.text": ["a s3cret-token b"]})
        assert session.simulator.engine.counter == 0


def test_plain_submissions_are_journalled(tmp_path, txt2img):
    from comfynb.journal import Journal

    with Session.simulated(journal=tmp_path / "j.sqlite") as session:
        jobs = [session.submit(txt2img.with_values({"KSampler.seed": i}), tags="plain") for i in range(3)]
        for job in jobs:
            job.result(timeout=30)
    subs = Journal(tmp_path / "j.sqlite").submissions()
    assert [s.prompt_id for s in subs] == [job.prompt_id for job in jobs]
    assert all(s.state == "success" and s.tag == "plain" and s.outcome["outputs"] for s in subs)
    assert Journal(tmp_path / "j.sqlite").prompt(jobs[0].prompt_id)["3"]["inputs"]["seed"] == 0


async def test_async_upload_and_history_frame(session, txt2img):
    name = await session.aupload(_png(Image.new("RGB", (8, 8), (0, 255, 0))))
    assert name.endswith(".png") and (session.simulator.root / "input" / name).is_file()
    sweep = session.sweep(txt2img, grid={"KSampler.seed": [1, 2]}, tag="async")
    df = await sweep
    pd.testing.assert_frame_equal(await session.ahistory_frame(tag="async"), df)


def test_a_sweep_whose_sender_fails_ends_every_row(txt2img):
    """Should sending rows fail half-way (here: the session's API key turns up in every row's
    tags, which are refused), the rows not sent end with that error instead of staying pending."""
    with Session.simulated(headers={"X-Api-Key": "index"}, progress=False) as session:
        sweep = session.sweep(txt2img, grid={"KSampler.seed": range(4)}, concurrency=2)
        with pytest.raises(ValueError, match="credential"):
            sweep.result(timeout=30)
        for job in sweep.jobs:
            with pytest.raises(ValueError, match="credential"):
                job.result(timeout=30)
            assert job.status == "error"


def test_a_dropped_sweep_still_runs_every_row_and_a_finished_one_is_let_go(wf):
    import gc
    import weakref

    with Session.simulated(node_time=0.01, progress=False) as session:
        sweep = session.sweep(wf, grid={"KSampler.seed": list(range(12))}, concurrency=2)
        gone = weakref.ref(sweep)
        sweep_id = sweep.sweep_id
        del sweep  # nothing of the caller's holds it while rows are still to be sent
        gc.collect()
        assert gone() is not None  # the session holds it until every row ended
        gone().result(timeout=60)
        gc.collect()
        assert gone() is None  # ended and held by no one: let go, with its jobs
        assert session.jobs == []
        frame = session.history_frame(sweep_id=sweep_id)
        assert sorted(frame["KSampler.seed"]) == list(range(12))
