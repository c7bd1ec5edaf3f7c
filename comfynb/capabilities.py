"""What a server can run, from its ``/object_info``: node classes and the model files each loader offers.

Used by the pool to route a workflow only to servers that have what it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .errors import ComfyError, HTTPStatusError, ProtocolError, Timeout
from .transport import Transport

log = logging.getLogger("comfynb.pool")

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".pkl")


class Capabilities:
    """What one server can run, from ``/object_info``: its node classes, and the options of each
    choice input (a model loader's options are the model files the server has)."""

    def __init__(self, object_info: Mapping[str, Any] | None, *, url: str | None = None):
        """Raises ProtocolError, naming the field, if ``object_info`` does not have ComfyUI's shape."""
        self.any = object_info is None  # unknown: assume it can run anything (the server validates)
        self.error: ComfyError | None = None  # why it is unknown, if /object_info was unreadable
        if object_info is not None and not isinstance(object_info, Mapping):
            raise _shape(url, "/object_info", object_info, "an object {node class: info}")
        self.classes = frozenset(object_info or ())
        self.choices: dict[tuple[str, str], frozenset] = {}
        for cls, info in (object_info or {}).items():
            if not isinstance(info, Mapping):
                raise _shape(url, cls, info, "an object")
            inputs = info.get("input")
            if inputs is not None and not isinstance(inputs, Mapping):
                raise _shape(url, f"{cls}.input", inputs, "an object {required, optional}")
            for section in ("required", "optional"):
                specs = (inputs or {}).get(section)
                if specs is not None and not isinstance(specs, Mapping):
                    raise _shape(url, f"{cls}.input.{section}", specs, "an object {input name: spec}")
                for name, spec in (specs or {}).items():
                    options = _options(spec)
                    if options is not None:
                        self.choices[(cls, name)] = options

    def missing(self, prompt: Mapping[str, Any]) -> list[str]:
        """What ``prompt`` uses that this server lacks: node classes, and model files (a string
        input with a model file's suffix, not among the options the server lists)."""
        if self.any:
            return []
        lacking = []
        for nid, node in prompt.items():
            cls = node.get("class_type")
            if cls not in self.classes:
                lacking.append(f"node class {cls} (node {nid})")
                continue
            for name, value in (node.get("inputs") or {}).items():
                if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                    options = self.choices.get((cls, name))
                    if options is not None and value not in options:
                        lacking.append(f"model {value!r} for {cls}.{name} (node {nid})")
        return lacking


def _shape(url: str | None, field: str, value: Any, expected: str) -> ProtocolError:
    return ProtocolError(
        f"{url or 'the server'} answered /object_info with '{field}' as {type(value).__name__} {value!r:.60}, "
        f"expected {expected}",
        url=url,
    )


def _options(spec: Any) -> frozenset | None:
    """The options of a choice input: ``[[...], {...}]`` or ``["COMBO", {"options": [...]}]``."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return frozenset(o for o in spec[0] if isinstance(o, str))
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return frozenset(o for o in options if isinstance(o, str)) if isinstance(options, list) else None
    return None


async def read_capabilities(transport: Transport) -> Capabilities:
    """A server's capabilities; if ``/object_info`` cannot be read or is malformed, it is assumed
    to have everything (routing degrades for that server only: it validates what it is sent) and
    ``error`` says why."""
    try:
        return Capabilities(await transport.object_info(), url=transport.url)
    except (HTTPStatusError, ProtocolError, Timeout) as exc:
        log.warning("cannot read what %s can run (%s); sending it any workflow", transport.url, exc)
        caps = Capabilities(None)
        caps.error = exc
        return caps
