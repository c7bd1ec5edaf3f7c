"""What a server can run, from its ``/object_info``: node classes and the model files each loader offers.

Used by the pool to route a workflow only to servers that have what it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .errors import HTTPStatusError, ProtocolError, Timeout
from .transport import Transport

log = logging.getLogger("comfynb.pool")

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".pkl")


class Capabilities:
    """What one server can run, from ``/object_info``: its node classes, and the options of each
    choice input (a model loader's options are the model files the server has)."""

    def __init__(self, object_info: Mapping[str, Any] | None):
        self.any = object_info is None  # unknown: assume it can run anything (the server validates)
        self.classes = frozenset(object_info or ())
        self.choices: dict[tuple[str, str], frozenset] = {}
        for cls, info in (object_info or {}).items():
            inputs = info.get("input") if isinstance(info, dict) else None
            for section in ("required", "optional"):
                for name, spec in ((inputs or {}).get(section) or {}).items():
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


def _options(spec: Any) -> frozenset | None:
    """The options of a choice input: ``[[...], {...}]`` or ``["COMBO", {"options": [...]}]``."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return frozenset(o for o in spec[0] if isinstance(o, str))
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return frozenset(o for o in spec[1].get("options") or () if isinstance(o, str))
    return None


async def read_capabilities(transport: Transport) -> Capabilities:
    """A server's capabilities; if ``/object_info`` cannot be read, it is assumed to have everything."""
    try:
        return Capabilities(await transport.object_info())
    except (HTTPStatusError, ProtocolError, Timeout) as exc:
        log.warning("cannot read what %s can run (%s); sending it any workflow", transport.url, exc)
        return Capabilities(None)
