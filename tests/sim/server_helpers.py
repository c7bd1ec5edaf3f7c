"""Plain-aiohttp client helpers and fixtures for the simulator server tests (no comfynb client code)."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from comfynb.sim import Simulator

WAIT = 5.0


def tiny(color: int = 0, prefix: str = "tiny") -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def chain(color: int = 0, blurs: int = 3) -> dict:
    """EmptyImage -> ImageBlur x blurs -> SaveImage (node ids "1".."blurs+2")."""
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}}}
    for i in range(2, blurs + 2):
        prompt[str(i)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [str(i - 1), 0], "blur_radius": 1, "sigma": 1.0},
        }
    prompt[str(blurs + 2)] = {
        "class_type": "SaveImage",
        "inputs": {"images": [str(blurs + 1), 0], "filename_prefix": "chain"},
    }
    return prompt


def ksampler(seed: int = 1, steps: int = 3) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15_tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ks"}},
    }


def runtime_error(color: int = 0) -> dict:
    """ImageToMask(alpha) on an RGB image: passes validation, fails at node "2" (trace e)."""
    return {
        "1": tiny(color)["1"],
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}},
    }


def ws_image(color: int = 0) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": color}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


class Socket:
    """One WebSocket that records every frame: text as {"type","data"}, binary as {"binary": type, ...}."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, client_id: str):
        self.ws = ws
        self.client_id = client_id
        self.frames: list[dict] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for m in self.ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    self.frames.append(json.loads(m.data))
                elif m.type == aiohttp.WSMsgType.BINARY:
                    event = struct.unpack(">I", m.data[:4])[0]
                    frame: dict[str, Any] = {"binary": event, "payload": m.data}
                    if event == 4:
                        (n,) = struct.unpack(">I", m.data[4:8])
                        frame["metadata"] = json.loads(m.data[8 : 8 + n])
                    self.frames.append(frame)
                self._changed.set()
        finally:
            self.closed.set()
            self._changed.set()

    def types(self, prompt_id: str | None = None) -> list[str]:
        """Message types in order ("binary1"/"binary4" for frames), optionally of one prompt only
        (status frames and frames without prompt_id are kept when filtering)."""
        out = []
        for f in self.frames:
            if "binary" in f:
                out.append(f"binary{f['binary']}")
            elif prompt_id is None or f["data"].get("prompt_id", prompt_id) == prompt_id:
                out.append(f["type"])
        return out

    def of(self, type_: str) -> list[dict]:
        return [f["data"] for f in self.frames if f.get("type") == type_]

    async def wait_for(self, pred: Callable[[dict], bool], timeout: float = WAIT) -> dict:
        async def wait() -> dict:
            while True:
                for f in self.frames:
                    if pred(f):
                        return f
                if self.closed.is_set():
                    raise AssertionError(f"socket closed; got {self.types()}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out; got {self.types()}") from None

    async def wait_done(self, prompt_id: str, timeout: float = WAIT) -> dict:
        return await self.wait_for(
            lambda f: (
                f.get("type") == "executing" and f["data"]["node"] is None and f["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def connect(
    http: aiohttp.ClientSession, url: str, client_id: str | None = None, feature_flags: bool = False, **kwargs: Any
) -> Socket:
    client_id = client_id or uuid.uuid4().hex[:8]
    ws = await http.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0, **kwargs)
    if feature_flags:
        await ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    sock = Socket(ws, client_id)
    await sock.wait_for(lambda f: f.get("type") == "status")
    if feature_flags:
        await sock.wait_for(lambda f: f.get("type") == "feature_flags")
    return sock


async def post(
    http: aiohttp.ClientSession, url: str, prompt: dict | None, client_id: str | None = None, **fields: Any
) -> tuple[int, Any]:
    body: dict[str, Any] = dict(fields)
    if prompt is not None:
        body["prompt"] = prompt
    if client_id is not None:
        body["client_id"] = client_id
    async with http.post(f"{url}/prompt", json=body) as r:
        return r.status, await r.json()


async def get(http: aiohttp.ClientSession, url: str, path: str) -> tuple[int, Any]:
    async with http.get(url + path) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.read())


async def run(http: aiohttp.ClientSession, url: str, sock: Socket, prompt: dict, **fields: Any) -> str:
    """POST with the socket's client_id and wait for the prompt's executing {node: null}."""
    status, body = await post(http, url, prompt, sock.client_id, **fields)
    assert status == 200, body
    await sock.wait_done(body["prompt_id"])
    return body["prompt_id"]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
