"""What the socket shows of ``SaveImageWebsocket`` nodes: their frames, and whether each node was
seen from start to finish on one connection (see :mod:`comfynb.wsoutputs` for what follows).

The tracker feeds every event and preview of a prompt of ours here (``observe``, ``take``); the
state lives on the prompt (``state.ws``). Kept free of client imports, below the tracker.
"""

from __future__ import annotations

from typing import Any

WS_CLASSES = frozenset({"SaveImageWebsocket"})


class Capture:
    """What one run of a prompt sent over the socket for its WebSocket output nodes."""

    __slots__ = ("done", "frames", "nodes", "started")

    def __init__(self, nodes: frozenset[str]):
        self.nodes = nodes  # the prompt's SaveImageWebsocket node ids
        self.started: dict[str, int] = {}  # node -> socket epoch in which it started
        self.done: set[str] = set()  # nodes seen from start to finish on one socket
        self.frames: list[tuple[str, bytes, str]] = []  # (node, image bytes, mime), in arrival order


def ws_nodes(prompt: Any) -> frozenset[str]:
    """Ids of the nodes whose outputs travel only over the WebSocket."""
    if not isinstance(prompt, dict):
        return frozenset()
    return frozenset(
        str(nid) for nid, node in prompt.items() if isinstance(node, dict) and node.get("class_type") in WS_CLASSES
    )


def capture_of(state: Any) -> Capture | None:
    if state.ws is None:
        if state.body is None:
            return None
        state.ws = Capture(ws_nodes(state.body.get("prompt")))
    return state.ws if state.ws.nodes else None


def observe(state: Any, event: Any, epoch: int) -> None:
    """Follow the start and end of WebSocket output nodes (tracker hook, for every event of ours)."""
    capture = capture_of(state)
    if capture is None:
        return
    data = event.data
    if event.type == "executing":
        node = data.get("node")
        for other, started in list(capture.started.items()):
            if other != node and other not in capture.done and started == epoch:
                capture.done.add(other)  # the next node starts: the previous one has finished
        if node in capture.nodes and node not in capture.started:
            capture.started[node] = epoch
    elif event.type == "progress_state":
        nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        for node, info in nodes.items():
            finished = isinstance(info, dict) and info.get("state") == "finished"
            if finished and capture.started.get(node) == epoch:
                capture.done.add(node)
    elif event.type in ("executed", "execution_success"):
        node = data.get("node")
        for other, started in capture.started.items():
            if started == epoch and (other == node or event.type == "execution_success"):
                capture.done.add(other)


def take(state: Any, preview: Any, running_node: str | None) -> bool:
    """Keep a frame if it is a WebSocket output (tracker hook, for every preview of ours)."""
    capture = capture_of(state)
    if capture is None:
        return False
    node = preview.node_id or running_node
    if node not in capture.nodes:
        return False
    capture.frames.append((node, preview.image, preview.mime))
    return True
