"""WebSocket protocol of the simulator: message order, targeting, caching, previews, interrupts,
errors and reconnects, each checked against what the recorded traces show."""

import asyncio
import io

from PIL import Image

from comfynb.sim import Simulator

from .server_helpers import (
    chain,
    connect,
    get,
    ksampler,
    post,
    run,
    runtime_error,
    tiny,
    ws_image,
)

ONE_PROMPT = [
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "progress_state",  # node 1
    "progress_state",
    "executing",
    "executed",
    "progress_state",  # node 2 (SaveImage)
    "execution_success",
    "status",
    "executing",
]


async def wait_finished(http, url, prompt_id):
    for _ in range(500):
        status, job = await get(http, url, f"/api/jobs/{prompt_id}")
        if status == 200 and job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"{prompt_id} did not finish")


async def test_one_prompt_message_order_and_shapes(sim, http):
    a = await connect(http, sim.url)
    assert a.frames[0] == {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": a.client_id},
    }
    pid = await run(http, sim.url, a, tiny(1))
    assert a.types()[1:] == ONE_PROMPT
    assert [s["status"]["exec_info"]["queue_remaining"] for s in a.of("status")] == [0, 1, 1, 0]
    states = a.of("progress_state")
    assert states[0] == {
        "prompt_id": pid,
        "nodes": {
            "1": {
                "value": 0.0,
                "max": 1.0,
                "state": "running",
                "node_id": "1",
                "prompt_id": pid,
                "display_node_id": "1",
                "parent_node_id": None,
                "real_node_id": "1",
            }
        },
    }
    assert [(n, e["state"], e["value"]) for n, e in states[-1]["nodes"].items()] == [
        ("1", "finished", 1.0),
        ("2", "finished", 1.0),
    ]
    assert a.of("executing")[-1] == {"node": None, "prompt_id": pid}
    assert a.of("executing")[0] == {"node": "1", "display_node": "1", "prompt_id": pid}
    assert a.of("executed")[0]["output"] == {
        "images": [{"filename": "tiny_00001_.png", "subfolder": "", "type": "output"}]
    }
    assert set(a.of("execution_start")[0]) == {"prompt_id", "timestamp"}
    assert a.of("execution_cached")[0]["nodes"] == []


