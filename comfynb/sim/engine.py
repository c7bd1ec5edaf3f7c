"""The prompt queue, history and the single worker that executes prompts like ComfyUI 0.8.0.

What a client can observe is reproduced, not just the outcome: queue numbering and heap order,
the exact message sequence of one prompt (including both ``status`` messages, ``progress_state``
snapshots and ``executed`` re-sent for cached output nodes), caching by input signature, the
rules for prompts without ``client_id``, interrupts at node boundaries and between steps, and
history written after the terminal event but before the final ``status`` and ``executing null``.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import json
import logging
import struct
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import ImageOps

from .files import Files
from .hub import Hub
from .ledger import Ledger
from .nodes import Interrupted, NodeClass
from .schedule import DependencyCycleError, ExecutionList, is_link
from .validation import validate_prompt

log = logging.getLogger("comfynb.sim")

SENSITIVE_KEYS = ("api_key_comfy_org", "auth_token_comfy_org")
PREVIEW_SIZE = 512  # ComfyUI's --preview-size: latent previews are scaled to fit it


def now_ms() -> int:
    return int(time.time() * 1000)


def _error(type_: str, message: str, details: str) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": {}}


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _formatted(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, bool, str)) else str(value)


@dataclass
class Settings:
    node_time: float = 0.0
    step_time: float = 0.0
    node_times: dict[str, float] = field(default_factory=dict)
    preview_method: str | None = None
    max_history: int = 10000

    def node_seconds(self, class_type: str) -> float:
        return self.node_times.get(class_type, self.node_time)


class _Stop(Exception):
    """Ends a prompt early: the terminal message has been recorded already."""


class Engine:
    """Queue, history, cache and worker of one simulated server lifetime."""

    def __init__(
        self, nodes: dict[str, NodeClass], hub: Hub, files: Files, settings: Settings, ledger: Ledger | None = None
    ):
        self.ledger = ledger if ledger is not None else Ledger()
        self.nodes = nodes
        self.hub = hub
        self.files = files
        self.settings = settings
        self.counter = 0
        self.pending: list[tuple] = []  # heap of (number, prompt_id, seq, item)
        self.running: tuple | None = None
        self.history: dict[str, dict] = {}
        self.cache: dict[Any, tuple] = {}  # signature -> (outputs, ui or None)
        self.interrupted = False
        self.run: _Run | None = None
        self._free_memory = False
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.declared_inputs = {
            name: set(nc.info.get("input", {}).get("required", {})) | set(nc.info.get("input", {}).get("optional", {}))
            for name, nc in nodes.items()
        }

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    def abandon(self) -> None:
        """Stop executing at once (a restart): the worker is cancelled wherever it is."""
        if self._worker is not None:
            self._worker.cancel()

    async def stop(self) -> None:
        if self._worker is not None:
            self.abandon()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    # -- queue ---------------------------------------------------------------------------------

    def remaining(self) -> int:
        return len(self.pending) + (self.running is not None)

    def status_data(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": self.remaining()}}}

    def broadcast_status(self) -> None:
        self.hub.send("status", self.status_data(), None)

    def queue_items(self) -> tuple[list, list]:
        """(running, pending) as 5-element items; pending in raw heap order, like ComfyUI."""
        running = [self.running[:5]] if self.running is not None else []
        return running, [entry[3][:5] for entry in self.pending]

    def submit(self, body: dict) -> tuple[int, dict]:
        """POST /prompt: (HTTP status, JSON body). Numbers are consumed even by rejected prompts."""
        if "number" in body:
            number: float | int = float(body["number"])
        else:
            number = self.counter
            if body.get("front"):
                number = -number
            self.counter += 1
        if "prompt" not in body:
            return 400, {"error": _error("no_prompt", "No prompt provided", "No prompt provided"), "node_errors": {}}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid, error, outputs, node_errors = validate_prompt(prompt, self.nodes, body.get("partial_execution_targets"))
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not valid:
            return 400, {"error": error, "node_errors": node_errors}
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
        extra_data["create_time"] = now_ms()
        item = (number, prompt_id, prompt, extra_data, outputs, sensitive)
        heapq.heappush(self.pending, (number, prompt_id, next(self._seq), item))
        self.hub.faults.accepted(prompt_id)
        self.ledger.queued(prompt_id)
        self._wake.set()
        self.broadcast_status()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    def delete(self, prompt_ids: list) -> None:
        for prompt_id in prompt_ids:
            for i, entry in enumerate(self.pending):
                if entry[1] == prompt_id:
                    if len(self.pending) == 1:
                        self.clear_queue()
                    else:
                        self.ledger.dequeued(prompt_id)
                        self.pending.pop(i)
                        heapq.heapify(self.pending)
                    self.broadcast_status()
                    break

    def clear_queue(self) -> None:
        for entry in self.pending:
            self.ledger.dequeued(entry[1])
        self.pending = []
        self.broadcast_status()

    def interrupt(self, prompt_id: Any = None) -> None:
        """Global when no id is given; otherwise only if that id is the running prompt."""
        if not prompt_id or (self.running is not None and self.running[1] == prompt_id):
            self.interrupted = True

    def free(self, free_memory: bool) -> None:
        """POST /free: drop the cache now when idle, else after the running prompt."""
        if free_memory:
            self._free_memory = True
            if self.running is None:
                self._apply_free()

    def _apply_free(self) -> None:
        if self._free_memory:
            self.cache.clear()
            self._free_memory = False

    def replay_node(self, sid: str) -> str | None:
        """The node to announce to a (re)connecting socket that owns the running prompt."""
        run = self.run
        return run.current_node if run is not None and run.client_id == sid else None

    # -- history -------------------------------------------------------------------------------

    def history_window(self, max_items: int | None, offset: int, late: Callable[[str], bool] | None = None) -> dict:
        """GET /history with ComfyUI's max_items/offset arithmetic (quirks included); entries for
        which ``late`` says so are not written yet."""
        out: dict = {}
        history = self.history if late is None else {k: v for k, v in self.history.items() if not late(k)}
        if offset < 0 and max_items is not None:
            offset = len(history) - max_items
        for i, key in enumerate(history):
            if i >= offset:
                out[key] = history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def _record(self, run: _Run) -> None:
        if len(self.history) > self.settings.max_history:
            self.history.pop(next(iter(self.history)))
        self.history[run.prompt_id] = {
            "prompt": run.item[:5],
            "outputs": run.outputs,
            "status": {
                "status_str": "success" if run.success else "error",
                "completed": run.success,
                "messages": run.messages,
            },
            "meta": run.meta,
        }

    # -- worker --------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = heapq.heappop(self.pending)[3]
            self.running = item
            self.broadcast_status()
            self.run = run = _Run(self, item)
            record = self.ledger.start(run.prompt_id, run.run_id, run.client_id)
            try:
                await run.execute()
            except Exception:  # a simulator bug must not stop the queue
                log.exception("simulator failed while executing prompt %s", run.prompt_id)
                run.success = False
            self.run = None
            record.files = [
                item["filename"]
                for ui in run.outputs.values()
                for item in ui.get("images", ())
                if isinstance(item, dict)
            ]
            self.ledger.end(record, "success" if run.success else run.failure)
            self._record(run)
            self.running = None
            self.broadcast_status()
            if run.client_id is not None:
                self.hub.send(
                    "executing", {"node": None, "prompt_id": run.prompt_id}, run.client_id, kind="executing_done"
                )
            self._apply_free()
            await asyncio.sleep(0)  # let sockets and HTTP breathe between prompts

    def signatures(self, prompt: dict) -> dict[str, Any]:
        """Cache keys: class, inputs (links replaced by the source's own signature) and, for
        nodes that have one, the IS_CHANGED value (LoadImage: the file's hash)."""
        memo: dict[str, Any] = {}

        def sig(nid: str) -> Any:
            if nid in memo:
                return memo[nid] if memo[nid] is not None else ("cycle", nid)
            memo[nid] = None
            node = prompt[nid]
            inputs = node.get("inputs", {})
            changed = self.nodes[node["class_type"]].is_changed
            items: list = (
                []
                if changed is None
                else [("<is_changed>", _freeze(changed({k: v for k, v in inputs.items() if not is_link(v)})))]
            )
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value) and value[0] in prompt:
                    items.append((name, (sig(value[0]), value[1])))
                else:
                    items.append((name, _freeze(value)))
            memo[nid] = (node["class_type"], tuple(items))
            return memo[nid]

        return {nid: sig(nid) for nid in prompt}


class _Run:
    """One prompt's execution: its messages, progress registry and outputs."""

    def __init__(self, engine: Engine, item: tuple):
        self.engine = engine
        self.hub = engine.hub
        self.item = item
        self.prompt_id: str = item[1]
        self.prompt: dict = item[2]
        self.extra_data: dict = item[3]
        self.client_id: str | None = self.extra_data.get("client_id")
        self.messages: list = []
        self.states: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.meta: dict[str, dict] = {}
        self.executed: list[str] = []
        self.success = True
        self.failure = "error"  # or "interrupted": how it ended when not a success
        self.run_id = uuid.uuid4().hex  # names this execution in the files it saves (ledger.RUN_CHUNK)
        self.current_node: str | None = None
        self.sigs: dict[str, Any] = {}
        self._staged: tuple | None = None
        method = self.extra_data.get("preview_method")
        if method in (None, "default"):
            method = engine.settings.preview_method
        self.previews = method not in (None, "none")

    # -- emission ------------------------------------------------------------------------------

    def message(self, event: str, data: dict, broadcast: bool = False) -> None:
        """A status message: recorded in history; sent to the client, or to all if broadcast."""
        data["timestamp"] = now_ms()
        self.messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.hub.send(event, data, self.client_id)

    def targeted(self, event: str, data: dict) -> None:
        """Sent to the client only; nobody hears it when the prompt has no client_id."""
        if self.client_id is not None:
            self.hub.send(event, data, self.client_id)

    def node_state(self, nid: str, value: Any, max_: Any, state: str) -> None:
        self.states[nid] = {
            "value": value,
            "max": max_,
            "state": state,
            "node_id": nid,
            "prompt_id": self.prompt_id,
            "display_node_id": nid,
            "parent_node_id": None,
            "real_node_id": nid,
        }
        self.hub.send("progress_state", {"prompt_id": self.prompt_id, "nodes": self.states}, self.client_id)

    def finish_state(self, nid: str) -> None:
        entry = self.states.get(nid)
        done = entry["max"] if entry else 1
        self.node_state(nid, done, done, "finished")

    def report_progress(self, nid: str, value: Any, max_: Any, preview: Any) -> None:
        """``progress_state`` + ``progress``, with the staged or preview image placed like ComfyUI:
        a type-4 frame before the ``progress`` message, a type-1 frame after it."""
        self.node_state(nid, value, max_, "running")
        data = {"value": value, "max": max_, "prompt_id": self.prompt_id, "node": nid}
        staged, self._staged = self._staged, None
        image: tuple[Any, str] | None = staged[1:] if staged else ((preview, "JPEG") if preview is not None else None)
        if image is None:
            self.hub.send("progress", data, self.client_id)
        elif self.hub.wants_metadata(self.client_id):
            self._send_frame(nid, *image, metadata=True)
            self.hub.send("progress", data, self.client_id)
        else:
            self.hub.send("progress", data, self.client_id)
            self._send_frame(nid, *image, metadata=False)

    def stage_image(self, nid: str, image: Any, fmt: str) -> None:
        """Attach an image to the node's next progress report (sent alone if none follows)."""
        self.flush_staged()
        self._staged = (nid, image, fmt)

    def flush_staged(self) -> None:
        if self._staged is not None:
            (nid, image, fmt), self._staged = self._staged, None
            self._send_frame(nid, image, fmt, metadata=self.hub.wants_metadata(self.client_id))

    def _send_frame(self, nid: str, image: Any, fmt: str, metadata: bool) -> None:
        if not self.hub.has(self.client_id):
            return
        if fmt == "JPEG":
            image = ImageOps.contain(image.convert("RGB"), (PREVIEW_SIZE, PREVIEW_SIZE))
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=95, compress_level=1)
        if metadata:
            meta = json.dumps(
                {
                    "node_id": nid,
                    "prompt_id": self.prompt_id,
                    "display_node_id": nid,
                    "parent_node_id": None,
                    "real_node_id": nid,
                    "image_type": "image/png" if fmt == "PNG" else "image/jpeg",
                }
            ).encode()
            self.hub.send_binary(4, struct.pack(">I", len(meta)) + meta + buf.getvalue(), self.client_id)
        else:
            self.hub.send_binary(1, struct.pack(">I", 2 if fmt == "PNG" else 1) + buf.getvalue(), self.client_id)

    # -- execution -----------------------------------------------------------------------------

    async def execute(self) -> None:
        engine, pid = self.engine, self.prompt_id
        engine.interrupted = False
        self.message("execution_start", {"prompt_id": pid})
        self.sigs = sigs = engine.signatures(self.prompt)
        engine.cache = {s: engine.cache[s] for s in sigs.values() if s in engine.cache}
        self.message(
            "execution_cached", {"nodes": [n for n in self.prompt if sigs[n] in engine.cache], "prompt_id": pid}
        )
        order = ExecutionList(self.prompt, self._is_output, lambda n: sigs[n] in engine.cache)
        for nid in self.item[4]:
            order.add_node(nid)
        try:
            while True:
                try:
                    nid = order.next()
                except DependencyCycleError as exc:
                    self._fail(next(iter(order.pending)), exc, {})
                if nid is None:
                    break
                if sigs[nid] in engine.cache:
                    self._replay_cached(nid, engine.cache[sigs[nid]][1])
                else:
                    await self._run_node(nid, sigs[nid])
                order.complete(nid)
            self.message("execution_success", {"prompt_id": pid})
        except _Stop:
            self.success = False
        self.current_node = None

    def _is_output(self, nid: str) -> bool:
        return self.engine.nodes[self.prompt[nid]["class_type"]].output_node

    def _record_ui(self, nid: str, ui: dict) -> None:
        self.outputs[nid] = ui
        self.meta[nid] = {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}

    def _replay_cached(self, nid: str, ui: dict | None) -> None:
        if self.client_id is not None:
            self.targeted("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": self.prompt_id})
            if ui:
                self._record_ui(nid, ui)
        self.finish_state(nid)

    async def _run_node(self, nid: str, sig: Any) -> None:
        engine = self.engine
        class_type = self.prompt[nid]["class_type"]
        self.node_state(nid, 0.0, 1.0, "running")
        if self.client_id is not None:
            self.current_node = nid
            self.targeted("executing", {"node": nid, "display_node": nid, "prompt_id": self.prompt_id})
        if engine.interrupted:
            self._interrupted(nid)
        inputs: dict = {}
        try:
            inputs = self._inputs(nid, class_type)
            result = await engine.nodes[class_type].run(Context(self, nid, class_type), inputs)
            outputs, ui = tuple(result.outputs), result.ui or None
        except Interrupted:
            self._staged = None
            self._interrupted(nid)
        except Exception as exc:
            self._staged = None
            self._fail(nid, exc, inputs)
        self.flush_staged()
        engine.cache[sig] = (outputs, ui)
        if ui:
            self.targeted("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": self.prompt_id})
            self._record_ui(nid, ui)
        self.finish_state(nid)
        self.executed.append(nid)

    def _inputs(self, nid: str, class_type: str) -> dict:
        declared = self.engine.declared_inputs[class_type]
        cache, out = self.engine.cache, {}
        for name, value in self.prompt[nid].get("inputs", {}).items():
            if name not in declared:
                continue
            if is_link(value):
                out[name] = cache[self.sigs[value[0]]][0][int(value[1])]
            elif isinstance(value, dict) and "__value__" in value:
                out[name] = value["__value__"]
            else:
                out[name] = value
        return out

    def _interrupted(self, nid: str) -> None:
        self.failure = "interrupted"
        self.message(
            "execution_interrupted",
            {
                "prompt_id": self.prompt_id,
                "node_id": nid,
                "node_type": self.prompt[nid]["class_type"],
                "executed": list(self.executed),
            },
            broadcast=True,
        )
        raise _Stop

    def _fail(self, nid: str, exc: BaseException, inputs: dict) -> None:
        self.message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": nid,
                "node_type": self.prompt[nid]["class_type"],
                "executed": list(self.executed),
                "exception_message": f"{exc}\n",
                "exception_type": _type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
                "current_inputs": {k: [_formatted(v)] for k, v in inputs.items()},
                "current_outputs": list(self.prompt),
            },
        )
        raise _Stop


