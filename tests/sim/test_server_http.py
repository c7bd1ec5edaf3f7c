"""HTTP routes of the simulator: shapes, status codes and error bodies of ComfyUI 0.8.0."""

import asyncio
import io
import json

import aiohttp
import pytest
from PIL import Image

from comfynb.sim import Simulator

from .server_helpers import chain, connect, get, post, run, tiny


async def test_post_prompt_bodies_numbers_and_ids(sim, http):
    status, body = await post(http, sim.url, tiny(1))
    assert status == 200 and list(body) == ["prompt_id", "number", "node_errors"]
    assert body["number"] == 0 and body["node_errors"] == {} and len(body["prompt_id"]) == 36
    status, body = await post(http, sim.url, None)
    assert status == 400 and body == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        },
        "node_errors": {},
    }
    status, body = await post(http, sim.url, {"1": {"class_type": "NoSuchNodeXYZ", "inputs": {}}})
    assert status == 400 and body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    status, body = await post(http, sim.url, tiny(2), prompt_id="my-own-id")
    assert (status, body["prompt_id"], body["number"]) == (200, "my-own-id", 3)  # rejections consumed 1, 2
    status, body = await post(http, sim.url, tiny(3), number=-1000)
    assert body["number"] == -1000.0 and isinstance(body["number"], float)
    status, body = await post(http, sim.url, tiny(4), front=True)
    assert body["number"] == -4
    async with http.post(sim.url + "/prompt", data=b"not json") as r:
        assert r.status == 500 and r.content_type == "text/plain"
        assert await r.text() == "500 Internal Server Error\n\nServer got itself in trouble"
    async with http.post(sim.url + "/api/prompt", json={"prompt": tiny(5), "number": "x"}) as r:
        assert r.status == 500


async def test_partial_validation_failure_is_200_with_node_errors(sim, http):
    prompt = {
        **tiny(6),
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}},
    }
    a = await connect(http, sim.url)
    status, body = await post(http, sim.url, prompt, a.client_id)
    assert status == 200 and list(body["node_errors"]) == ["3"]
    await a.wait_done(body["prompt_id"])
    assert [e["node"] for e in a.of("executing")] == ["1", "2", None]


async def test_queue_items_heap_order_and_priorities(http):
    async with Simulator(node_times={"ImageBlur": 0.3}) as sim:
        a = await connect(http, sim.url)
        _, slow = await post(http, sim.url, chain(7, blurs=1), a.client_id)
        await a.wait_for(lambda f: f.get("type") == "executing" and f["data"]["node"] == "2")
        ids = []
        for fields in ({}, {"front": True}, {"number": -1000}):
            _, body = await post(http, sim.url, tiny(len(ids) + 10), a.client_id, **fields)
            ids.append(body["prompt_id"])
        status, queue = await get(http, sim.url, "/queue")
        running, pending = queue["queue_running"], queue["queue_pending"]
        assert status == 200 and [item[1] for item in running] == [slow["prompt_id"]]
        assert all(len(item) == 5 for item in running + pending)
        assert [item[0] for item in pending] == [-1000.0, 1, -2]  # raw heap array, as upstream
        assert pending[0][3]["client_id"] == a.client_id and "create_time" in pending[0][3]
        assert (await get(http, sim.url, "/prompt"))[1] == {"exec_info": {"queue_remaining": 4}}
        for pid in ids:
            await a.wait_done(pid)
        started = [f["data"]["prompt_id"] for f in a.frames if f.get("type") == "execution_start"]
        assert started == [slow["prompt_id"], ids[2], ids[1], ids[0]]


