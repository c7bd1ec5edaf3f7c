"""WS frame parsing, checked against every message of the recorded real-server traces."""

import json
import struct
from pathlib import Path

import pytest

from comfynb.events import FEATURE_FLAGS, Event, Preview, Text, parse_binary, parse_text

TRACES = Path("/work/shared/protocol-traces")


def _records():
    for path in sorted(TRACES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def test_every_recorded_text_frame_parses():
    seen = set()
    for rec in _records():
        if rec["src"].startswith("ws:") and "msg" in rec:
            msg = rec["msg"]
            event = parse_text(json.dumps(msg))
            assert event is not None
            assert event.type == msg["type"] and event.data == msg["data"]
            assert event.prompt_id == msg["data"].get("prompt_id")
            seen.add(event.type)
    assert {"status", "execution_start", "executing", "executed", "progress", "execution_success"} <= seen


def test_done_only_for_executing_null_with_prompt_id():
    done = [rec["msg"] for rec in _records() if "msg" in rec and parse_text(json.dumps(rec["msg"])).done]
    assert done and all(m["type"] == "executing" and m["data"]["node"] is None for m in done)
    assert not parse_text('{"type": "executing", "data": {"node": "3"}}').done  # reconnect replay
    assert not parse_text('{"type": "executing", "data": {"node": null}}').done
    assert not parse_text('{"type": "executing", "data": {"node": "3", "prompt_id": "p"}}').done
    assert not parse_text('{"type": "executed", "data": {"node": null, "prompt_id": "p"}}').done
    assert not parse_text('{"type": "executing", "data": {"prompt_id": "p"}}').done


def test_queue_remaining():
    ev = parse_text('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "x"}}')
    assert ev.queue_remaining == 3 and ev.prompt_id is None
    assert parse_text('{"type": "status", "data": {}}').queue_remaining is None
    assert (
        parse_text('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "3"}}}}').queue_remaining
        is None
    )
    assert parse_text('{"type": "progress", "data": {"value": 1, "max": 2}}').queue_remaining is None


def test_unknown_type_is_kept_and_bytes_accepted():
    ev = parse_text(b'{"type": "crystools.monitor", "data": {"cpu": 3}}')
    assert ev == Event("crystools.monitor", {"cpu": 3}, None)
    assert parse_text('{"type": "x"}') == Event("x", {}, None)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        "null",
        "3",
        '{"data": {}}',
        '{"type": 1, "data": {}}',
        '{"type": "x", "data": []}',
        '{"type": "x", "data": null}',
        b"\xff\xfe",
        '{"type": "x"',
    ],
)
def test_junk_text_is_none(raw):
    assert parse_text(raw) is None


def test_non_string_prompt_id_is_ignored():
    assert parse_text('{"type": "executing", "data": {"node": null, "prompt_id": 5}}').prompt_id is None


def _frame(kind, word, payload=b""):
    return struct.pack(">II", kind, word) + payload


def test_type1_preview():
    assert parse_binary(_frame(1, 1, b"JPEG")) == Preview(b"JPEG", "image/jpeg", None, None)
    assert parse_binary(_frame(1, 2, b"\x89PNG")) == Preview(b"\x89PNG", "image/png", None, None)
    assert parse_binary(_frame(1, 7, b"????")) is None


def test_type3_text():
    node, text = b"12", "step 3/20 ✓".encode()
    assert parse_binary(_frame(3, len(node), node + text)) == Text("12", "step 3/20 ✓")
    assert parse_binary(_frame(3, 2, b"\xff\xfe" + b"x")) is None  # node id is not UTF-8
    assert parse_binary(_frame(3, 50, b"12")) is None  # length beyond the frame


def test_recorded_type4_frames_parse():
    """Rebuild each recorded type-4 frame from its header, metadata and length."""
    count = 0
    for rec in _records():
        if rec.get("binary") and rec["event_type"] == 4:
            meta = json.dumps(rec["metadata"]).encode()
            header = bytes.fromhex(rec["first8"])
            assert int.from_bytes(header[4:], "big") == len(meta)
            image = b"I" * (rec["len"] - 8 - len(meta))
            p = parse_binary(header + meta + image)
            assert p == Preview(
                image, rec["metadata"]["image_type"], rec["metadata"]["prompt_id"], rec["metadata"]["node_id"]
            )
            count += 1
        elif rec.get("binary") and rec["event_type"] == 1:
            p = parse_binary(bytes.fromhex(rec["first8"]) + b"img")
            assert p.mime in ("image/jpeg", "image/png") and p.prompt_id is None
    assert count


def test_type4_edge_cases():
    meta = json.dumps({"node_id": "3", "prompt_id": "p"}).encode()
    assert parse_binary(_frame(4, len(meta), meta + b"\x89PNG..")).mime == "image/png"  # no image_type
    assert parse_binary(_frame(4, len(meta), meta + b"\xff\xd8")).mime == "image/jpeg"
    assert parse_binary(_frame(4, 3, b"{x}img")) is None
    assert parse_binary(_frame(4, 2, b"[]img")) is None
    assert parse_binary(_frame(4, 99, meta)) is None
    assert parse_binary(_frame(4, 4, b'{"a"')) is None
    odd = json.dumps({"node_id": 3, "prompt_id": None, "image_type": "image/webp"}).encode()
    assert parse_binary(_frame(4, len(odd), odd + b"w")) == Preview(b"w", "image/webp", None, None)


@pytest.mark.parametrize(
    "raw", [b"", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01\x00\x00", _frame(2, 1, b"raw"), _frame(99, 0)]
)
def test_junk_binary_is_none(raw):
    assert parse_binary(raw) is None


def test_feature_flags_message():
    assert json.loads(json.dumps(FEATURE_FLAGS)) == {
        "type": "feature_flags",
        "data": {"supports_preview_metadata": True},
    }
