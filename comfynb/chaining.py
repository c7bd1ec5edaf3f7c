"""Chaining jobs: an output of one job as an input of the next, with several servers.

``wf["LoadImage.image"] = result.images[0]`` sets the input to ``"sub/name.png [output]"`` as an
:class:`~comfynb.results.InputName`, a string that remembers the server holding the file. The pool
asks :func:`route` where such a job may run (the holder, when it is up and can run the workflow);
when the job runs elsewhere after all (holder down or unable, failover), :func:`localize` copies
each file the job reads from another server into the input folder of the server that runs it,
just before the POST, and points the input at the copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from .errors import ComfyError
from .results import InputName
from .uploads import upload

log = logging.getLogger("comfynb.session")


def input_names(prompt: Any) -> Iterator[tuple[str, str, InputName]]:
    """``(node id, input name, value)`` for every input naming a file on a particular server."""
    if not isinstance(prompt, dict):
        return
    for nid, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for name, value in (inputs or {}).items():
            if isinstance(value, InputName):
                yield nid, name, value


def route(prompt: Any, able: list[Any]) -> list[Any]:
    """The servers a prompt should go to: the one holding the files it reads, if it is up and
    among ``able``; otherwise ``able`` unchanged (the files are copied where the job runs)."""
    holders = {value.server for _, _, value in input_names(prompt)}
    if len(holders) != 1:
        return able  # no such file, or files on several servers: some must be copied anyway
    (url,) = holders
    chosen = [s for s in able if s.url == url and s.health == "up"]
    return chosen or able


async def localize(server: Any, state: Any) -> bool:
    """Copy the files the prompt reads from other servers into ``server``'s input folder and point
    the inputs at the copies (on the job's own copy of the graph). False if that failed: the job
    then ended with an error saying which file could not be brought over."""
    prompt = state.body["prompt"] if state.body else None
    foreign = [(nid, name, value) for nid, name, value in input_names(prompt) if value.server != server.url]
    if not foreign or prompt is None:
        return True
    prompt = dict(prompt)  # nodes may be shared with a sweep's other rows: copy what changes
    for nid, name, value in foreign:
        if value.ref is None:
            error = ComfyError(f"{value} is on {value.server}, and comfynb does not know how to fetch it from there")
            server.end(state, "error", error=error)
            return False
        try:
            copied = await upload(server.transport, value.ref, {})  # the server keeps one copy per content
        except ComfyError as exc:
            error = ComfyError(
                f"prompt {state.prompt_id} reads {value} from {value.server}, which could not be copied to "
                f"{server.url}: {exc}"
            )
            server.end(state, "error", error=error)
            return False
        log.info(
            "copied %s from %s to %s for prompt %s",
            value,
            value.server,
            server.url,
            state.prompt_id,
            extra={"prompt_id": state.prompt_id, "server": server.url},
        )
        node = prompt[nid] = {**prompt[nid], "inputs": {**prompt[nid]["inputs"]}}
        node["inputs"][name] = InputName(copied, server=server.url, ref=value.ref)
    state.body = {**state.body, "prompt": prompt}
    return True