async def test_history_entry_written_before_final_messages(sim, http):
    a = await connect(http, sim.url)
    pid = await run(http, sim.url, a, tiny(2))
    _status, body = await get(http, sim.url, f"/history/{pid}")
    entry = body[pid]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    number, prompt_id, _prompt, extra, outputs = entry["prompt"]
    assert (number, prompt_id, outputs) == (0, pid, ["2"])
    assert list(extra) == ["client_id", "create_time"]
    assert entry["outputs"] == {"2": a.of("executed")[0]["output"]}
    assert entry["meta"] == {"2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]


async def test_cached_resubmission_and_partial_cache(sim, http):
    a = await connect(http, sim.url)
    files_before = set((sim.root / "output").iterdir())
    first = await run(http, sim.url, a, chain(3))
    a.frames.clear()
    second = await run(http, sim.url, a, chain(3))
    assert a.types(second) == [
        "status",
        "status",
        "execution_start",
        "execution_cached",
        "executed",
        "progress_state",
        "execution_success",
        "status",
        "executing",
    ]
    assert a.of("execution_cached")[0]["nodes"] == ["1", "2", "3", "4", "5"]
    assert a.of("progress_state")[0]["nodes"] == {
        "5": {
            "value": 1,
            "max": 1,
            "state": "finished",
            "node_id": "5",
            "prompt_id": second,
            "display_node_id": "5",
            "parent_node_id": None,
            "real_node_id": "5",
        }
    }
    assert len(set((sim.root / "output").iterdir()) - files_before) == 1  # nothing new written
    _, hist = await get(http, sim.url, f"/history/{second}")
    _, old = await get(http, sim.url, f"/history/{first}")
    assert hist[second]["outputs"] == old[first]["outputs"]

    a.frames.clear()
    changed = chain(3)
    changed["5"]["inputs"]["filename_prefix"] = "other"
    third = await run(http, sim.url, a, changed)
    assert a.of("execution_cached")[0]["nodes"] == ["1", "2", "3", "4"]
    assert [e["node"] for e in a.of("executing")] == ["5", None]
    assert a.of("executed")[0]["output"]["images"][0]["filename"] == "other_00001_.png"
    assert third


async def test_free_memory_clears_the_cache(sim, http):
    a = await connect(http, sim.url)
    await run(http, sim.url, a, tiny(4))
    async with http.post(sim.url + "/free", json={"free_memory": True}) as r:
        assert r.status == 200
    a.frames.clear()
    await run(http, sim.url, a, tiny(4))
    assert a.of("execution_cached")[0]["nodes"] == []
    assert [e["node"] for e in a.of("executing")] == ["1", "2", None]


async def test_only_status_is_broadcast_and_absent_sockets_get_nothing(sim, http):
    a = await connect(http, sim.url)
    observer = await connect(http, sim.url)
    pid = await run(http, sim.url, a, tiny(5))
    _status, body = await post(http, sim.url, tiny(6), client_id="nobody-listens")
    await wait_finished(http, sim.url, body["prompt_id"])
    await asyncio.sleep(0.05)
    assert set(observer.types()) == {"status"}
    assert all(f["data"].get("prompt_id", pid) == pid for f in a.frames)  # nothing of the other prompt
    late = await connect(http, sim.url, client_id="nobody-listens")
    await asyncio.sleep(0.05)
    assert late.types() == ["status"]  # no replay, no buffer


async def test_prompts_without_client_id_follow_trace_c3(http):
    async with Simulator(node_times={"ImageBlur": 0.3}) as sim:
        a, b = await connect(http, sim.url), await connect(http, sim.url, feature_flags=True)
        _, body = await post(http, sim.url, ws_image(7))
        await wait_finished(http, sim.url, body["prompt_id"])
        _, body = await post(http, sim.url, runtime_error(8))
        job = await wait_finished(http, sim.url, body["prompt_id"])
        assert job["status"] == "failed"
        _, body = await post(http, sim.url, chain(9, blurs=2))
        await a.wait_for(lambda f: f.get("type") == "progress_state" and "2" in f["data"]["nodes"])
        async with http.post(sim.url + "/interrupt") as r:
            assert r.status == 200
        await wait_finished(http, sim.url, body["prompt_id"])
        await asyncio.sleep(0.05)
    for sock in (a, b):
        assert set(sock.types()) - {"feature_flags"} == {
            "status",
            "progress_state",
            "progress",
            "binary1",
            "execution_interrupted",
        }
        assert sock.types().count("binary1") == 2  # type 1 even for the negotiating socket
        assert sock.of("execution_interrupted")[0]["node_id"] == "3"


async def test_cached_outputs_missing_from_history_without_client_id(sim, http):
    a = await connect(http, sim.url)
    await run(http, sim.url, a, tiny(10))
    _, body = await post(http, sim.url, tiny(10))
    await wait_finished(http, sim.url, body["prompt_id"])
    _, hist = await get(http, sim.url, f"/history/{body['prompt_id']}")
    assert hist[body["prompt_id"]]["outputs"] == {} and hist[body["prompt_id"]]["meta"] == {}
    pid = await run(http, sim.url, a, tiny(10))
    _, hist = await get(http, sim.url, f"/history/{pid}")
    assert hist[pid]["outputs"]["2"]["images"][0]["filename"] == "tiny_00001_.png"


async def test_runtime_error_then_rerun_fails_again(sim, http):
    a = await connect(http, sim.url)
    prompt = runtime_error(11)
    pid = await run(http, sim.url, a, prompt)
    assert a.types(pid)[-4:] == ["executing", "execution_error", "status", "executing"]
    err = a.of("execution_error")[0]
    assert list(err) == [
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    ]
    assert (err["node_id"], err["node_type"], err["executed"]) == ("2", "ImageToMask", ["1"])
    assert err["exception_type"] == "IndexError"
    assert err["exception_message"] == "index 3 is out of bounds for dimension 3 with size 3\n"
    assert err["current_inputs"]["channel"] == ["alpha"] and err["current_outputs"] == ["1", "2", "3", "4"]
    assert isinstance(err["traceback"], list) and err["traceback"]
    _, hist = await get(http, sim.url, f"/history/{pid}")
    assert hist[pid]["status"]["status_str"] == "error" and hist[pid]["status"]["completed"] is False
    assert hist[pid]["outputs"] == {} and hist[pid]["status"]["messages"][-1][0] == "execution_error"
    a.frames.clear()
    await run(http, sim.url, a, prompt)
    assert a.of("execution_cached")[0]["nodes"] == ["1"]
    assert a.of("execution_error")[0]["node_id"] == "2"


async def test_multi_output_order_follows_comfyui_scheduler(sim, http):
    a = await connect(http, sim.url)
    prompt = {
        "1": tiny(12)["1"],
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "multi_a"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "multi_b"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    await run(http, sim.url, a, prompt)
    order = [e["node"] for e in a.of("executing")][:-1]
    assert order[:3] == ["1", "3", "2"] and sorted(order[3:]) == ["4", "5"]
    batch = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 1}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 2}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "batch"}},
    }
    a.frames.clear()
    await run(http, sim.url, a, batch)
    assert [e["node"] for e in a.of("executing")] == ["2", "1", "3", "4", None]
    assert len(a.of("executed")[0]["output"]["images"]) == 4


