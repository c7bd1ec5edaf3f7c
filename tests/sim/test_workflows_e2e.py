"""Every shipped workflow, unchanged, through a running Simulator with a plain aiohttp client."""

from __future__ import annotations

import json
import struct
import uuid

import aiohttp
import pytest

from comfynb.sim import Simulator
from comfynb.sim.images import png_text, read_params
from comfynb.sim.library import load_workflow

# workflow -> {output node: (number of images, type)}
EXPECTED = {
    "tiny": {"2": (1, "output")},
    "tiny_chain": {"5": (1, "output")},
    "slow": {"6": (1, "output")},
    "batch": {"4": (4, "output")},
    "multi_output": {"3": (1, "output"), "4": (1, "output"), "5": (1, "temp")},
    "preview": {"2": (1, "temp")},
    "ws_image": {},
    "ksampler_random": {"9": (1, "output")},
    "default_txt2img": {"9": (1, "output")},
}


async def run_prompt(http, ws, base, prompt, client_id, extra_data=None):
    """POST the prompt, collect this prompt's messages until `executing {node: null}`."""
    prompt_id = str(uuid.uuid4())
    body = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id, "extra_data": extra_data or {}}
    async with http.post(f"{base}/prompt", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["node_errors"] == {}
    messages, frames = [], []
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
            continue
        data = json.loads(msg.data)
        if data["data"].get("prompt_id") != prompt_id:
            continue
        messages.append(data)
        if data["type"] == "executing" and data["data"]["node"] is None:
            break
    async with http.get(f"{base}/history/{prompt_id}") as resp:
        history = (await resp.json())[prompt_id]
    return messages, frames, history


@pytest.fixture
async def sim():
    async with Simulator(
        checkpoints=["random_sd15_tiny.safetensors", "v1-5-pruned-emaonly-fp16.safetensors", "my_own.safetensors"]
    ) as sim:
        yield sim


async def test_every_workflow_runs_unchanged(sim):
    client_id = "e2e-" + uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        for name, expected in EXPECTED.items():
            prompt = load_workflow(name)
            extra = {"preview_method": "latent2rgb"} if "ksampler" in name or "txt2img" in name else None
            messages, frames, history = await run_prompt(http, ws, sim.url, prompt, client_id, extra)
            types = [m["type"] for m in messages]
            assert "execution_success" in types, (name, types)
            assert history["status"]["status_str"] == "success"
            outputs = history["outputs"]
            assert {k: (len(v["images"]), v["images"][0]["type"]) for k, v in outputs.items()} == expected, name
            for _node_id, ui in outputs.items():
                for image in ui["images"]:
                    async with http.get(f"{sim.url}/view", params=image) as resp:
                        assert resp.status == 200 and resp.content_type == "image/png"
                        data = await resp.read()
                    assert json.loads(png_text(data)["prompt"]) == prompt
                    if name in ("ksampler_random", "default_txt2img"):
                        params = read_params(data)
                        assert params["seed"] == prompt["3"]["inputs"]["seed"]
                        assert params["positive"] == prompt["6"]["inputs"]["text"]
            if name == "ws_image":
                assert len(frames) == 2 and all(struct.unpack(">II", f[:8]) == (1, 2) for f in frames)
                assert [m["data"]["value"] for m in messages if m["type"] == "progress"] == [0, 1]
            steps = {"ksampler_random": 3, "default_txt2img": 20}.get(name)
            if steps:
                progress = [m["data"]["value"] for m in messages if m["type"] == "progress"]
                assert progress == list(range(1, steps + 1))
                assert len(frames) == steps and all(struct.unpack(">II", f[:8]) == (1, 1) for f in frames)


async def test_runtime_error_and_rejected_workflows(sim):
    client_id = "e2e-" + uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        messages, _, history = await run_prompt(http, ws, sim.url, load_workflow("runtime_error"), client_id)
        error = next(m["data"] for m in messages if m["type"] == "execution_error")
        assert (error["node_id"], error["node_type"], error["exception_type"], error["exception_message"]) == (
            "2",
            "ImageToMask",
            "IndexError",
            "index 3 is out of bounds for dimension 3 with size 3\n",
        )
        assert error["current_inputs"]["image"][0].startswith("tensor([[[[0., 0., 0.],")
        assert history["status"]["status_str"] == "error" and history["outputs"] == {}
        for name, kind in {
            "bad_validation": "prompt_outputs_failed_validation",
            "bad_node_type": "invalid_prompt",
            "no_outputs": "prompt_no_outputs",
        }.items():
            async with http.post(
                f"{sim.url}/prompt", json={"prompt": load_workflow(name), "client_id": client_id}
            ) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["type"] == kind


async def test_object_info_and_any_listed_checkpoint(sim):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}/object_info/CheckpointLoaderSimple") as resp:
            ckpts = (await resp.json())["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        assert "my_own.safetensors" in ckpts
        async with http.get(f"{sim.url}/object_info") as resp:
            info = await resp.json()
        assert {"KSampler", "SaveImage", "LoadImage", "SaveImageWebsocket"} <= set(info)
        client_id = "e2e-" + uuid.uuid4().hex[:8]
        async with http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
            prompt = load_workflow("default_txt2img")
            prompt["4"]["inputs"]["ckpt_name"] = "my_own.safetensors"
            prompt["3"]["inputs"]["steps"] = 2
            _, _, history = await run_prompt(http, ws, sim.url, prompt, client_id)
        image = history["outputs"]["9"]["images"][0]
        async with http.get(f"{sim.url}/view", params=image) as resp:
            assert read_params(await resp.read())["ckpt_name"] == "my_own.safetensors"