class Context:
    """What a node sees while it runs (the ExecContext of the nodes contract)."""

    __slots__ = (
        "_run",
        "class_type",
        "extra_data",
        "input_dir",
        "node_id",
        "output_dir",
        "prompt",
        "prompt_id",
        "run_id",
        "sensitive",
        "temp_dir",
    )

    def __init__(self, run: _Run, node_id: str, class_type: str):
        self._run = run
        self.prompt_id = run.prompt_id
        self.run_id = run.run_id
        self.node_id = node_id
        self.class_type = class_type
        self.extra_data = run.extra_data
        self.sensitive = run.item[5] if len(run.item) > 5 else {}  # api_key_comfy_org: for API nodes only
        self.prompt = run.prompt
        dirs = run.engine.files.dirs
        self.input_dir: Path = dirs["input"]
        self.output_dir: Path = dirs["output"]
        self.temp_dir: Path = dirs["temp"]

    async def work(self, seconds: float | None = None) -> None:
        """Simulated node work: the configured per-node time (or ``seconds``); no interrupt check."""
        if seconds is None:
            seconds = self._run.engine.settings.node_seconds(self.class_type)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def progress(self, value: int, max: int, preview: Any = None) -> None:
        """One sampler step: per-step time, interrupt check, ``progress_state`` + ``progress``
        (+ preview when the prompt asked for previews)."""
        run = self._run
        if run.engine.settings.step_time > 0:
            await asyncio.sleep(run.engine.settings.step_time)
        if run.engine.interrupted:
            raise Interrupted()
        run.report_progress(self.node_id, value, max, preview if run.previews else None)

    async def send_image(self, image: Any, fmt: str = "PNG") -> None:
        """SaveImageWebsocket: an image through the preview channel, whatever preview_method says,
        attached to this node's next ``progress`` call (as ComfyUI's progress-bar hook sends it)."""
        self._run.stage_image(self.node_id, image, fmt)

    def save_image(
        self, image: Any, filename_prefix: str, type: str = "output", text: dict[str, str] | None = None
    ) -> dict:
        return self._run.engine.files.save_image(image, filename_prefix, type, text)

    def reserve(
        self, filename_prefix: str, type: str, ext: str, size: tuple[int, int] = (0, 0), sep: str = "_"
    ) -> tuple[Path, str]:
        """A fresh output path for a file of another kind than PNG, and its subfolder."""
        return self._run.engine.files.reserve(filename_prefix, type, ext, size, sep)

    def resolve_input(self, name: str) -> Path:
        return self._run.engine.files.resolve_input(name)