async def test_ws_image_frames_type1_after_and_type4_before_progress(sim, http):
    legacy = await connect(http, sim.url)
    modern = await connect(http, sim.url, feature_flags=True)
    assert modern.of("feature_flags")[0] == {
        "supports_preview_metadata": True,
        "max_upload_size": 104857600,
        "extension": {"manager": {"supports_v4": True}},
    }
    await run(http, sim.url, legacy, ws_image(13))
    steps = [t for t in legacy.types() if t in ("progress", "binary1", "progress_state")]
    assert steps[-7:] == [
        "progress_state",
        "progress",
        "binary1",
        "progress_state",
        "progress",
        "binary1",
        "progress_state",
    ]
    assert legacy.frames[next(i for i, f in enumerate(legacy.frames) if "binary" in f)]["payload"][4:8] == b"\0\0\0\2"
    assert "executed" not in legacy.types()
    pid = await run(http, sim.url, modern, ws_image(14))
    steps = [t for t in modern.types() if t in ("progress", "binary4", "progress_state")]
    assert steps[-7:] == [
        "progress_state",
        "binary4",
        "progress",
        "progress_state",
        "binary4",
        "progress",
        "progress_state",
    ]
    frame = next(f for f in modern.frames if "binary" in f)
    assert frame["metadata"] == {
        "node_id": "2",
        "prompt_id": pid,
        "display_node_id": "2",
        "parent_node_id": None,
        "real_node_id": "2",
        "image_type": "image/png",
    }
    image = Image.open(io.BytesIO(frame["payload"][8 + int.from_bytes(frame["payload"][4:8], "big") :]))
    assert image.format == "PNG" and image.size == (8, 8)
    assert "binary4" not in legacy.types() and "binary1" not in modern.types()


async def test_ksampler_progress_and_previews_when_asked(http):
    async with Simulator(step_time=0.001) as sim:
        a = await connect(http, sim.url)
        await run(http, sim.url, a, ksampler(1, steps=3))
        assert [p["value"] for p in a.of("progress")] == [1, 2, 3] and "binary1" not in a.types()
        a.frames.clear()
        await run(http, sim.url, a, ksampler(2, steps=3), extra_data={"preview_method": "latent2rgb"})
        assert a.types().count("binary1") == 3
        frame = next(f for f in a.frames if "binary" in f)
        assert frame["payload"][4:8] == b"\0\0\0\1"
        assert Image.open(io.BytesIO(frame["payload"][8:])).size == (512, 512)
    async with Simulator(preview_method="auto") as sim:
        a = await connect(http, sim.url, feature_flags=True)
        await run(http, sim.url, a, ksampler(3, steps=2))
        assert a.types().count("binary4") == 2
        a.frames.clear()
        await run(http, sim.url, a, ksampler(4, steps=2), extra_data={"preview_method": "none"})
        assert "binary4" not in a.types()


