"""Outputs that exist only on the WebSocket: the images of ``SaveImageWebsocket`` nodes.

Such a node sends full-size PNGs through the preview channel and writes nothing to history, so
after a dropped socket its images cannot be recovered from the server. Each frame is kept in
order with its prompt and node (type-4 frames name both; a type-1 frame belongs to the node our
socket saw running). A node counts as received only when our socket saw it start and finish
without reconnecting in between; otherwise the result says which outputs may be missing, and the
session's ``on_missing_outputs`` decides: run the prompt again (``"rerun"``, counted in
``attempts``), raise :class:`~comfynb.errors.OutputsMissing` (``"raise"``), or keep the result
as it is with ``result.missing`` filled (``"keep"``).

The tracker, server and pool call in here through small hooks (``observe``, ``take``, ``attach``,
``settle_missing``); all of it runs on the private loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import OutputsMissing
from .results import FileRef, Result

if TYPE_CHECKING:
    from .tracker import PromptState

WS_CLASSES = frozenset({"SaveImageWebsocket"})
POLICIES = ("rerun", "raise", "keep")
_MISSING = (
    "our WebSocket was not connected for the whole time this node ran, so some of its images may not have "
    "reached us (the server keeps none)"
)
_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


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


def _capture(state: PromptState) -> Capture | None:
    if state.ws is None:
        if state.body is None:
            return None
        state.ws = Capture(ws_nodes(state.body.get("prompt")))
    return state.ws if state.ws.nodes else None


def observe(state: PromptState, event: Any, epoch: int) -> None:
    """Follow the start and end of WebSocket output nodes (tracker hook, for every event of ours)."""
    capture = _capture(state)
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


def take(state: PromptState, preview: Any, running_node: str | None) -> bool:
    """Keep a frame if it is a WebSocket output (tracker hook, for every preview of ours)."""
    capture = _capture(state)
    if capture is None:
        return False
    node = preview.node_id or running_node
    if node not in capture.nodes:
        return False
    capture.frames.append((node, preview.image, preview.mime))
    return True


def attach(result: Result, state: PromptState, server: str) -> Result:
    """The result with its WebSocket images (in arrival order) and what may be missing. A job
    this process did not follow (adopted by ``resume``) saw none of them: all are in doubt."""
    capture = state.ws if state.ws is not None else _capture(state)
    if capture is None:
        prompt = result.history.get("prompt") if isinstance(result.history, dict) else None
        graph = prompt[2] if isinstance(prompt, list) and len(prompt) > 2 else None
        capture = Capture(ws_nodes(graph))
    if not capture.nodes:
        return result
    counts: dict[str, int] = {}
    refs = []
    for node, data, mime in capture.frames:
        k = counts[node] = counts.get(node, 0) + 1
        name = f"ws_{state.prompt_id[:8]}_{node}_{k:05}.{_MIME_EXT.get(mime, 'png')}"
        refs.append(FileRef.in_memory(data, name, node, server))
    dropped = _dropped(state)
    missing = dict.fromkeys(sorted(capture.nodes - capture.done - dropped), _MISSING)
    return result.with_websocket_images(refs, missing)


def _dropped(state: PromptState) -> set[str]:
    """Nodes the server did not run because validation dropped their outputs (``node_errors``)."""
    dropped: set[str] = set()
    for nid, entry in (state.node_errors or {}).items():
        dropped.add(str(nid))
        if isinstance(entry, dict):
            dropped.update(str(o) for o in entry.get("dependent_outputs") or ())
    return dropped


def settle_missing(pool: Any, server: Any, state: PromptState, result: Result | None) -> bool:
    """For a success whose WebSocket outputs may be incomplete: run it again or fail it, as
    ``settings.on_missing_outputs`` says (pool hook, before it settles a success). True if that was
    done. A job adopted without its prompt (it ended in an earlier process) keeps its result, with
    ``result.missing`` saying what is in doubt."""
    if result is None or not result.missing:
        return False
    settings = pool.settings
    policy = settings.on_missing_outputs
    if policy == "keep" or state.body is None:
        return False
    nodes = ", ".join(result.missing)
    if policy == "rerun" and state.attempts < settings.max_attempts:
        reason = f"the WebSocket dropped while SaveImageWebsocket node(s) {nodes} ran"
        if pool._resubmit(state, server, reason=reason, orphan=False) or state.done:
            return True
    error = OutputsMissing(
        f"prompt {state.prompt_id} succeeded, but the images of SaveImageWebsocket node(s) {nodes} may be "
        f"incomplete: our WebSocket dropped while they ran, and the server keeps no copy "
        f"({state.attempts} submission(s); on_missing_outputs={policy!r}). The partial result is error.result.",
        result=result,
    )
    pool._settle(state, "error", error=error, ran=server)
    return True
