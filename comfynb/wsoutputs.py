"""Outputs that exist only on the WebSocket: the images of ``SaveImageWebsocket`` nodes.

Such a node sends full-size PNGs through the preview channel and writes nothing to history, so
after a dropped socket its images cannot be recovered from the server. Each frame is kept in
order with its prompt and node (type-4 frames name both; a type-1 frame belongs to the node our
socket saw running). A node counts as received only when our socket saw it start and finish
without reconnecting in between; otherwise the result says which outputs may be missing, and the
session's ``on_missing_outputs`` decides: run the prompt again (``"rerun"``, counted in
``attempts``), raise :class:`~comfynb.errors.OutputsMissing` (``"raise"``), or keep the result
as it is with ``result.missing`` filled (``"keep"``).

The tracker records frames and node starts and ends (:mod:`comfynb.wscapture`); the server
attaches the frames to the result (``attach``) and the pool applies the policy before it settles
a success (``settle_missing``). All of it runs on the private loop.
"""

from __future__ import annotations

from typing import Any

from .errors import OutputsMissing
from .results import FileRef, Result
from .wscapture import Capture, capture_of, ws_nodes

POLICIES = ("rerun", "raise", "keep")
_MISSING = (
    "our WebSocket was not connected for the whole time this node ran, so some of its images may not have "
    "reached us (the server keeps none)"
)
_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def attach(result: Result, state: Any, server: str) -> Result:
    """The result with its WebSocket images (in arrival order) and what may be missing. A job
    this process did not follow (adopted by ``resume``) saw none of them: all are in doubt."""
    capture = state.ws if state.ws is not None else capture_of(state)
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


def _dropped(state: Any) -> set[str]:
    """Nodes the server did not run because validation dropped their outputs (``node_errors``)."""
    dropped: set[str] = set()
    for nid, entry in (state.node_errors or {}).items():
        dropped.add(str(nid))
        if isinstance(entry, dict):
            dropped.update(str(o) for o in entry.get("dependent_outputs") or ())
    return dropped


def settle_missing(pool: Any, server: Any, state: Any, result: Result | None) -> bool:
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