async def test_interrupts_global_targeted_and_between_steps(http):
    async with Simulator(node_times={"ImageBlur": 0.15}, step_time=0.02) as sim:
        a = await connect(http, sim.url)
        _, body = await post(http, sim.url, chain(15), a.client_id)
        pid = body["prompt_id"]
        await a.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "2")
        async with http.post(sim.url + "/interrupt") as r:
            assert r.status == 200 and await r.read() == b""
        await a.wait_done(pid)
        assert a.types(pid)[-6:] == [
            "progress_state",
            "progress_state",
            "executing",
            "execution_interrupted",
            "status",
            "executing",
        ]
        stop = a.of("execution_interrupted")[0]
        assert (stop["node_id"], stop["node_type"], stop["executed"]) == ("3", "ImageBlur", ["1", "2"])
        _, hist = await get(http, sim.url, f"/history/{pid}")
        assert hist[pid]["status"]["status_str"] == "error" and not hist[pid]["status"]["completed"]

        # a targeted interrupt of a pending id is ignored; of the running id it lands
        _, first = await post(http, sim.url, chain(16), a.client_id)
        _, second = await post(http, sim.url, tiny(16), a.client_id)
        async with http.post(sim.url + "/interrupt", json={"prompt_id": second["prompt_id"]}):
            pass
        await asyncio.sleep(0.2)
        async with http.post(sim.url + "/interrupt", json={"prompt_id": first["prompt_id"]}):
            pass
        await a.wait_done(second["prompt_id"])
        _, h1 = await get(http, sim.url, f"/history/{first['prompt_id']}")
        _, h2 = await get(http, sim.url, f"/history/{second['prompt_id']}")
        assert h1[first["prompt_id"]]["status"]["status_str"] == "error"
        assert h2[second["prompt_id"]]["status"]["status_str"] == "success"

        # between sampler steps
        a.frames.clear()
        _, body = await post(http, sim.url, ksampler(5, steps=50), a.client_id)
        await a.wait_for(lambda f: f.get("type") == "progress")
        async with http.post(sim.url + "/interrupt"):
            pass
        await a.wait_done(body["prompt_id"])
        assert a.of("execution_interrupted")[0]["node_id"] == "3"
        assert 0 < len(a.of("progress")) < 50

        # an interrupt while idle is lost: the flag is reset when the next prompt starts
        async with http.post(sim.url + "/interrupt"):
            pass
        a.frames.clear()
        await run(http, sim.url, a, tiny(17))
        assert "execution_success" in a.types()


async def test_reconnect_replays_current_node_without_prompt_id(http):
    async with Simulator(node_times={"ImageBlur": 0.2}) as sim:
        r1 = await connect(http, sim.url, client_id="R")
        _, body = await post(http, sim.url, chain(18), "R")
        pid = body["prompt_id"]
        await r1.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "2")
        await r1.close()
        r2 = await connect(http, sim.url, client_id="R")
        assert r2.types()[:2] == ["status", "executing"]
        assert r2.frames[1]["data"] == {"node": "2"}
        assert r2.frames[0]["data"]["status"]["exec_info"]["queue_remaining"] == 1
        await r2.wait_done(pid)
        assert "execution_start" not in r2.types()  # missed messages are not replayed
        assert [e["node"] for e in r2.of("executing")][1:] == ["3", "4", "5", None]


async def test_overlapping_reconnect_mutes_the_new_socket_like_trace_g3(http):
    async with Simulator(node_times={"ImageBlur": 0.2}) as sim:
        x1 = await connect(http, sim.url, client_id="X")
        _, body = await post(http, sim.url, chain(19), "X")
        await x1.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "2")
        x2 = await connect(http, sim.url, client_id="X")
        assert x2.frames[1]["data"] == {"node": "2"}
        await x1.close()
        await wait_finished(http, sim.url, body["prompt_id"])
        _, other = await post(http, sim.url, tiny(19), "X")
        await wait_finished(http, sim.url, other["prompt_id"])
        await asyncio.sleep(0.05)
        assert x2.types() == ["status", "executing"]  # nothing at all, not even status
        assert not x2.closed.is_set()
