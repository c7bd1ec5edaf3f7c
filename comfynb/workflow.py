"""API-format ComfyUI graphs: load, check, address and set inputs, list parameters.

A workflow is ComfyUI's API format (``Workflow > Export (API)``): ``{node_id: {"class_type",
"inputs", "_meta": {"title"}}}``. It is checked when loaded, so a bad file fails here with the
node and the fix named, not later as a server 400. What users mostly have, a UI-format file or a
picture or video ComfyUI made, is loaded too: UI format is converted as the frontend does
(:mod:`comfynb.uiformat`), files are read for their embedded workflow (:mod:`comfynb.embedded`),
and the UI workflow is kept (``wf.ui``) so outputs can carry it.

Addresses are ``"<node>.<input>"``. ``<node>`` is, in this order of precedence:

1. a node id (``"3"``): ids are unique and stable, so an id always wins;
2. a title (``_meta.title``, what the UI shows; it may contain dots and spaces);
3. a class_type (``"KSampler"``).

The first rule that matches anything decides, and it must match exactly one node: two nodes
titled "CLIP Text Encode (Prompt)" make that title ambiguous (the error lists ``"6.text"`` and
``"7.text"``) rather than falling back to the class. Titles come before classes because a
title is a name the user chose. Because titles may contain dots, the longest known node name
before a dot is taken (``"My.Sampler.seed"`` is input ``seed`` of node ``My.Sampler``).
``"<node>@bypass"`` and ``"<node>@mute"`` (True or False) take a node out of the graph the way
the frontend's Bypass and Mute do (:mod:`comfynb.modes`), so a sweep can compare with and without it.

Values must be JSON (numpy scalars and arrays are converted). ComfyUI reads every list input
as a link ``[node_id, output_index]``, so a list set as an input value is stored wrapped as
``{"__value__": [...]}``; lists nested inside other values and already wrapped values are stored
as given, and reads unwrap. Setting a literal over a linked input cuts the link, so it needs
``unlink=True``.

Input values are never mutated in place, only replaced, which lets copies share them: a copy
is cheap, as sweeps make one per prompt.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .embedded import is_media, read_embedded
from .errors import AddressError, WorkflowError
from .modes import MODES, apply_modes, ui_with_modes
from .uiformat import is_ui_format, ui_to_api

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Node", "Options", "Workflow"]

_EXPORT_HINT = (
    "In ComfyUI: enable Dev mode options in settings, then Workflow > Export (API) / Save (API), and load that file."
)


@dataclass(frozen=True)
class Node:
    """A read-only view of one node; change inputs through the workflow (``wf[...] = ...``).

    ``inputs`` shows the raw API-format values: links as ``[node_id, output_index]``, wrapped
    lists as ``{"__value__": [...]}``.
    """

    id: str
    class_type: str
    title: str | None
    inputs: Mapping[str, Any]


class Workflow:
    """An API-format ComfyUI workflow whose inputs are addressed as ``"KSampler.seed"``."""

    ui: dict | None
    """The UI-format workflow this one came from (a UI file, or the image's ``workflow``), if known;
    sent along in ``extra_pnginfo`` so every output file carries it."""
    object_info: Mapping[str, Any] | None
    """The server's ``/object_info`` this workflow was loaded against, if any (checks, bypass, options)."""

    def __init__(self, graph: Mapping[str, Any]):
        self._graph = _checked_graph(graph, "the workflow")
        self._names = _Names(self._graph)
        self.ui, self.object_info = None, None
        self._modes: dict[str, str] = {}  # node id -> "bypass" or "mute"

    @classmethod
    def _from_data(
        cls, data: Any, what: str, object_info: Mapping | None, session: Any, ui: Mapping | None = None
    ) -> Workflow:
        """A workflow from parsed JSON: API format as is, UI format converted against ``/object_info``."""
        if object_info is None and session is not None:
            from .checks import server_info

            object_info = server_info(session).object_info
        if is_ui_format(data):
            if object_info is None:
                raise WorkflowError(
                    f"{what} is in ComfyUI's UI format, not the API format the server runs; converting it needs "
                    "the server's node definitions: "
                    "Workflow.load(source, session=session) or Workflow.load(source, object_info=info) "
                    f"(info = GET /object_info). Or: {_EXPORT_HINT}"
                )
            ui, data = data, ui_to_api(data, object_info)
            what = f"{what} (converted from UI format)"
        wf = object.__new__(cls)
        wf._graph = _checked_graph(data, what)
        wf._names = _Names(wf._graph)
        wf.ui = _copy_json(dict(ui)) if ui is not None else None
        wf.object_info = object_info
        wf._modes = {}
        return wf

    @classmethod
    def _parsed(cls, text: str, what: str, object_info: Mapping | None = None, session: Any = None) -> Workflow:
        """A workflow from JSON text, naming ``what`` (a file, a string) in every error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise WorkflowError(f"{what} is not valid JSON: {e.msg} at {where}.") from None
        return cls._from_data(data, what, object_info, session)

    @classmethod
    def _embedded(cls, data: bytes, what: str, object_info: Mapping | None, session: Any) -> Workflow:
        """The workflow a ComfyUI output file carries: its API ``prompt`` if present, else its UI ``workflow``."""
        found = read_embedded(data, what)
        if found.prompt is not None:
            return cls._from_data(
                _rewrapped(found.prompt), f"{what} ('prompt' metadata)", object_info, None, found.workflow
            )
        return cls._from_data(found.workflow, f"{what} ('workflow' metadata)", object_info, session)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike | bytes | Mapping | Workflow,
        *,
        object_info: Mapping[str, Any] | None = None,
        session: Any = None,
    ) -> Workflow:
        """Read a workflow from a .json path, a JSON string, a dict, another Workflow (copied), or a
        file ComfyUI made (PNG, WebP, MP4/WebM, FLAC/MP3/Opus: path or bytes).

        API format is taken as is. UI format (what ComfyUI saves) is converted as ComfyUI's frontend
        does, against ``object_info`` (the server's ``GET /object_info``) or, given ``session``,
        its server's. A file's API ``prompt`` is preferred to its UI ``workflow``.
        """
        if isinstance(source, Workflow):
            return source.copy()
        if isinstance(source, Mapping):
            return cls._from_data(source, "the workflow", object_info, session)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if is_media(data[:16]):
                return cls._embedded(data, "the file's bytes", object_info, session)
            return cls._parsed(data.decode("utf-8", "replace"), "the bytes given", object_info, session)
        if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
            return cls._parsed(source, "the JSON string", object_info, session)
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise WorkflowError(
                    f"no such file: '{path}'. Workflow.load takes a path to a workflow .json file or to an "
                    "image/video ComfyUI made, a dict, or a JSON string."
                ) from None
            except OSError as e:
                raise WorkflowError(f"cannot read workflow file '{path}': {e}") from e
            if is_media(data[:16]):
                return cls._embedded(data, f"'{path}'", object_info, session)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise WorkflowError(
                    f"cannot read workflow file '{path}': it is neither UTF-8 JSON text nor a PNG, WebP, MP4, "
                    f"WebM, FLAC, MP3 or Opus file ({e})"
                ) from None
            return cls._parsed(text, f"'{path}'", object_info, session)
        raise WorkflowError(
            f"cannot load a workflow from {type(source).__name__}: pass a path to a workflow .json file or "
            "an image/video ComfyUI made, a dict, or a JSON string."
        )

    # -- the graph as a whole ------------------------------------------------------------

    def to_api(self) -> dict:
        """The API-format graph for ``POST /prompt``: a fresh copy the caller may change.

        Bypassed and muted nodes (``wf["LoRA@bypass"] = True``) are taken out as the frontend does.
        """
        return apply_modes(_copy_json(self._graph), self._modes, self.object_info)

    def ui_workflow(self) -> dict | None:
        """The UI workflow to embed in outputs (``extra_pnginfo.workflow``), showing bypassed and muted nodes."""
        if self.ui is None or not self._modes:
            return self.ui
        return ui_with_modes(self.ui, self._modes)

    def copy(self) -> Workflow:
        """An independent copy; values set on one never show in the other."""
        new = object.__new__(Workflow)
        new._graph = {nid: {**n, "inputs": dict(n["inputs"])} for nid, n in self._graph.items()}
        new._names = self._names  # ids, titles, classes and input names never change
        new.ui, new.object_info, new._modes = self.ui, self.object_info, dict(self._modes)
        return new

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> Workflow:
        return self.copy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the API-format JSON, loadable here and by ComfyUI; returns the path."""
        path = Path(path)
        graph = self.to_api() if self._modes else self._graph  # bypassed and muted nodes taken out
        path.write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @property
    def nodes(self) -> Mapping[str, Node]:
        """Node id -> read-only :class:`Node`, in graph order."""
        return MappingProxyType(
            {
                nid: Node(nid, n["class_type"], _title(n), MappingProxyType(n["inputs"]))
                for nid, n in self._graph.items()
            }
        )

    def output_nodes(self, object_info: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of the nodes that produce the prompt's outputs.

        With ``object_info`` (the server's ``GET /object_info``) these are exactly the nodes whose
        class is an ``output_node``, which is what the server runs. Without it, the graph's sinks
        (nodes whose outputs no input reads): usually the same, but a dangling non-output node
        is a sink too, so only the server's answer is authoritative.
        """
        if object_info is not None:
            return [
                nid
                for nid, node in self._graph.items()
                if (object_info.get(node["class_type"]) or {}).get("output_node") is True
            ]
        read = {v[0] for node in self._graph.values() for v in node["inputs"].values() if _is_link(v)}
        return [nid for nid in self._graph if nid not in read]

    def __len__(self) -> int:
        return len(self._graph)

    def __iter__(self) -> Iterator[str]:
        return iter(self._graph)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workflow) and self._graph == other._graph and self._modes == other._modes

    # No __hash__: defining __eq__ alone makes instances unhashable, as a mutable graph should be.

    def __repr__(self) -> str:
        shown = [f"{nid} {node['class_type']}" for nid, node in list(self._graph.items())[:6]]
        if len(self._graph) > 6:
            shown.append(f"+{len(self._graph) - 6} more")
        return f"<Workflow {len(self._graph)} nodes: {', '.join(shown)}>"

    # -- addressing ----------------------------------------------------------------------

    def resolve(self, address: str) -> tuple[str, str]:
        """``(node_id, input_name)`` of an address; AddressError (with suggestions) if none or several."""
        found = self._find(address)
        if found is None:
            raise self._unknown(address)
        return found

    def __getitem__(self, address: str) -> Any:
        nid, name = self.resolve(address)
        return self._value(nid, name)

    def get(self, address: str, default: Any = None) -> Any:
        """The value at ``address``, or ``default`` if it names no input (ambiguity still raises)."""
        found = self._find(address)
        if found is None:
            return default
        return self._value(*found)

    def _value(self, nid: str, name: str) -> Any:
        if name.startswith("@"):
            return self._modes.get(nid) == name[1:]
        return _unwrap(self._graph[nid]["inputs"][name])

    def __setitem__(self, address: str, value: Any) -> None:
        self.set(address, value)

    def set(self, address: str, value: Any, *, unlink: bool = False) -> None:
        """Set an input; a linked input takes a literal only with ``unlink=True``, as that cuts the link."""
        nid, name = self.resolve(address)
        if name.startswith("@"):
            if not isinstance(value, (bool, np.bool_)):
                raise WorkflowError(
                    f"'{address}' takes True or False (whether node {nid} is {name[1:]}ed), not {value!r}"
                )
            if value:
                self._modes[nid] = name[1:]
            elif self._modes.get(nid) == name[1:]:
                del self._modes[nid]
            return
        inputs = self._graph[nid]["inputs"]
        current = inputs[name]
        if _is_link(current) and not unlink:
            raise WorkflowError(
                f"'{address}' is linked to output {current[1]} of node {current[0]} "
                f"({self._graph[current[0]]['class_type']}); setting a value would cut that link. "
                f"If that is what you mean, use wf.set({address!r}, value, unlink=True)."
            )
        value = _plain(value, f"cannot set '{address}'")
        inputs[name] = {"__value__": value} if isinstance(value, list) else value

    def with_values(self, values: Mapping[str, Any], *, unlink: bool = False) -> Workflow:
        """A copy with several inputs set; this workflow is left unchanged even if one fails."""
        new = self.copy()
        for address, value in values.items():
            new.set(address, value, unlink=unlink)
        return new

    def __contains__(self, item: object) -> bool:
        """True for a node id, or for an address that names exactly one input."""
        if isinstance(item, str) and item in self._graph:
            return True
        try:
            return self._find(item) is not None
        except AddressError:
            return False

    def check(self, session: Any = None, *, object_info: Mapping[str, Any] | None = None) -> Workflow:
        """Check every node and value against the server's ``/object_info`` (types, ranges, choices
        and model files, required inputs, link types); raises one WorkflowError listing every
        problem. Model paths are normalised for a Windows server. Returns this workflow."""
        from .checks import check_workflow

        if session is None and object_info is None:
            object_info = self.object_info
        if session is None and object_info is None:
            raise WorkflowError("wf.check(session) needs the session (or object_info=) to ask the server")
        return check_workflow(self, session, object_info=object_info)

    def _ipython_key_completions_(self) -> list[str]:
        """Addresses for ``wf["<TAB>`` in notebooks: every input, and ``<node>@bypass`` / ``@mute``."""
        names = self._all_addresses()
        nodes = {a.rpartition(".")[0] for a in names}
        return names + [f"{n}@{m}" for n in sorted(nodes) for m in MODES]

    def options(self, address: str) -> Options:
        """The values the server offers for a choice input (samplers, schedulers, model files...).

        Needs ``object_info`` (load with ``session=`` or ``object_info=``). The list completes in
        notebooks (``wf.options("KSampler.sampler_name")["<TAB>``) and indexing it by a name that
        is not offered raises with close matches.
        """
        nid, name = self.resolve(address)
        if self.object_info is None:
            raise WorkflowError(
                f"'{address}': the server's options are unknown; load with Workflow.load(..., session=session)"
            )
        from .checks import choices, input_spec

        spec = input_spec(self.object_info.get(self._graph[nid]["class_type"]) or {}, name)
        offered = choices(spec[0], spec[1]) if spec is not None else None
        if offered is None:
            raise WorkflowError(f"'{address}' is not a choice input on this server; it takes any value of its type")
        return Options(address, list(offered))

    def parameters(self) -> pd.DataFrame:
        """Every literal (not linked) input, one row each, with the shortest address that names it."""
        import pandas as pd

        rows = [
            {
                "address": self._address_of(nid, name),
                "node_id": nid,
                "class_type": node["class_type"],
                "title": _title(node),
                "input": name,
                "value": _unwrap(value),
            }
            for nid, node in self._graph.items()
            for name, value in node["inputs"].items()
            if not _is_link(value)
        ]
        columns = ["address", "node_id", "class_type", "title", "input", "value"]
        return pd.DataFrame(rows, columns=columns)

    # -- internals -----------------------------------------------------------------------

    def _find(self, address: object) -> tuple[str, str] | None:
        """Resolve, returning None when nothing matches; raise for ambiguity and non-addresses."""
        cached = self._names.resolved.get(address) if isinstance(address, str) else None
        if cached is not None:
            return cached
        if not isinstance(address, str):
            raise AddressError(
                "an address is a string like 'KSampler.seed' (node, dot, input); "
                f"got {type(address).__name__} {address!r}"
            )
        node_part, at, mode = address.rpartition("@")
        if at and mode in MODES and node_part:
            match = self._names.lookup(node_part)
            if match is None:
                return None
            kind, ids = match
            if len(ids) > 1:
                raise self._ambiguous(address, kind, node_part, ids, f"@{mode}")
            return ids[0], f"@{mode}"
        for node_part, name in _splits(address):
            match = self._names.lookup(node_part)
            if match is None:
                continue
            kind, ids = match
            if len(ids) > 1:
                raise self._ambiguous(address, kind, node_part, ids, name)
            if name not in self._graph[ids[0]]["inputs"]:
                return None
            self._names.resolved[address] = (ids[0], name)
            return ids[0], name
        return None

    def _ambiguous(self, address: str, kind: str, part: str, ids: list[str], name: str) -> AddressError:
        lines = [f"'{address}' is ambiguous: {kind} '{part}' names {len(ids)} nodes. Address one by id:"]
        for nid in ids[:10]:
            inputs = self._graph[nid]["inputs"]
            line = f"  '{nid}{'' if name.startswith('@') else '.'}{name}'  {self._label(nid)}"
            if name in inputs and not _is_link(inputs[name]):
                line += f", {name}={_short(_unwrap(inputs[name]))}"
            lines.append(line)
        if len(ids) > 10:
            lines.append(f"  ... {len(ids) - 10} more")
        lines.append("Or give the nodes distinct titles in ComfyUI and export the workflow again.")
        return AddressError("\n".join(lines))

    def _unknown(self, address: str) -> AddressError:
        """The error for an address that names nothing: which part is wrong, and close matches."""
        if "." not in address:
            having = [self._address_of(nid, address) for nid, n in self._graph.items() if address in n["inputs"]]
            if address in self._graph:
                msg = (
                    f"'{address}' is a node, not an input: address an input as '{address}.<input>'. "
                    + self._inputs_of(address)
                )
            else:
                msg = f"'{address}' is not an address: write '<node>.<input>', e.g. 'KSampler.seed'."
            if having:
                msg += f" Did you mean {_either(having)}?"
            return AddressError(msg)
        for node_part, name in _splits(address):
            match = self._names.lookup(node_part)
            if match is not None:  # the node is known, so the input is wrong
                nid = match[1][0]
                close = difflib.get_close_matches(name, list(self._graph[nid]["inputs"]), n=3, cutoff=0.5)
                msg = f"{self._label(nid)} has no input '{name}' (address '{address}')."
                if close:
                    msg += f" Did you mean {_either([f'{node_part}.{c}' for c in close])}?"
                return AddressError(f"{msg} {self._inputs_of(nid)}")
        msg = f"no node is named '{address.rpartition('.')[0]}' (address '{address}')."
        close = _close(address, self._all_addresses())
        if close:
            msg += f" Did you mean {_either(close)}?"
        shown = [self._label(nid) for nid in list(self._graph)[:30]]
        if len(self._graph) > 30:
            shown.append(f"... {len(self._graph) - 30} more")
        return AddressError(
            f"{msg} A node is named by its id, its title, or its class_type if that is unique. "
            f"Nodes: {'; '.join(shown)}. wf.parameters() lists every settable address."
        )

    def _address_of(self, nid: str, name: str) -> str:
        """The shortest name that resolves to this node (title or unique class), else its id.

        Names beat ids even when longer: "KSampler.seed" tells a reader what "3.seed" does not.
        """
        node = self._graph[nid]
        names = sorted((n for n in (_title(node), node["class_type"]) if n), key=len)
        for candidate in names:
            if (self._names.lookup(candidate) or ("", []))[1] != [nid]:  # cheap test before the full one
                continue
            try:
                if self._find(f"{candidate}.{name}") == (nid, name):
                    return f"{candidate}.{name}"
            except AddressError:
                continue
        return f"{nid}.{name}"

    def _all_addresses(self) -> list[str]:
        return [
            f"{n}.{name}"
            for nid, node in self._graph.items()
            for n in dict.fromkeys((nid, _title(node), node["class_type"]))
            if n is not None
            for name in node["inputs"]
            if (self._names.lookup(n) or ("", []))[1] == [nid]
        ]

    def _label(self, nid: str) -> str:
        node = self._graph[nid]
        title = _title(node)
        named = f" '{title}'" if title and title != node["class_type"] else ""
        return f"node {nid} ({node['class_type']}{named})"

    def _inputs_of(self, nid: str) -> str:
        inputs = self._graph[nid]["inputs"]
        if not inputs:
            return "It has no inputs."
        listed = [f"{k} (linked)" if _is_link(v) else k for k, v in inputs.items()]
        return f"Its inputs: {', '.join(listed)}."


class Options(list):
    """A choice input's options; ``options["name"]`` returns the name if offered, else raises with close matches."""

    def __init__(self, address: str, values: list):
        super().__init__(values)
        self.address = address

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, str):
            return super().__getitem__(key)
        if key in self:
            return key
        close = _close(key, [v for v in self if isinstance(v, str)])
        hint = f" Did you mean {_either(close)}?" if close else ""
        raise WorkflowError(
            f"'{key}' is not among the {len(self)} options the server offers for '{self.address}'.{hint}"
        )

    def _ipython_key_completions_(self) -> list[str]:
        return [v for v in self if isinstance(v, str)]


class _Names:
    """Which nodes each id, title and class_type names, plus resolved addresses.

    Shared by a workflow and its copies: setting values never changes ids, titles, classes
    or input names, so neither the index nor a resolved address goes stale.
    """

    def __init__(self, graph: dict[str, dict]):
        self.ids = set(graph)
        self.titles: dict[str, list[str]] = defaultdict(list)
        self.classes: dict[str, list[str]] = defaultdict(list)
        for nid, node in graph.items():
            if (title := _title(node)) is not None:
                self.titles[title].append(nid)
            self.classes[node["class_type"]].append(nid)
        self.resolved: dict[str, tuple[str, str]] = {}

    def lookup(self, name: str) -> tuple[str, list[str]] | None:
        """``(kind, node ids)`` of the first rule (id, title, class_type) that matches ``name``."""
        if name in self.ids:
            return "id", [name]
        if name in self.titles:
            return "title", self.titles[name]
        if name in self.classes:
            return "class_type", self.classes[name]
        return None


# -- checking a graph ----------------------------------------------------------------------


def _checked_graph(graph: Any, what: str) -> dict[str, dict]:
    """A plain, JSON-ready copy of ``graph``, or WorkflowError naming the node and the fix."""
    if not isinstance(graph, Mapping):
        raise WorkflowError(
            f"{what} must be a JSON object mapping node ids to nodes (API format), not a {type(graph).__name__}."
        )
    ui_keys = isinstance(graph.get("nodes"), list) or isinstance(graph.get("links"), list)
    if ui_keys or "last_node_id" in graph:
        raise WorkflowError(
            f"{what} is in ComfyUI's UI format (it has 'nodes' and 'links'), which the server does not "
            "run (it needs the API format): Workflow.load(source, session=session) (or object_info=...) converts it. "
            f"Or: {_EXPORT_HINT}"
        )
    if not graph:
        raise WorkflowError(f"{what} has no nodes. {_EXPORT_HINT}")
    out: dict[str, dict] = {}
    for nid, node in graph.items():
        if not isinstance(nid, str):
            raise WorkflowError(
                f"node id {nid!r} ({type(nid).__name__}) must be a string: API format keys nodes "
                f'by strings, like "{nid}".'
            )
        shape = '{"class_type": "...", "inputs": {...}}'
        if not isinstance(node, Mapping):
            raise WorkflowError(f"node '{nid}' must be an object {shape}, not a {type(node).__name__}.")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problem = "has no class_type" if class_type is None else f"has an invalid class_type {class_type!r}"
            raise WorkflowError(
                f"node '{nid}' {problem}: every node of an API-format workflow is {shape}. "
                f"If this is a UI-format file: {_EXPORT_HINT}"
            )
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            problem = "has no inputs" if inputs is None else f"has inputs that are a {type(inputs).__name__}"
            raise WorkflowError(
                f"node '{nid}' ({class_type}) {problem}: 'inputs' must be an object of input name "
                "-> value (use {} for a node without inputs)."
            )
        checked = {k: _plain(v, f"node '{nid}' ({class_type}) key '{k}'") for k, v in node.items() if k != "inputs"}
        checked["inputs"] = {}
        for name, value in inputs.items():
            if not isinstance(name, str):
                raise WorkflowError(
                    f"node '{nid}' ({class_type}) has an input named {name!r}; input names are strings."
                )
            checked["inputs"][name] = _plain(value, f"input '{nid}.{name}' ({class_type})")
        out[nid] = checked
    for nid, node in out.items():
        for name, value in node["inputs"].items():
            if not isinstance(value, list):
                continue
            where = f"input '{nid}.{name}' ({node['class_type']})"
            if not _is_link(value):
                raise WorkflowError(
                    f"{where} is the list {_short(value)}, which ComfyUI reads as a link but is not one: "
                    "a link is [node_id, output_index] (a string and an integer >= 0). A literal list "
                    'must be wrapped as {"__value__": [...]}.'
                )
            if value[0] not in out:
                raise WorkflowError(
                    f"{where} links to node '{value[0]}', which is not in the workflow; "
                    "export the workflow again or fix the link."
                )
    return out


def _rewrapped(prompt: Any) -> Any:
    """A prompt read back from a file: the server unwraps ``{"__value__": [...]}`` before saving, so
    list values that are not links are wrapped again."""
    if not isinstance(prompt, Mapping):
        return prompt
    out = {}
    for nid, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if isinstance(inputs, Mapping):
            inputs = {k: {"__value__": v} if isinstance(v, list) and not _is_link(v) else v for k, v in inputs.items()}
            node = {**node, "inputs": inputs}
        out[nid] = node
    return out


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON (fresh containers, numpy converted), or WorkflowError naming ``where``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WorkflowError(f"{where}: {float(value)!r} is not valid JSON; use a finite number.")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, where) for k, v in value.items()}
    if isinstance(value, (np.generic, np.ndarray)):
        return _plain(value.tolist(), where)
    if callable(getattr(value, "as_input", None)):  # an output FileRef: "sub/name.png [output]"
        return value.as_input()
    raise WorkflowError(
        f"{where}: {_short(value)} of type {type(value).__name__} is not JSON-serialisable. Values must "
        "be str, int, float, bool, None, or lists and dicts of those; convert it first "
        "(e.g. str(path), float(x))."
    )


# -- small helpers -------------------------------------------------------------------------


def _is_link(value: Any) -> bool:
    """Whether ``value`` is a link: a two-item list [source node id, output index >= 0]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and value[1] >= 0
    )


def _unwrap(value: Any) -> Any:
    """A copy of an input's value as the user set it (``{"__value__": [...]}`` unwrapped)."""
    if isinstance(value, dict) and len(value) == 1 and "__value__" in value:
        value = value["__value__"]
    return _copy_json(value)


def _copy_json(value: Any) -> Any:
    """Deep copy of JSON data; several times faster than copy.deepcopy, which sweeps notice."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def _title(node: Mapping) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) and title else None


def _splits(address: str) -> Iterator[tuple[str, str]]:
    """(node part, input) at each dot, longest node part first: titles may contain dots."""
    i = len(address)
    while (i := address.rfind(".", 0, i)) >= 0:
        yield address[:i], address[i + 1 :]


def _close(word: str, choices: list[str]) -> list[str]:
    """Close matches, ignoring case, returned in their own spelling."""
    by_lower = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)
    return [by_lower[m] for m in matches]


def _either(options: list[str]) -> str:
    quoted = [f"'{o}'" for o in dict.fromkeys(options)]
    if len(quoted) > 5:
        quoted = [*quoted[:5], f"{len(quoted) - 5} more"]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
