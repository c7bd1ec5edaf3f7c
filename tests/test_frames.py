"""History entries -> DataFrame: pure tests on entries shaped like ComfyUI 0.8.0's (see
/work/shared/protocol-traces), and paging over a live simulator."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from comfynb.frames import COLUMNS, STATUSES, frame_from_history, history_row, image_url
from comfynb.results import ImageRef

SERVER = "http://127.0.0.1:8188"


def entry(
    pid,
    *,
    end="success",
    index=0,
    params=None,
    status_str=None,
    images=("a.png",),
    create=1000,
    start=1100,
    finish=1600,
    tags=True,
):
    messages = [
        ["execution_start", {"prompt_id": pid, "timestamp": start}],
        ["execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": start}],
    ]
    if end == "success":
        messages.append(["execution_success", {"prompt_id": pid, "timestamp": finish}])
    elif end == "interrupted":
        messages.append(
            [
                "execution_interrupted",
                {"prompt_id": pid, "node_id": "3", "node_type": "KSampler", "executed": [], "timestamp": finish},
            ]
        )
    elif end == "error":
        messages.append(
            [
                "execution_error",
                {
                    "prompt_id": pid,
                    "node_id": "2",
                    "node_type": "ImageToMask",
                    "exception_type": "IndexError",
                    "exception_message": "index 3 is out of bounds\n",
                    "traceback": [],
                    "timestamp": finish,
                },
            ]
        )
    extra = {"client_id": "c", "create_time": create}
    if tags:
        extra["comfynb"] = {
            "tag": "t",
            "sweep_id": "s",
            "index": index,
            "params": {"KSampler.seed": index, "KSampler.cfg": 4.0} if params is None else params,
        }
    return {
        "prompt": [index, pid, {}, extra, ["9"]],
        "outputs": {"9": {"images": [{"filename": f, "subfolder": "", "type": "output"} for f in images]}},
        "status": {
            "status_str": status_str or ("success" if end == "success" else "error"),
            "completed": end == "success",
            "messages": messages,
        },
        "meta": {},
    }


def test_columns_params_first_then_fixed_in_order():
    df = frame_from_history(
        [("p0", entry("p0")), ("p1", entry("p1", index=1, params={"KSampler.seed": 1, "Other.x": "y"}))], SERVER
    )
    assert list(df.columns) == ["KSampler.seed", "KSampler.cfg", "Other.x", *COLUMNS]
    assert df["KSampler.seed"].tolist() == [0, 1]
    assert pd.isna(df.loc[1, "KSampler.cfg"]) and pd.isna(df.loc[0, "Other.x"])
    assert df["index"].tolist() == [0, 1] and df["tag"].tolist() == ["t", "t"]
    assert df["server"].tolist() == [SERVER, SERVER]


def test_timings_are_utc_and_durations_seconds():
    df = frame_from_history(
        [("p0", entry("p0", create=1_767_800_000_000, start=1_767_800_000_250, finish=1_767_800_002_000))], SERVER
    )
    row = df.iloc[0]
    assert str(row.queued_at.tz) == "UTC"
    assert row.queued_at == pd.Timestamp(1_767_800_000_000, unit="ms", tz="UTC")
    assert row.queue_wait == pytest.approx(0.25) and row.run_time == pytest.approx(1.75)


def test_outcomes_come_from_messages():
    df = frame_from_history(
        [
            ("ok", entry("ok")),
            ("int", entry("int", end="interrupted")),  # ComfyUI records "error"
            ("err", entry("err", end="error")),
            ("cycle", entry("cycle", end="error", status_str="success")),  # status_str lies (protocol §5.5)
        ],
        SERVER,
    )
    assert df.status.tolist() == ["success", "interrupted", "error", "error"]
    assert list(df.status.cat.categories) == list(STATUSES)
    assert pd.isna(df.error[0])
    assert df.error[1] == "interrupted at node 3 (KSampler)"
    assert df.error[2] == "node 2 (ImageToMask): IndexError: index 3 is out of bounds"


def test_blocked_execution_error_is_not_an_outcome():
    e = entry("b")
    blocked = [
        "execution_error",
        {
            "prompt_id": "b",
            "node_id": "5",
            "node_type": "X",
            "exception_type": "ExecutionBlocked",
            "exception_message": "Execution Blocked",
        },
    ]
    e["status"]["messages"].insert(2, blocked)
    row = history_row("b", e, SERVER)
    assert row["status"] == "success" and row["error"] is None


def test_foreign_and_old_entries():
    old = entry("x", tags=False)
    del old["status"]
    row = history_row("x", old, SERVER)
    assert row["status"] == "success" and row["params"] == {} and row["sweep_id"] is None
    assert row["started_at"] is None
    df = frame_from_history([("x", old)], SERVER)
    assert pd.isna(df.started_at[0]) and pd.isna(df.run_time[0]) and pd.isna(df["index"][0])


def test_images_are_view_urls_that_never_need_quoting_by_hand():
    e = entry("p", images=("a b&c.png",))
    e["outputs"]["7"] = {
        "gifs": [{"filename": "g.webp", "subfolder": "sub/dir", "type": "temp"}],
        "text": ["not an image"],
    }
    urls = history_row("p", e, SERVER)["images"]
    assert len(urls) == 2  # in node order, like Result.images
    assert urls[0] == image_url(SERVER, {"filename": "g.webp", "subfolder": "sub/dir", "type": "temp"})
    query = parse_qs(urlsplit(urls[1]).query, keep_blank_values=True)
    assert query == {"filename": ["a b&c.png"], "subfolder": [""], "type": ["output"]}
    assert urls[1].startswith(SERVER + "/view?")
    ref = ImageRef.from_url(urls[1])
    assert (ref.filename, ref.subfolder, ref.type, ref.server) == ("a b&c.png", "", "output", SERVER)
    assert ref.url == urls[1]
    with pytest.raises(ValueError):
        ImageRef.from_url("http://x/other?filename=a")


def test_empty_frame_has_the_columns():
    df = frame_from_history([], SERVER)
    assert list(df.columns) == list(COLUMNS) and len(df) == 0


def test_parquet_round_trip():
    pytest.importorskip("pyarrow")
    df = frame_from_history(
        [
            (
                f"p{i}",
                entry(
                    f"p{i}",
                    index=i,
                    end=("success", "interrupted")[i % 2],
                    images=(f"{i}.png", f"{i}b.png")[: 1 + i % 2],
                ),
            )
            for i in range(6)
        ],
        SERVER,
    )
    buffer = io.BytesIO()
    df.to_parquet(buffer)
    back = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    assert list(back.columns) == list(df.columns)
    assert back.status.dtype == df.status.dtype
    assert back.finished_at.dt.tz is not None
    pd.testing.assert_frame_equal(back.drop(columns="images"), df.drop(columns="images"))
    assert [list(x) for x in back.images] == df.images.tolist()


def test_ten_thousand_entries_build_a_frame():
    """How fast is bench/frame_build.py's business (it prints the figures); here, that it works."""
    from bench.frame_build import synthetic_entry

    entries = [synthetic_entry(i) for i in range(10_000)]
    df = frame_from_history(entries, SERVER)
    assert len(df) == 10_000 and (df.status == "interrupted").sum() == 1000
