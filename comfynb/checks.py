"""Check workflows and every row of a sweep against the server's ``/object_info`` before any POST.

The server validates one prompt at a time, so a sweep with one bad value among 1,000 rows fails
at that row, after hundreds of prompts ran. Here each value is checked as the server would (type,
min/max, choice options including the model files it lists, required inputs, link types), plus
the INT step the UI enforces, for all rows at once: one error lists every bad row and value, with
close matches for names. A Windows server (``/system_stats`` os ``nt``, or ``win32`` as ComfyUI
0.8.0 reports ``sys.platform``) lists model files in subfolders with backslashes; values written
with ``/`` are normalised to match.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _loop
from .errors import ComfyError, ServerUnavailable, WorkflowError
from .modes import MODES

__all__ = [
    "ServerInfo",
    "check_prompt",
    "check_sweep",
    "check_value",
    "check_workflow",
    "choices",
    "input_spec",
    "server_info",
]

_UPLOADS = ("image_upload", "video_upload", "audio_upload", "file_upload", "animated_image_upload")
_MAX_LISTED = 30


@dataclass(frozen=True)
class ServerInfo:
    """What the checks need from a server: its ``GET /object_info`` and ``/system_stats`` os."""

    object_info: Mapping[str, Any]
    os: str | None


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def server_info(session: Any, *, fresh: bool = False) -> ServerInfo:
    """The session's server's ``/object_info`` and OS (from the first server up), read once per session
    unless ``fresh``: a check that finds problems reads it again, as models may have been added since."""
    cached = None if fresh else _cache.get(session)
    if cached is None:
        cached = _cache[session] = _loop.run_sync(_fetch(session))
    return cached


async def _fetch(session: Any) -> ServerInfo:
    try:
        await session._ready()
    except ComfyError as exc:
        raise ServerUnavailable(
            f"cannot read the server's /object_info to check the workflow: {exc}. When no server answers yet, "
            "send with check=False (rows then wait for a server)"
        ) from exc
    transport = session._pool.up()[0].transport
    info = await transport.object_info()
    stats = await transport.system_stats()
    return ServerInfo(info, ((stats or {}).get("system") or {}).get("os"))


# -- one value ---------------------------------------------------------------------------------


def input_spec(info: Mapping, name: str, values: Mapping | None = None) -> tuple[Any, Mapping, str] | None:
    """(type, options, section) of an input of an /object_info entry, or None if it has no such input.

    With the node's input ``values``, an input of a dynamic combo's chosen option (``"resize_type.width"``)
    is found too.
    """
    return _spec_in(info.get("input") or {}, name, values or {}, "")


def _spec_in(inputs: Mapping, name: str, values: Mapping, prefix: str) -> tuple[Any, Mapping, str] | None:
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        spec = specs.get(name)
        if isinstance(spec, (list, tuple)) and spec:
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            return spec[0], opts, section
        head, dot, rest = name.partition(".")
        spec = specs.get(head)
        if dot and isinstance(spec, (list, tuple)) and len(spec) > 1 and spec[0] == "COMFY_DYNAMICCOMBO_V3":
            chosen = values.get(prefix + head)
            option = next((o for o in spec[1].get("options") or () if o.get("key") == chosen), None)
            if option is not None:
                return _spec_in(option.get("inputs") or {}, rest, values, f"{prefix}{head}.")
    return None


def choices(kind: Any, opts: Mapping) -> list | None:
    """The options a choice input offers (a list type, or COMBO's ``options``); None for other inputs."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(opts.get("options") or [])
    return None


def check_value(kind: Any, opts: Mapping, value: Any, windows: bool = False) -> tuple[str | None, Any]:
    """(problem or None, value to send) for one literal value of an input of this spec."""
    options = choices(kind, opts)
    if options is not None:
        if any(opts.get(u) for u in _UPLOADS):
            return None, value  # the server checks the file itself (it may have been uploaded just now)
        if value in options:
            return None, value
        if windows and isinstance(value, str) and value.replace("/", "\\") in options:
            return None, value.replace("/", "\\")
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listed = (
            f" (offered: {', '.join(map(repr, options[:8]))}{', ...' if len(options) > 8 else ''})" if not close else ""
        )
        return f"{value!r} is not offered by the server{hint}{listed}", value
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                number = (int if kind == "INT" else float)(value)
            except (TypeError, ValueError):
                return f"{value!r} is not a number ({kind})", value
        else:
            number = value
        if "min" in opts and number < opts["min"]:
            return f"{value!r} is smaller than the minimum {opts['min']}", value
        if "max" in opts and number > opts["max"]:
            return f"{value!r} is bigger than the maximum {opts['max']}", value
        step = opts.get("step")
        if kind == "INT" and isinstance(step, int) and step > 1 and (int(number) - opts.get("min", 0)) % step:
            return f"{value!r} is not a multiple of the step {step} (from {opts.get('min', 0)})", value
        return None, value
    if kind == "STRING" and not isinstance(value, str):
        return f"{value!r} is not a string", value
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{value!r} is not true or false", value
    return None, value


def _unwrap(value: Any) -> Any:
    return value["__value__"] if isinstance(value, dict) and set(value) == {"__value__"} else value


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _link_type(kind: Any, opts: Mapping) -> Any:
    """The type a linked input accepts: a V3 match-type input its template's allowed types; other V3
    dynamic inputs (autogrow...) are not checked here ("*"), the server resolves them."""
    if kind == "COMFY_MATCHTYPE_V3":
        return (opts.get("template") or {}).get("allowed_types") or "*"
    if isinstance(kind, str) and kind.startswith("COMFY_") and kind.endswith("_V3"):
        return "*"
    return kind


def _types_match(received: Any, expected: Any) -> bool:
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def check_prompt(
    prompt: Mapping[str, dict], object_info: Mapping, windows: bool = False, skip: frozenset = frozenset()
) -> tuple[list[str], dict]:
    """Every problem of one API prompt (as ``"<node> (<class>).<input>: ..."`` lines), and the values to
    normalise (``{(node, input): value}``); literal values of the ``(node, input)`` pairs in ``skip`` are not checked."""
    problems: list[str] = []
    fixes: dict = {}
    for nid, node in prompt.items():
        cls = node.get("class_type")
        info = object_info.get(cls)
        if info is None:
            close = difflib.get_close_matches(str(cls), list(object_info), n=3, cutoff=0.7)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"node {nid}: the server has no node type {cls!r}{hint}")
            continue
        inputs = node.get("inputs") or {}
        for name in (info.get("input") or {}).get("required") or {}:
            if name not in inputs:
                problems.append(f"node {nid} ({cls}): required input '{name}' is missing")
        for name, value in inputs.items():
            spec = input_spec(info, name, inputs)
            if spec is None:
                continue
            kind, opts, _ = spec
            if _is_link(value):
                source = prompt.get(value[0])
                if source is None:
                    problems.append(f"node {nid} ({cls}).{name}: linked to node {value[0]}, which is not in the prompt")
                    continue
                outputs = (object_info.get(source.get("class_type")) or {}).get("output") or []
                if value[1] >= len(outputs) and outputs:
                    problems.append(f"node {nid} ({cls}).{name}: node {value[0]} has no output {value[1]}")
                elif outputs and not _types_match(outputs[value[1]], expected := _link_type(kind, opts)):
                    problems.append(
                        f"node {nid} ({cls}).{name}: takes {expected} but is linked to a {outputs[value[1]]} "
                        f"(output {value[1]} of node {value[0]}, {source.get('class_type')})"
                    )
                continue
            if (nid, name) in skip:
                continue
            problem, fixed = check_value(kind, opts, _unwrap(value), windows)
            if problem:
                problems.append(f"node {nid} ({cls}).{name}: {problem}")
            elif fixed is not _unwrap(value):
                fixes[(nid, name)] = fixed
    return problems, fixes