async def test_queue_delete_and_clear(http):
    async with Simulator(node_times={"ImageBlur": 0.3}) as sim:
        a = await connect(http, sim.url)
        _, running = await post(http, sim.url, chain(20, blurs=1), a.client_id)
        await a.wait_for(lambda f: f.get("type") == "executing")
        pending = [(await post(http, sim.url, tiny(21 + i), a.client_id))[1]["prompt_id"] for i in range(3)]
        await a.wait_for(
            lambda f: f.get("type") == "status" and f["data"]["status"]["exec_info"]["queue_remaining"] == 4
        )
        a.frames.clear()
        async with http.post(sim.url + "/queue", json={"delete": [pending[0], running["prompt_id"]]}) as r:
            assert r.status == 200 and await r.read() == b""
        async with http.post(sim.url + "/queue", json={"delete": [pending[1]]}):
            pass
        async with http.post(sim.url + "/queue", json={"delete": [pending[2]]}):  # the last one: two statuses
            pass
        await asyncio.sleep(0.05)
        assert [s["status"]["exec_info"]["queue_remaining"] for s in a.of("status")] == [3, 2, 1, 1]
        await a.wait_done(running["prompt_id"])
        assert (await get(http, sim.url, f"/history/{pending[0]}"))[1] == {}
        for i in range(2):
            await post(http, sim.url, chain(30 + i, blurs=1), a.client_id)
        async with http.post(sim.url + "/api/queue", json={"clear": True}):
            pass
        _, queue = await get(http, sim.url, "/queue")
        assert queue["queue_pending"] == [] and len(queue["queue_running"]) == 1


async def test_history_windows_clear_delete_and_cap(http):
    async with Simulator(max_history=3) as sim:
        a = await connect(http, sim.url)
        ids = [await run(http, sim.url, a, tiny(40 + i)) for i in range(6)]
        _, everything = await get(http, sim.url, "/history")
        assert list(everything) == ids[2:]  # cap 3 holds 4: eviction before insert
        assert list((await get(http, sim.url, "/history?max_items=2"))[1]) == ids[4:]
        assert list((await get(http, sim.url, "/history?max_items=1&offset=0"))[1]) == ids[2:3]
        assert list((await get(http, sim.url, "/api/history?offset=1&max_items=2"))[1]) == ids[3:5]
        assert (await get(http, sim.url, "/history?offset=9"))[1] == {}
        assert (await get(http, sim.url, "/history?max_items=x"))[0] == 500
        assert (await get(http, sim.url, "/history/unknown-id")) == (200, {})
        async with http.post(sim.url + "/history", json={"delete": [ids[2]]}) as r:
            assert r.status == 200
        assert list((await get(http, sim.url, "/history"))[1]) == ids[3:]
        async with http.post(sim.url + "/history", json={"clear": True}):
            pass
        assert (await get(http, sim.url, "/history"))[1] == {}


async def test_duplicate_prompt_id_overwrites_history(sim, http):
    a = await connect(http, sim.url)
    await run(http, sim.url, a, tiny(50), prompt_id="same")
    await run(http, sim.url, a, tiny(51), prompt_id="same")
    _, hist = await get(http, sim.url, "/history/same")
    assert hist["same"]["prompt"][2]["1"]["inputs"]["color"] == 51


async def test_extra_data_and_sensitive_keys(sim, http):
    a = await connect(http, sim.url)
    pid = await run(http, sim.url, a, tiny(52), extra_data={"my_key": "v", "api_key_comfy_org": "secret"})
    _, hist = await get(http, sim.url, f"/history/{pid}")
    extra = hist[pid]["prompt"][3]
    assert list(extra) == ["my_key", "client_id", "create_time"] and "secret" not in json.dumps(hist)


