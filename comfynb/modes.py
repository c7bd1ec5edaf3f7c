"""Bypass and mute nodes of an API-format graph, as ComfyUI's frontend does when it queues a prompt.

A sweep that compares "with and without this LoRA" needs the graph itself to change per row. The
frontend's rules: a muted node (mode 2) is dropped together with every input linked to it; a
bypassed node (mode 4) is dropped and each consumer is wired to the bypassed node's input of the
matching type (the input at the output's own index if its type fits, else the first input of
exactly that type, else the first compatible one); with no such input the consumer's input is
dropped. Types come from ``/object_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import WorkflowError

BYPASS, MUTE = "bypass", "mute"
MODES = (BYPASS, MUTE)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _types(info: Mapping) -> dict[str, Any]:
    """Input name -> declared type (a list for combos), in ``input_order``."""
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    out: dict[str, Any] = {}
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        for name in order.get(section) or list(specs):
            if name in specs and isinstance(specs[name], (list, tuple)) and specs[name]:
                out[name] = specs[name][0]
    return out


def _fits(a: Any, b: Any) -> bool:
    if not isinstance(a, str) or not isinstance(b, str):
        return a == b
    if a in ("*", "") or b in ("*", "") or a == b:
        return True
    return bool({t.strip() for t in a.lower().split(",")} & {t.strip() for t in b.lower().split(",")})


def apply_modes(graph: dict[str, dict], modes: Mapping[str, str], object_info: Mapping | None) -> dict[str, dict]:
    """``graph`` (fresh JSON, changed in place and returned) with ``modes`` (node id -> bypass/mute) applied."""
    if not modes:
        return graph
    if object_info is None and BYPASS in modes.values():
        raise WorkflowError(
            "bypassing a node needs the server's /object_info (which input takes its place depends on types): "
            "load the workflow with Workflow.load(source, session=session) or object_info=..."
        )

    def through(nid: str, slot: int, want: Any, seen: frozenset) -> list | None:
        if modes.get(nid) != BYPASS:
            return [nid, slot]
        if nid in seen:
            raise WorkflowError(f"bypassed node {nid} feeds itself; the graph has a cycle")
        node = graph[nid]
        info = (object_info or {}).get(node["class_type"]) or {}
        outputs = info.get("output") or []
        out_type = outputs[slot] if slot < len(outputs) else "*"
        types = _types(info)
        names = list(types) + [n for n in node["inputs"] if n not in types]
        kind = want if want is not None else out_type
        choice = None
        if (
            slot < len(names)
            and _fits(types.get(names[slot], "*"), out_type)
            and _fits(types.get(names[slot], "*"), kind)
        ):
            choice = names[slot]
        if choice is None:
            choice = next((n for n in names if types.get(n) == kind), None)
        if choice is None:
            choice = next(
                (n for n in names if _fits(types.get(n, "*"), out_type) and _fits(types.get(n, "*"), kind)), None
            )
        if choice is None:
            return None
        value = node["inputs"].get(choice)
        if not _is_link(value):
            return None
        return through(value[0], value[1], types.get(choice), seen | {nid})

    out = {nid: node for nid, node in graph.items() if nid not in modes}
    for node in out.values():
        info = (object_info or {}).get(node["class_type"]) or {}
        types = _types(info)
        for name, value in list(node["inputs"].items()):
            if not _is_link(value) or value[0] not in modes:
                continue
            target = through(value[0], value[1], types.get(name), frozenset())
            if target is None or target[0] not in out:
                del node["inputs"][name]
            else:
                node["inputs"][name] = target
    return out


def ui_with_modes(ui: Mapping, modes: Mapping[str, str]) -> dict:
    """A copy of a UI workflow whose top-level nodes show the given modes (2 muted, 4 bypassed)."""
    codes = {MUTE: 2, BYPASS: 4}
    nodes = [
        {**node, "mode": codes[modes[str(node.get("id"))]]} if str(node.get("id")) in modes else node
        for node in ui.get("nodes") or ()
    ]
    return {**ui, "nodes": nodes}