# -- workflows and sweeps -----------------------------------------------------------------------


def check_workflow(wf: Any, session: Any = None, *, object_info: Mapping | None = None) -> Any:
    """Check ``wf`` against the server; normalise Windows model paths in place; raise listing every problem."""
    info = server_info(session) if object_info is None else ServerInfo(object_info, None)
    problems, fixes = check_prompt(wf.to_api(), info.object_info, _windows(info))
    if problems and object_info is None:
        info = server_info(session, fresh=True)
        problems, fixes = check_prompt(wf.to_api(), info.object_info, _windows(info))
    if wf.object_info is None:
        wf.object_info = info.object_info
    if problems:
        raise WorkflowError(
            f"the workflow does not fit this server ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    for (nid, name), value in fixes.items():
        wf.set(f"{nid}.{name}", value)
    return wf


def check_sweep(session: Any, wf: Any, plan: Any, *, check: bool = True) -> None:
    """Before a sweep sends anything: give ``wf`` the server's ``/object_info`` (bypass needs it) and,
    with ``check``, check the base graph once and every row's values, raising one error for all."""
    needs_info = check or any(a.rpartition("@")[2] in MODES for a in plan.addresses)
    if not needs_info:
        return
    info = server_info(session)
    if wf.object_info is None:
        wf.object_info = info.object_info
    if not check:
        return
    try:
        verdict = _check_rows(wf, plan, info)
    except WorkflowError:
        verdict = _check_rows(wf, plan, server_info(session, fresh=True))
    _normalise(plan, verdict)


def _check_rows(wf: Any, plan: Any, info: ServerInfo) -> Any:
    """Check the base graph once and every row's values; returns the per-value verdict function."""
    windows = _windows(info)
    swept = frozenset(wf.resolve(a) for a in plan.addresses)
    base, _ = check_prompt(wf.to_api(), info.object_info, windows, swept)
    if base:
        raise WorkflowError(
            "the workflow does not fit this server, so no row was sent:\n  " + "\n  ".join(base[:_MAX_LISTED])
        )
    graph = wf._graph
    verdicts: dict[tuple, tuple[str | None, Any]] = {}

    def verdict(address: str, value: Any) -> tuple[str | None, Any]:
        key = (address, repr(value))
        if key not in verdicts:
            nid, name = wf.resolve(address)
            cls = graph[nid]["class_type"]
            node_inputs = graph[nid]["inputs"]
            spec = None if name.startswith("@") else input_spec(info.object_info.get(cls) or {}, name, node_inputs)
            verdicts[key] = (None, value) if spec is None else check_value(spec[0], spec[1], value, windows)
        return verdicts[key]

    bad: list[str] = []
    bad_rows = 0
    for i in range(plan.total):
        row = plan.row(i)
        found = []
        for address, value in row.items():
            problem, _ = verdict(address, value)
            if problem:
                found.append(f"'{address}' = {problem}")
        if found:
            bad_rows += 1
            if len(bad) < _MAX_LISTED:
                bad.append(f"row {i} {row}: " + "; ".join(found))
    if bad:
        more = f"\n  ... and {bad_rows - len(bad)} more rows" if bad_rows > len(bad) else ""
        raise WorkflowError(
            f"{bad_rows} of {plan.total} rows have values this server refuses; nothing was sent:\n  "
            + "\n  ".join(bad)
            + more
        )
    return verdict


def _normalise(plan: Any, verdict: Any) -> None:
    """Rewrite values the check normalised (Windows model paths) in the plan itself."""
    plan.axes = [(a, [verdict(a, v)[1] for v in values]) for a, values in plan.axes]
    if plan.seed:
        plan.seed = (plan.seed[0], [verdict(plan.seed[0], v)[1] for v in plan.seed[1]])
    if plan.rows is not None:
        plan.rows = [{a: verdict(a, v)[1] for a, v in row.items()} for row in plan.rows]


def _windows(info: ServerInfo) -> bool:
    """ComfyUI reports ``os.name`` ("nt" on Windows); some builds report ``sys.platform``."""
    return info.os in ("nt", "win32")