async def test_jobs_api(sim, http):
    a = await connect(http, sim.url)
    ok = await run(http, sim.url, a, tiny(60), extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}})
    bad_prompt = {
        **tiny(61),
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    bad = await run(http, sim.url, a, bad_prompt)
    status, listing = await get(http, sim.url, "/api/jobs?limit=1")
    assert status == 200 and len(listing["jobs"]) == 1
    assert listing["pagination"] == {"offset": 0, "limit": 1, "total": 2, "has_more": True}
    _, listing = await get(http, sim.url, "/api/jobs?status=failed")
    job = listing["jobs"][0]
    assert job["id"] == bad
    assert job["status"] == "failed" and job["execution_error"]["node_id"] == "2" and "workflow_id" not in job
    _, listing = await get(http, sim.url, "/api/jobs?status=completed&sort_order=asc")
    assert [j["id"] for j in listing["jobs"]] == [ok] and listing["jobs"][0]["workflow_id"] == "wf-1"
    assert (await get(http, sim.url, "/api/jobs?workflow_id=wf-1"))[1]["pagination"]["total"] == 1
    status, full = await get(http, sim.url, f"/api/jobs/{ok}")
    assert status == 200 and set(full) >= {"outputs", "execution_status", "workflow", "preview_output"}
    assert full["preview_output"]["nodeId"] == "2" and full["preview_output"]["mediaType"] == "images"
    assert full["outputs_count"] == 1
    assert (await get(http, sim.url, "/api/jobs/nope")) == (404, {"error": "Job not found"})
    for query in ("status=weird", "sort_by=name", "sort_order=up", "limit=0", "limit=x", "offset=x"):
        status, body = await get(http, sim.url, f"/api/jobs?{query}")
        assert status == 400 and list(body) == ["error"], query
    assert (await get(http, sim.url, "/api/jobs?offset=-3"))[1]["pagination"]["offset"] == 0
    assert (await get(http, sim.url, "/jobs"))[0] == 404  # only under /api


async def test_jobs_pending_and_running_and_old_servers(http):
    async with Simulator(node_times={"ImageBlur": 0.3}) as sim:
        _, running = await post(http, sim.url, chain(70, blurs=1))
        _, pending = await post(http, sim.url, tiny(71))
        await asyncio.sleep(0.05)
        assert (await get(http, sim.url, f"/api/jobs/{running['prompt_id']}"))[1]["status"] == "in_progress"
        job = (await get(http, sim.url, f"/api/jobs/{pending['prompt_id']}"))[1]
        assert job == {
            "id": pending["prompt_id"],
            "status": "pending",
            "priority": 1,
            "create_time": job["create_time"],
            "outputs_count": 0,
        }
        statuses = [j["status"] for j in (await get(http, sim.url, "/api/jobs"))[1]["jobs"]]
        assert sorted(statuses) == ["in_progress", "pending"]
    async with Simulator(jobs_api=False) as sim:
        assert (await get(http, sim.url, "/api/jobs"))[0] == 404


async def test_view_route(sim, http):
    a = await connect(http, sim.url)
    pid = await run(http, sim.url, a, tiny(80, prefix="sub/pic"))
    image = a.of("executed")[0]["output"]["images"][0]
    assert image == {"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"}
    async with http.get(
        sim.url + "/view", params={"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"}
    ) as r:
        assert r.status == 200 and r.content_type == "image/png"
        assert r.headers["Content-Disposition"] == 'filename="pic_00001_.png"'
        png = Image.open(io.BytesIO(await r.read()))
        assert png.size == (8, 8) and "prompt" in png.text
    async with http.get(
        sim.url + "/api/view", params={"filename": "pic_00001_.png [output]", "type": "temp", "subfolder": "sub"}
    ) as r:
        assert r.status == 200
    cases = [
        ({"filename": "nope.png"}, 404),
        ({}, 404),
        ({"filename": "../../etc/passwd"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": ""}, 400),
        ({"filename": "pic_00001_.png", "type": "weird"}, 400),
        ({"filename": "pic_00001_.png", "subfolder": "../../.."}, 403),
    ]
    for params, status in cases:
        async with http.get(sim.url + "/view", params=params) as r:
            assert r.status == status, params
    async with http.get(
        sim.url + "/view", params={"filename": "pic_00001_.png", "subfolder": "sub", "preview": "jpeg;50"}
    ) as r:
        assert r.content_type == "image/jpeg" and Image.open(io.BytesIO(await r.read())).format == "JPEG"
    async with http.get(
        sim.url + "/view", params={"filename": "pic_00001_.png", "subfolder": "sub", "channel": "a"}
    ) as r:
        assert Image.open(io.BytesIO(await r.read())).mode == "RGBA"
    async with http.get(
        sim.url + "/view", params={"filename": "pic_00001_.png", "subfolder": "sub", "channel": "rgb"}
    ) as r:
        assert Image.open(io.BytesIO(await r.read())).mode == "RGB"
    assert pid


def _png(color: tuple) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), color).save(buf, "PNG")
    return buf.getvalue()


async def _upload(http, url, data: bytes, name: str = "cat.png", route: str = "/upload/image", **fields):
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(url + route, data=form) as r:
        return r.status, (await r.json() if r.status == 200 else None)


async def test_upload_name_clash_rules_and_load_image(sim, http):
    red, blue = _png((255, 0, 0, 255)), _png((0, 0, 255, 255))
    assert await _upload(http, sim.url, red) == (200, {"name": "cat.png", "subfolder": "", "type": "input"})
    assert (await _upload(http, sim.url, red))[1]["name"] == "cat.png"  # same content
    assert (await _upload(http, sim.url, blue))[1]["name"] == "cat (1).png"  # different
    assert (await _upload(http, sim.url, blue))[1]["name"] == "cat (1).png"
    assert (await _upload(http, sim.url, blue, overwrite="true"))[1]["name"] == "cat.png"
    assert (sim.root / "input" / "cat.png").read_bytes() == blue
    assert await _upload(http, sim.url, red, subfolder="a/b", type="temp") == (
        200,
        {"name": "cat.png", "subfolder": "a/b", "type": "temp"},
    )
    assert (await _upload(http, sim.url, red, subfolder="../..", type="input"))[0] == 400
    assert (await _upload(http, sim.url, red, type="weird"))[0] == 500
    async with http.post(sim.url + "/upload/image", data=aiohttp.FormData({"x": "1"})) as r:
        assert r.status == 400
    a = await connect(http, sim.url)
    await run(
        http,
        sim.url,
        a,
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "cat (1).png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "up"}},
        },
    )
    assert a.of("executed")[0]["output"]["images"][0]["filename"] == "up_00001_.png"


