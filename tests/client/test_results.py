"""Result parsing from real recorded history entries; lazy, cached, safe image access."""

import asyncio
import copy
import io
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from comfynb import _loop
from comfynb.errors import ComfyError, ProtocolError
from comfynb.results import ImageRef, Result

TRACES = Path("/work/shared/protocol-traces")
SERVER = "http://127.0.0.1:8188"


def _history_entries():
    """prompt_id -> entry for every non-empty /history/{id} answer in the traces."""
    entries = {}
    for path in sorted(TRACES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["src"] == "http" and rec["path"].startswith("/history/") and rec.get("body"):
                entries.update(rec["body"])
    return entries


HISTORY = _history_entries()


def _utc_ms(ms):
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _png(color="red", size=(8, 6), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


class FileServer:
    """A stand-in for the /view call: an async callable serving bytes and counting calls."""

    def __init__(self, data):
        self.data = data
        self.calls = []

    async def __call__(self, filename, subfolder, type):
        self.calls.append((filename, subfolder, type, _loop.in_loop_thread()))
        return self.data


def test_single_image_entry_with_timings():
    pid = "8ef5aabc-e5f2-45b7-9cf3-1a63fac87872"
    r = Result.from_history(pid, HISTORY[pid], server=SERVER, fetcher=None)
    assert r.prompt_id == pid and r.status == "success" and r.server == SERVER
    assert r.images == [ImageRef("tiny_00011_.png", "", "output", "2", SERVER)]
    assert r.outputs == HISTORY[pid]["outputs"] and r.history is HISTORY[pid]
    assert r.queued_at == _utc_ms(1795928424508) and r.queued_at.tzinfo is UTC
    assert r.started_at == _utc_ms(1795928424508)
    assert r.finished_at == _utc_ms(1795928424512)
    assert r.queue_wait == 0.0 and r.run_time == pytest.approx(0.004)


def test_batch_images_keep_their_order():
    pid = "8d263d11-74a8-43ab-afb5-85c223771aa6"
    r = Result.from_history(pid, HISTORY[pid], server=SERVER, fetcher=None)
    assert [i.filename for i in r.images] == [f"batch_0000{n}_.png" for n in (5, 6, 7, 8)]
    assert {i.node_id for i in r.images} == {"4"}


def test_every_recorded_entry_parses():
    statuses = set()
    for pid, entry in HISTORY.items():
        r = Result.from_history(pid, entry, server=SERVER, fetcher=None)
        expected = sum(len(o.get("images", [])) for o in entry["outputs"].values())
        assert len(r.images) == expected
        assert r.started_at and r.finished_at and r.queued_at and r.run_time >= 0
        statuses.add(r.status)
    assert statuses == {"success", "error", "interrupted"}


def test_error_and_interrupt_come_from_the_messages():
    err = Result.from_history(
        "5542ce86-5cc2-44cc-bb6b-341facb02ff3",
        HISTORY["5542ce86-5cc2-44cc-bb6b-341facb02ff3"],
        server=SERVER,
        fetcher=None,
    )
    assert err.status == "error" and err.images == []
    assert err.finished_at == _utc_ms(HISTORY[err.prompt_id]["status"]["messages"][-1][1]["timestamp"])
    intr = Result.from_history(
        "ff699154-ec92-424c-8842-b3efafa9e12e",
        HISTORY["ff699154-ec92-424c-8842-b3efafa9e12e"],
        server=SERVER,
        fetcher=None,
    )
    assert intr.status == "interrupted"
    # a runtime dependency cycle can leave status_str "success": the messages say otherwise
    entry = copy.deepcopy(HISTORY["8ef5aabc-e5f2-45b7-9cf3-1a63fac87872"])
    entry["status"]["messages"][-1] = ["execution_error", {"prompt_id": "x", "timestamp": 1795928424600}]
    assert Result.from_history("x", entry, server=SERVER, fetcher=None).status == "error"


def test_images_from_every_output_node_in_node_order():
    entry = {
        "outputs": {
            "10": {"images": [{"filename": "c.png", "subfolder": "s", "type": "temp"}]},
            "9": {
                "gifs": [{"filename": "b.webp", "subfolder": "", "type": "output", "format": "image/webp"}],
                "images": [{"filename": "a.png"}],
            },
            "15.0.0.3": {"images": [{"filename": "d.png", "subfolder": "", "type": "output"}]},
            "15": {"text": ["hello"], "audio": [{"filename": "x.flac", "subfolder": "", "type": "output"}]},
            "2": {"images": [], "animated": [True]},
        }
    }
    r = Result.from_history("p", entry, server=SERVER, fetcher=None)
    assert [(i.node_id, i.filename, i.subfolder, i.type) for i in r.images] == [
        ("9", "a.png", "", "output"),
        ("10", "c.png", "s", "temp"),
        ("15.0.0.3", "d.png", "", "output"),
    ]  # still pictures only: the animated WebP and the FLAC are files of their own kinds
    assert [(f.node_id, f.filename, f.kind) for f in r.files] == [
        ("9", "b.webp", "animated"),
        ("9", "a.png", "image"),
        ("10", "c.png", "image"),
        ("15", "x.flac", "audio"),
        ("15.0.0.3", "d.png", "image"),
    ]
    assert r.texts == {"15": ["hello"]}
    assert r.status == "success" and r.queued_at is None and r.run_time is None and r.queue_wait is None


def test_odd_entries():
    assert Result.from_history("p", {}, server=SERVER, fetcher=None).images == []
    r = Result.from_history("p", {"outputs": None, "status": None, "prompt": None}, server=SERVER, fetcher=None)
    assert r.outputs == {} and r.started_at is None and r.queued_at is None
    # a wrong type anywhere comfynb reads is a ProtocolError naming the field, never skipped silently
    junk = {
        "outputs": ([], "outputs"),
        "status": ({"messages": [["execution_start"]]}, "status.messages[0]"),
        "prompt": ([1, "p", {}, "not extra"], "prompt[3]"),
    }
    for key, (value, field) in junk.items():
        with pytest.raises(ProtocolError, match=re.escape(f"'{field}'")):
            Result.from_history("p", {key: value}, server=SERVER, fetcher=None)
    items = {"2": {"images": [{"no": "filename"}]}, "3": "not a dict", "4": {"gifs": [{"filename": 5}]}}
    for node, output in items.items():
        with pytest.raises(ProtocolError, match=f"'outputs.{node}"):
            Result.from_history("p", {"outputs": {node: output}}, server=SERVER, fetcher=None)
    with pytest.raises(ProtocolError):
        Result.from_history("p", [], server=SERVER, fetcher=None)


def test_reprs_hold_no_pixels():
    pid = "8d263d11-74a8-43ab-afb5-85c223771aa6"
    fetch = FileServer(_png())
    r = Result.from_history(pid, HISTORY[pid], server=SERVER, fetcher=fetch)
    r.images[0].data  # noqa: B018 - loaded, still not shown
    text = repr(r)
    assert pid in text and "images=4" in text and "['4']" in text and "PNG" not in text
    ref = repr(r.images[0])
    assert ref == (
        f"FileRef(filename='batch_00005_.png', subfolder='', type='output', node_id='4', server='{SERVER}', kind='image')"
    )


def test_lazy_fetch_is_cached_and_runs_on_the_private_loop():
    data = _png(size=(8, 6))
    fetch = FileServer(data)
    ref = ImageRef("x.png", "sub", "temp", "9", SERVER, fetch)
    assert fetch.calls == []
    assert ref.data == data and ref.data == data
    img = ref.image
    assert img.size == (8, 6) and ref.image is img
    assert fetch.calls == [("x.png", "sub", "temp", True)]
    assert ref == ImageRef("x.png", "sub", "temp", "9", SERVER) and hash(ref) == hash(
        ImageRef("x.png", "sub", "temp", "9", SERVER)
    )


async def test_fetch_from_a_running_loop():
    fetch = FileServer(_png())
    ref = ImageRef("x.png", "", "output", "9", SERVER, fetch)
    assert await ref.fetch() == fetch.data
    assert await ref.fetch() == fetch.data and len(fetch.calls) == 1
    assert ref.data == fetch.data


def test_no_fetcher():
    with pytest.raises(ComfyError, match="not attached"):
        ImageRef("x.png", "", "output", "9", SERVER).data  # noqa: B018


def test_repr_png_converts_other_formats():
    png = _png()
    assert ImageRef("a.png", "", "output", "1", SERVER, FileServer(png))._repr_png_() == png
    converted = ImageRef("a.jpg", "", "output", "1", SERVER, FileServer(_png(fmt="JPEG")))._repr_png_()
    assert converted.startswith(b"\x89PNG") and Image.open(io.BytesIO(converted)).size == (8, 6)


def test_save_into_a_folder_and_to_a_path(tmp_path):
    data = _png()
    ref = ImageRef("x_00001_.png", "run/a", "output", "9", SERVER, FileServer(data))
    written = ref.save(tmp_path / "out")
    assert written == (tmp_path / "out" / "run" / "a" / "x_00001_.png").resolve()
    assert written.read_bytes() == data
    flat = ImageRef("y.png", "", "output", "9", SERVER, FileServer(data)).save(tmp_path)
    assert flat == tmp_path.resolve() / "y.png"
    assert ref.save(tmp_path / "chosen" / "name.png") == tmp_path / "chosen" / "name.png"
    assert (tmp_path / "chosen" / "name.png").read_bytes() == data
    # backslashes are separators too, and "." parts vanish
    assert (
        ImageRef("z.png", "b\\.\\c", "output", "9", SERVER, FileServer(data)).save(tmp_path)
        == tmp_path.resolve() / "b" / "c" / "z.png"
    )


@pytest.mark.parametrize(
    "filename,subfolder",
    [
        ("..", ""),
        ("../x.png", ""),
        ("..\\x.png", ""),
        ("/etc/passwd", ""),
        ("\\\\server\\share\\x.png", ""),
        ("C:\\x.png", ""),
        ("c:x.png", ""),
        ("a\x00b.png", ""),
        ("sub/x.png", ""),
        ("", ""),
        (".", ""),
        ("x.png", ".."),
        ("x.png", "../../etc"),
        ("x.png", "a/../../b"),
        ("x.png", "/abs"),
        ("x.png", "\\abs"),
        ("x.png", "C:"),
        ("x.png", "ok/D:evil"),
        ("x.png", "a\x00"),
    ],
)
def test_save_refuses_names_that_escape(tmp_path, filename, subfolder):
    fetch = FileServer(b"data")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ProtocolError, match="unsafe"):
        ImageRef(filename, subfolder, "output", "9", SERVER, fetch).save(folder)
    assert list(tmp_path.rglob("*")) == [folder]  # nothing written anywhere
    assert fetch.calls == []  # refused before downloading


def test_save_refuses_a_symlink_that_leads_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    with pytest.raises(ProtocolError):
        ImageRef("x.png", "link", "output", "9", SERVER, FileServer(b"d")).save(folder)
    assert list(outside.iterdir()) == []


def test_fetching_from_several_threads():
    fetch = FileServer(_png())
    refs = [ImageRef(f"{i}.png", "", "output", "1", SERVER, fetch) for i in range(8)]
    threads = [threading.Thread(target=lambda r=r: r.image) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c[0] for c in fetch.calls) == sorted(f"{i}.png" for i in range(8))


async def test_images_from_the_simulator(tmp_path):
    """End to end: a real history entry, fetched through Transport.view on the private loop."""
    from comfynb.sim import Simulator
    from comfynb.transport import Transport

    async def on_loop(coro):
        return await _loop.wrap(_loop.submit(coro))

    async with Simulator() as sim:
        t = Transport(sim.url)
        try:
            prompt = {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 40, "height": 30, "batch_size": 2, "color": 0x00FF00},
                },
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "res/a b&c"}},
            }
            await on_loop(t.post_prompt({"prompt": prompt, "client_id": "c", "prompt_id": "r1"}))
            for _ in range(500):
                entry = await on_loop(t.get_history("r1"))
                if entry:
                    break
                await asyncio.sleep(0.01)
            r = Result.from_history("r1", entry, server=t.url, fetcher=t.view)
            assert r.status == "success" and len(r.images) == 2 and r.images[0].subfolder == "res"
            assert r.queued_at <= r.started_at <= r.finished_at and r.run_time >= 0
            assert (await r.images[0].fetch()).startswith(b"\x89PNG")
            img = await asyncio.to_thread(lambda: r.images[1].image)  # blocking access from a plain thread
            assert img.size == (40, 30) and img.getpixel((0, 0))[:3] == (0, 255, 0)
            assert "prompt" in img.info  # the server's PNG text chunk survives: bytes are not re-encoded
            path = await asyncio.to_thread(r.images[0].save, tmp_path)
            assert path == tmp_path.resolve() / "res" / r.images[0].filename
            assert path.read_bytes() == await r.images[0].fetch()
            async with aiohttp.ClientSession() as http:  # the plain /view URL works too (a browser's view)
                async with http.get(r.images[0].url) as resp:
                    assert resp.status == 200 and await resp.read() == path.read_bytes()
        finally:
            await on_loop(t.close())


def test_view_urls_round_trip():
    ref = ImageRef("a b&c=%.png", "sub/dir", "temp", "7", SERVER + "/comfy")
    assert ref.url.startswith(SERVER + "/comfy/view?filename=a+b%26c%3D%25.png&")
    back = ImageRef.from_url(ref.url, node_id="7")
    assert back == ref and back.url == ref.url
    assert ImageRef.from_url(f"{SERVER}/view?filename=x.png").type == "output"
    for bad in (f"{SERVER}/other?filename=a", f"{SERVER}/view?type=output", f"{SERVER}/view"):
        with pytest.raises(ValueError):
            ImageRef.from_url(bad)