async def test_upload_mask_applies_alpha_to_the_original(sim, http):
    await _upload(http, sim.url, _png((255, 0, 0, 255)), name="orig.png", type="input")
    status, body = await _upload(
        http,
        sim.url,
        _png((0, 0, 0, 0)),
        name="masked.png",
        route="/upload/mask",
        original_ref=json.dumps({"filename": "orig.png", "type": "input"}),
    )
    assert status == 200 and body["name"] == "masked.png"
    out = Image.open(sim.root / "input" / "masked.png")
    assert out.mode == "RGBA" and out.getpixel((0, 0)) == (255, 0, 0, 0)
    assert (await _upload(http, sim.url, _png((1, 2, 3, 4)), name="m2.png", route="/upload/mask"))[0] == 500


async def test_server_description_routes(sim, http):
    status, info = await get(http, sim.url, "/object_info")
    assert status == 200 and {"KSampler", "SaveImage", "EmptyImage", "LoadImage"} <= set(info)
    assert info["SaveImage"]["output_node"] is True
    assert (await get(http, sim.url, "/api/object_info/KSampler"))[1] == {"KSampler": info["KSampler"]}
    assert (await get(http, sim.url, "/object_info/Nope")) == (200, {})
    _, stats = await get(http, sim.url, "/system_stats")
    assert set(stats["system"]) == {
        "os",
        "ram_total",
        "ram_free",
        "comfyui_version",
        "required_frontend_version",
        "installed_templates_version",
        "required_templates_version",
        "python_version",
        "pytorch_version",
        "embedded_python",
        "argv",
    }
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert set(stats["devices"][0]) == {
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    }
    assert (await get(http, sim.url, "/features"))[1]["supports_preview_metadata"] is True
    assert (await get(http, sim.url, "/embeddings")) == (200, [])
    assert "checkpoints" in (await get(http, sim.url, "/models"))[1]
    assert "random_sd15_tiny.safetensors" in (await get(http, sim.url, "/api/models/checkpoints"))[1]
    assert (await get(http, sim.url, "/models/nope"))[0] == 404


@pytest.mark.parametrize("path", ["/prompt", "/queue", "/history", "/system_stats", "/features", "/object_info"])
async def test_api_aliases(sim, http, path):
    bare, aliased = await get(http, sim.url, path), await get(http, sim.url, "/api" + path)
    assert bare[0] == aliased[0] == 200
