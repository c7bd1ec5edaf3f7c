"""UI-format workflows (what ComfyUI saves) -> API-format prompts (what ``POST /prompt`` takes).

Most people have the workflow ComfyUI saved, a template, or an image that carries one, not an
"Export (API)" file. This module converts such a workflow the way ComfyUI's own frontend does
(``graphToPrompt`` of comfyui-frontend-package 1.35), driven by the server's ``/object_info``,
which says which inputs are widgets and in which order their values are stored:

- ``widgets_values`` (a list, or a dict by name for some custom nodes) are mapped onto the widget
  inputs in ``input_order``; the ``control_after_generate`` value that follows seed-like widgets and
  the ``upload`` value of LoadImage-like nodes are stored in the file but are not inputs;
- links ``[id, from_node, from_slot, to_node, to_slot, type]`` become ``[node_id, slot]``; a link
  into a widget input replaces the widget's value;
- muted nodes (mode 2) are dropped with every input linked to them; bypassed nodes (mode 4) are
  dropped and each consumer is wired to the bypassed node's input of the matching type;
- ``PrimitiveNode`` values are written into the widgets they feed; ``Reroute`` is followed;
  ``Note`` and ``MarkdownNote`` vanish;
- subgraphs (``definitions.subgraphs``) are flattened, inner nodes getting ids like ``"18:17:3"``;
- legacy group nodes (``workflow>Name``, defined in ``extra.groupNodes``) are flattened as the
  frontend's GroupNodeConfig/GroupNodeHandler do, inner nodes getting ids ``"<group id>:<index>"``:
  a linked PrimitiveNode inside becomes a group widget whose value goes to the widgets it feeds, a
  Reroute inside becomes a group input or output (followed to its source for an output), and a
  PrimitiveNode outside writes into the group node's widget and so into the inner node (unless that
  widget is also one of the group's input slots, as in groups saved by frontends since 1.16: then
  the frontend drops the input, and so does this);
- list values are wrapped as ``{"__value__": [...]}``; ``_meta.title`` is the node's title.

The reference data in the repository's tests (real frontend output for real templates, and for the
group-node workflows in ``tests/fixtures/groupnodes``) is the arbiter: where a rule here and the
frontend disagree, the frontend is right, even where it loses an input.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowError

__all__ = ["is_ui_format", "ui_to_api", "widget_names", "widgets"]

MUTED, BYPASSED = 2, 4
IO_INPUT, IO_OUTPUT = -10, -20  # the subgraph input and output nodes' ids inside a subgraph
_VIRTUAL = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
_NOTES = frozenset({"Note", "MarkdownNote"})
# Types the frontend renames before it looks them up (legacy names still found in old files).
RENAMED = {
    "T2IAdapterLoader": "ControlNetLoader",
    "ConditioningAverage ": "ConditioningAverage",
    "SDV_img2vid_Conditioning": "SVD_img2vid_Conditioning",
    "Load3DAnimation": "Load3D",
    "Preview3DAnimation": "Preview3D",
}
# Titles from the frontend's English locale where it names a node unlike the server's display_name.
_LOCALE_TITLES = {"FluxKontextMultiReferenceLatentMethod": "FluxKontextMultiReferenceLatentMethod"}
# Widgets the frontend's own extensions add after the server's inputs: (name, sent as an input).
_EXTRA_WIDGETS = {"SaveGLB": [("image", True)]}
_DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_UPLOADS = ("image_upload", "video_upload", "audio_upload", "file_upload", "animated_image_upload")
_SEEDS = ("seed", "noise_seed")


def is_ui_format(data: Any) -> bool:
    """Whether ``data`` looks like a UI-format workflow (top-level ``nodes`` and ``links`` lists)."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


# -- widgets ------------------------------------------------------------------------------------


def _entries(inputs: Mapping, order: Mapping | None = None) -> list[tuple[str, Any]]:
    """(name, spec) of an ``input`` block, required then optional, in ``input_order`` where given."""
    out = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        for name in (order or {}).get(section) or list(specs):
            spec = specs.get(name)
            if isinstance(spec, (list, tuple)) and spec:
                out.append((name, spec))
    return out


def _opts(spec: Any) -> Mapping:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}


def widgets(info: Mapping[str, Any], values: Any = None) -> list[tuple[str, bool, Any]]:
    """The widgets the frontend gives a node of this ``/object_info`` entry, in order, with the
    values stored in ``values`` (``widgets_values``: a list by position, or a dict by name; missing
    ones take the input's default), as ``(name, is_an_input, value)``.

    ``control_after_generate`` and ``upload`` widgets hold a stored value but are not inputs. A
    dynamic combo (``COMFY_DYNAMICCOMBO_V3``) is followed by the widgets of the option it holds,
    named ``"<combo>.<input>"``.
    """
    out: list[tuple[str, bool, Any]] = []

    def take(name: str, spec: Any) -> Any:
        pos = len(out)
        if isinstance(values, Mapping):
            return values[name] if name in values else _default(spec)
        if isinstance(values, list) and pos < len(values):
            return values[pos]
        return _default(spec)

    def walk(entries: list[tuple[str, Any]], prefix: str) -> None:
        for name, spec in entries:
            kind, opts, full = spec[0], _opts(spec), prefix + name
            if opts.get("forceInput"):
                continue
            if kind == _DYNAMIC_COMBO:
                value = take(full, spec)
                out.append((full, True, value))
                chosen = next((o for o in opts.get("options") or () if o.get("key") == value), None)
                if chosen is not None:
                    walk(_entries(chosen.get("inputs") or {}), full + ".")
                continue
            is_combo = isinstance(kind, list) or kind == "COMBO"
            if not (is_combo or kind in _WIDGET_TYPES):
                continue
            out.append((full, True, take(full, spec)))
            control = opts.get("control_after_generate")
            if control is None and kind == "INT":
                control = name in _SEEDS
            if control and (kind in ("INT", "FLOAT") or is_combo):
                out.append(("control_after_generate", False, take("control_after_generate", None)))
                if is_combo:  # a list's control is followed by its filter (addValueControlWidgets)
                    out.append(("control_filter_list", False, take("control_filter_list", None)))
            if is_combo and any(opts.get(u) for u in _UPLOADS):
                out.append(("upload", False, take("upload", None)))

    walk(_entries(info.get("input") or {}, info.get("input_order")), "")
    for name, sent in _EXTRA_WIDGETS.get(str(info.get("name")), ()):
        out.append((name, sent, take(name, None)))
    return out


def _node_inputs(info: Mapping[str, Any]) -> list[dict]:
    """The input slots of a new node of this class, as the frontend makes them: sockets first, then one
    per widget, each in ``/object_info`` order."""
    sockets, widget_slots = [], []
    for name, spec in _entries(info.get("input") or {}, info.get("input_order")):
        kind = spec[0]
        is_widget = isinstance(kind, list) or kind in _WIDGET_TYPES or kind == _DYNAMIC_COMBO
        if is_widget and not _opts(spec).get("forceInput"):
            widget_slots.append(
                {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "widget": {"name": name}}
            )
        else:
            sockets.append({"name": name, "type": kind})
    return sockets + widget_slots


def widget_names(info: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """``(name, is_an_input)`` of the widgets of a new node of this class (see :func:`widgets`)."""
    return [(name, sent) for name, sent, _ in widgets(info)]


def _default(spec: Any) -> Any:
    """The value a new widget of this input spec starts with (used when a file stores too few values)."""
    if spec is None:
        return ""
    kind, opts = spec[0], _opts(spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        options = opts.get("options") or []
        return options[0] if options else None
    if kind == _DYNAMIC_COMBO:
        options = opts.get("options") or []
        return options[0].get("key") if options and isinstance(options[0], Mapping) else None
    return {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}.get(kind)


# -- the graph model ---------------------------------------------------------------------------


@dataclass
class _Link:
    origin_id: Any  # a node id: a number, or a string in some files
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


@dataclass
class _Graph:
    """One level: the root workflow or a subgraph definition."""

    nodes: dict[Any, Mapping]
    links: dict[int, _Link]
    definition: Mapping = field(default_factory=dict)  # the subgraph definition, for inner graphs


@dataclass
class _Dto:
    """One node as the frontend's ExecutableNodeDTO sees it: its graph, path and inputs."""

    node: Mapping
    graph: _Graph
    path: tuple  # ids of the subgraph instances that contain it
    instance: _Dto | None  # the subgraph instance node that contains it
    type: str
    inputs: list[dict]
    outputs: list[dict]
    widgets: dict[str, Any] = field(default_factory=dict)  # name -> value (serialised widgets only)
    widget_order: list[str] = field(default_factory=list)
    subgraph: _Graph | None = None  # for subgraph instance nodes
    group: _GroupConfig | None = None  # for legacy group node instances
    group_node: _Dto | None = None  # for the inner nodes of a legacy group node: the instance
    index: int = -1  # an inner node's position in its group definition
    children: list[_Dto] = field(default_factory=list)  # a legacy group node's inner nodes, by index

    @property
    def id(self) -> str:
        return ":".join(str(p) for p in (*self.path, self.node["id"]))

    @property
    def mode(self) -> int:
        return self.node.get("mode") or 0


def _links(raw: Any, where: str) -> dict[int, _Link]:
    """Links by id; two different links under one id make the workflow ambiguous, so it is refused."""
    out: dict[int, _Link] = {}
    for link in raw or ():
        if isinstance(link, Mapping):
            lid = link.get("id")
            values: tuple[Any, ...] = (
                link.get("origin_id"),
                link.get("origin_slot"),
                link.get("target_id"),
                link.get("target_slot"),
            )
            kind = link.get("type")
        elif isinstance(link, (list, tuple)) and len(link) >= 5:
            lid, values, kind = link[0], tuple(link[1:5]), link[5] if len(link) > 5 else None
        else:
            continue
        if lid is None:
            continue
        link = _Link(values[0], values[1], values[2], values[3], kind)
        if lid in out and out[lid] != link:
            first, second = out[lid], link
            raise WorkflowError(
                f"link {lid} {where} is ambiguous: it is listed twice, from node {first.origin_id} slot "
                f"{first.origin_slot} to node {first.target_id} slot {first.target_slot}, and from node "
                f"{second.origin_id} slot {second.origin_slot} to node {second.target_id} slot {second.target_slot}. "
                "Open the workflow in ComfyUI, reconnect that input and save it again."
            )
        out[lid] = link
    return out


def _graph(data: Mapping, definition: Mapping | None = None) -> _Graph:
    nodes: dict[Any, Mapping] = {}
    for node in data.get("nodes") or ():
        if not isinstance(node, Mapping) or "id" not in node or "type" not in node:
            raise WorkflowError(f"a node of the UI workflow has no 'id' or 'type': {str(node)[:80]}")
        nodes[node["id"]] = node
    where = f"in subgraph {definition.get('name') or definition.get('id')!r}" if definition else "in the workflow"
    return _Graph(nodes, _links(data.get("links"), where), definition or {})


# -- shape --------------------------------------------------------------------------------------


def _bad(where: str, what: str, value: Any) -> WorkflowError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    return WorkflowError(
        f"the UI workflow is damaged: {where} must be {what}, not {shown}. Open it in ComfyUI and save it again."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_graph_shape(data: Mapping, where: str) -> None:
    """The parts of a (sub)graph the conversion reads have the types ComfyUI writes."""
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        raise _bad(f"'nodes' {where}", "a list", nodes)
    for node in nodes:
        if not isinstance(node, Mapping):
            raise _bad(f"a node {where}", "an object", node)
        nid = node.get("id")
        if not (_is_int(nid) or isinstance(nid, str)):
            raise _bad(f"a node's 'id' {where}", "a number or a string", nid)
        here = f"node {nid} {where}"
        if not isinstance(node.get("type"), str):
            raise _bad(f"the 'type' of {here}", "a string", node.get("type"))
        if not _is_int(node.get("mode", 0) or 0):
            raise _bad(f"the 'mode' of {here}", "a number", node.get("mode"))
        if not isinstance(node.get("widgets_values"), (list, Mapping, type(None))):
            raise _bad(f"the 'widgets_values' of {here}", "a list or an object", node.get("widgets_values"))
        if not isinstance(node.get("properties") or {}, Mapping):
            raise _bad(f"the 'properties' of {here}", "an object", node.get("properties"))
        for key in ("inputs", "outputs"):
            slots = node.get(key) or []
            if not isinstance(slots, list) or not all(isinstance(slot, Mapping) for slot in slots):
                raise _bad(f"the '{key}' of {here}", "a list of objects", slots)
        for slot in node.get("inputs") or ():
            if not (slot.get("link") is None or _is_int(slot.get("link"))):
                raise _bad(f"an input's 'link' of {here}", "a link id (a number) or null", slot.get("link"))
            if not isinstance(slot.get("name"), str):
                raise _bad(f"an input's 'name' of {here}", "a string", slot.get("name"))
            widget = slot.get("widget") or {}
            if not isinstance(widget, Mapping) or not isinstance(widget.get("name", ""), str):
                raise _bad(f"an input's 'widget' of {here}", "an object ({'name': ...}) or absent", slot.get("widget"))
        for slot in node.get("outputs") or ():
            links = slot.get("links") or []
            if not isinstance(links, list) or not all(_is_int(x) for x in links):
                raise _bad(f"an output's 'links' of {here}", "a list of link ids", links)
    links = data.get("links") or []
    if not isinstance(links, list):
        raise _bad(f"'links' {where}", "a list", links)
    for link in links:
        if isinstance(link, Mapping):
            fields = [link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
        elif isinstance(link, list) and len(link) >= 5:
            fields = link[:5]
        else:
            raise _bad(f"a link {where}", "[id, from node, from slot, to node, to slot, type]", link)
        ids_ok = all(_is_int(f) or isinstance(f, str) for f in (fields[1], fields[3]))
        if not (_is_int(fields[0]) and ids_ok and _is_int(fields[2]) and _is_int(fields[4])):
            raise _bad(f"link {fields[0]!r} {where}", "numbers (ids and slots)", link)


def _check_shape(ui: Mapping) -> None:
    _check_graph_shape(ui, "in the workflow")
    definitions = ui.get("definitions") or {}
    if not isinstance(definitions, Mapping):
        raise _bad("'definitions'", "an object", definitions)
    subgraphs = definitions.get("subgraphs") or []
    if not isinstance(subgraphs, list):
        raise _bad("'definitions.subgraphs'", "a list", subgraphs)
    for sg in subgraphs:
        if not isinstance(sg, Mapping) or not isinstance(sg.get("id"), str):
            raise _bad("a subgraph definition", "an object with a string 'id'", sg)
        where = f"in subgraph {sg.get('name') or sg['id']!r}"
        _check_graph_shape(sg, where)
        for key in ("inputs", "outputs"):
            slots = sg.get(key) or []
            if not isinstance(slots, list) or not all(isinstance(slot, Mapping) for slot in slots):
                raise _bad(f"the '{key}' {where}", "a list of objects", slots)
            for slot in slots:
                ids = slot.get("linkIds") or []
                if not isinstance(ids, list) or not all(_is_int(x) for x in ids):
                    raise _bad(f"the 'linkIds' of {key[:-1]} {slot.get('name')!r} {where}", "a list of link ids", ids)


# -- legacy group nodes -------------------------------------------------------------------------

GROUP_PREFIXES = ("workflow>", "workflow/")  # the separator was "/" before frontend 1.2.63
PREFIX_V2 = "workflow>"  # as long as the old prefix: kind[len(PREFIX_V2):] is the group's name either way


def _js_sorted(keys: list[int]) -> list[int]:
    """Array.prototype.sort() without a comparator: numbers compared as strings (10 before 2)."""
    return sorted(keys, key=str)


class _GroupConfig:
    """The node definition the frontend's GroupNodeConfig builds from ``extra.groupNodes[name]``:
    which inner inputs become the group's input slots, which inner widgets its widgets, and which
    inner outputs its outputs (all by inner node index)."""

    def __init__(self, name: str, data: Mapping, info: Mapping[str, Any]):
        self.name, self.data = name, data
        self.nodes: list[Mapping] = list(data["nodes"])
        self.links_from: dict[int, dict[int, list]] = {}
        self.links_to: dict[int, dict[int, list]] = {}
        self.external: dict[int, dict[int, Any]] = {}
        for link in data.get("links") or ():
            if link[0] is None:  # a link from outside the group when it was made
                continue
            self.links_from.setdefault(link[0], {}).setdefault(link[1], []).append(link)
            self.links_to.setdefault(link[2], {})[link[3]] = link
        for ext in data.get("external") or ():
            # some 2024 frontends stored the inner node itself, not its index: the frontend's lookup by
            # index never finds such an entry, so it counts for nothing
            if _is_int(ext[0]):
                self.external.setdefault(ext[0], {})[ext[1]] = ext[2] if len(ext) > 2 else None
        self.inputs: dict[str, list] = {}  # the group's input.required: name -> spec (widgets and slots)
        self.input_map: dict[int, dict[int, int]] = {}  # inner index -> inner slot -> group input slot
        self.widget_map: dict[str, tuple[int, str]] = {}  # group widget name -> (inner index, inner input)
        self.output_map: list[tuple[int, int]] = []  # group output slot -> (inner index, inner slot)
        self.input_count = 0
        seen_inputs: dict[str, int] = {}
        converted_later = []
        # PrimitiveNodes inside: their value widget (by node index), and the inner widgets each one feeds
        self.primitive_specs: dict[int, list] = {}
        self.primitive_targets: dict[int, list[tuple[int, str]]] = {}
        for index, node in enumerate(self.nodes):
            spec = self.node_def(index, node, info)
            if spec is None:  # notes, unlinked primitives, reroutes between inner nodes: not part of the definition
                continue
            later = self.node_inputs(index, node, spec, seen_inputs)
            if later is not None:
                converted_later.append(later)
            self.node_outputs(index, spec)
        for later in converted_later:
            later()

    def node_def(self, index: int, node: Mapping, info: Mapping[str, Any]) -> Mapping | None:
        """GroupNodeConfig.getNodeDef: the server's definition, or one made up for a linked PrimitiveNode
        (a ``value`` widget of the type it feeds) or a Reroute that is an input or output of the group."""
        kind = RENAMED.get(node["type"], node["type"])
        if kind in info:
            return info[kind]
        links_from = self.links_from.get(index)
        where = f"group node {PREFIX_V2}{self.name}: its inner node {index} ({kind})"
        out_type: Any
        if kind == "PrimitiveNode":
            if not links_from:
                return None
            first = links_from.get(0) or next(iter(links_from.values()))
            out_type = first[0][5] if len(first[0]) > 5 else None
            if not isinstance(out_type, (str, list)):
                raise _bad(f"the type of the link from {where}", "a type name", out_type)
            if out_type == "COMBO":
                widget = ((node.get("outputs") or [{}])[0].get("widget") or {}).get("name")
                target = info.get(RENAMED.get(self.nodes[first[0][2]]["type"], self.nodes[first[0][2]]["type"])) or {}
                specs = {
                    **((target.get("input") or {}).get("required") or {}),
                    **((target.get("input") or {}).get("optional") or {}),
                }
                if not isinstance(widget, str) or widget not in specs:
                    raise WorkflowError(
                        f"{where} feeds a list widget {widget!r} its target does not have; open the workflow in "
                        "ComfyUI, reconnect it and save it again"
                    )
                out_type = specs[widget][0]
            return {"input": {"required": {"value": [out_type, {}]}}, "output": [out_type]}
        if kind == "Reroute":
            links_to = self.links_to.get(index)
            if links_to and links_from and 0 not in self.external.get(index, {}):
                return None  # between inner nodes only
            out_type = "*"
            if links_from:
                for link in links_from.get(0) or ():
                    slots = self.nodes[link[2]].get("inputs") or ()
                    if out_type == "*" and 0 <= link[3] < len(slots):
                        out_type = slots[link[3]].get("type")
            elif links_to and 0 in links_to:
                origin, slot = links_to[0][0], links_to[0][1]
                outputs = self.nodes[origin].get("outputs") or ()
                out_type = outputs[slot].get("type") if 0 <= slot < len(outputs) else "*"
            else:
                out_type = next(
                    (link[5] for link in self.data.get("links") or () if link[2] == index and len(link) > 5), "*"
                )
                if out_type == "*":
                    out_type = self.external.get(index, {}).get(0) or "*"
            if not isinstance(out_type, (str, list)):
                raise _bad(f"the type {where} passes on", "a type name", out_type)
            key = out_type if isinstance(out_type, str) else ",".join(map(str, out_type))  # as a JS key
            return {"input": {"required": {key: [out_type, {"forceInput": True}]}}, "output": [out_type]}
        return None  # other virtual nodes (notes): the frontend skips them

    def primitive_link(self, link: list, name: str, spec: Any) -> None:
        """GroupNodeConfig.checkPrimitiveConnection: an inner PrimitiveNode feeding input ``name`` gets
        that input's options and a control widget after its value; its value goes to that input."""
        origin = link[0]
        if self.nodes[origin]["type"] != "PrimitiveNode":
            return
        value = self.primitive_specs.get(origin)
        if value is None:  # its link is not of a widget's type, so it has no value widget
            raise WorkflowError(
                f"group node {PREFIX_V2}{self.name}: its inner PrimitiveNode {origin} feeds input {name!r} of inner "
                f"node {link[2]} through a link of type {link[5] if len(link) > 5 else None!r}, which is no widget "
                "type; ComfyUI's frontend cannot load this group either. Open the workflow in ComfyUI, reconnect "
                "the primitive and save it again"
            )
        value[1] = {**_opts(spec), "control_after_generate": True}
        self.primitive_targets.setdefault(origin, []).append((link[2], name))

    def config_of(self, index: int, key: str, name: Any) -> Mapping:
        config = (self.data.get("config") or {}).get(str(index)) or {}
        entry = (config.get(key) or {}).get(str(name)) if isinstance(config, Mapping) else None
        return entry if isinstance(entry, Mapping) else {}

    def input_config(self, index: int, node: Mapping, name: str, seen: dict[str, int], spec: list, extra=None):
        custom = self.config_of(index, "input", name)
        label = next((i.get("label") for i in node.get("inputs") or () if i.get("name") == name), None)
        shown = custom.get("name") or label or name
        key, prefix = shown, ""
        if (node["type"] == "PrimitiveNode" and node.get("title")) or shown in seen:
            prefix = f"{node.get('title') or node['type']} "
            key = shown = f"{prefix}{name}"
            if shown in seen:
                shown = f"{prefix}{seen[shown]} {name}"
        seen[key] = seen.get(key, 1) + 1
        opts = dict(_opts(spec))
        if name in _SEEDS:
            opts["control_after_generate"] = f"{prefix}control_after_generate"
        opts.update(extra or {})
        return shown, [spec[0], opts], custom

    def node_inputs(self, index: int, node: Mapping, spec: Mapping, seen: dict[str, int]):
        specs = {
            **((spec.get("input") or {}).get("required") or {}),
            **((spec.get("input") or {}).get("optional") or {}),
        }
        if not specs:
            return None
        slots, converted = [], {}
        saved = list(node.get("inputs") or ())
        for name, ispec in specs.items():
            kind = ispec[0] if isinstance(ispec, (list, tuple)) and ispec else None
            if isinstance(kind, list) or kind in _WIDGET_TYPES or kind == _DYNAMIC_COMBO:
                at = next(
                    (
                        k
                        for k, i in enumerate(saved)
                        if i.get("name") == name and (i.get("widget") or {}).get("name") == name
                    ),
                    -1,
                )
                if at > -1:
                    converted[at] = name
                else:
                    shown, config, _ = self.input_config(index, node, name, seen, ispec)
                    self.inputs[shown] = config
                    self.widget_map[shown] = (index, name)
                    if node["type"] == "PrimitiveNode":
                        self.primitive_specs[index] = config
            else:
                slots.append(name)
        links_to = self.links_to.get(index, {})
        slot_map = self.input_map.setdefault(index, {})
        for k, name in enumerate(slots):
            if k in links_to:
                self.primitive_link(links_to[k], name, specs[name])
                continue
            shown, config, custom = self.input_config(index, node, name, seen, specs[name])
            if custom.get("visible") is False:
                continue
            self.inputs[shown] = config
            slot_map[k] = self.input_count
            self.input_count += 1

        def convert_later() -> None:
            for k, at in enumerate(_js_sorted(list(converted))):
                name = converted[at]
                if len(slots) + k in links_to:
                    self.primitive_link(links_to[len(slots) + k], name, specs[name])
                    continue
                shown, config, _ = self.input_config(index, node, name, seen, specs[name], {"defaultInput": True})
                self.inputs[shown] = config
                self.widget_map[shown] = (index, name)
                slot_map[len(slots) + k] = self.input_count
                self.input_count += 1

        return convert_later

    def node_outputs(self, index: int, spec: Mapping) -> None:
        for slot in range(len(spec.get("output") or ())):
            linked = slot in self.links_from.get(index, {}) and slot not in self.external.get(index, {})
            visible = self.config_of(index, "output", slot).get("visible", not linked)
            if visible:
                self.output_map.append((index, slot))

    def widget_info(self) -> dict:
        """An ``/object_info``-like entry for the group node's own widgets (see :func:`widgets`)."""
        return {"name": PREFIX_V2 + self.name, "input": {"required": self.inputs}}


def _check_group_shape(ui: Mapping) -> None:
    """``extra.groupNodes``: each definition has the nodes, links and external slots the conversion reads."""
    extra = ui.get("extra") or {}
    groups = extra.get("groupNodes") if isinstance(extra, Mapping) else None
    if groups is None:
        return
    if not isinstance(groups, Mapping):
        raise _bad("'extra.groupNodes'", "an object (group name -> definition)", groups)
    for name, data in groups.items():
        where = f"in the definition of group node {PREFIX_V2}{name}"
        if not isinstance(data, Mapping):
            raise _bad(f"the definition of group node {PREFIX_V2}{name}", "an object", data)
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not all(
            isinstance(n, Mapping) and isinstance(n.get("type"), str) for n in nodes
        ):
            raise _bad(f"'nodes' {where}", "a list of nodes, each with a 'type'", nodes)
        _check_graph_shape({"nodes": [{**n, "id": k} for k, n in enumerate(nodes)], "links": []}, where)
        count = len(nodes)
        links = data.get("links") or []
        if not isinstance(links, list):
            raise _bad(f"'links' {where}", "a list", links)
        for link in links:
            ok = isinstance(link, list) and len(link) >= 4
            ok = ok and (link[0] is None or (_is_int(link[0]) and 0 <= link[0] < count))
            ok = ok and _is_int(link[1]) and _is_int(link[2]) and 0 <= link[2] < count and _is_int(link[3])
            if not ok:
                raise _bad(
                    f"a link {where}",
                    f"[from inner node (0..{count - 1} or null), from slot, to inner node, to slot, ...]",
                    link,
                )
        external = data.get("external") or []
        if not isinstance(external, list) or not all(
            isinstance(e, list) and len(e) >= 2 and (_is_int(e[0]) or isinstance(e[0], Mapping)) and _is_int(e[1])
            for e in external
        ):
            raise _bad(f"'external' {where}", "a list of [inner node, output slot, type]", external)
        if not isinstance(data.get("config") or {}, Mapping):
            raise _bad(f"'config' {where}", "an object", data.get("config"))


# -- conversion -------------------------------------------------------------------------------


class _Converter:
    def __init__(self, ui: Mapping, object_info: Mapping[str, Any]):
        self.info = object_info
        subgraphs = ((ui.get("definitions") or {}).get("subgraphs")) or []
        self.definitions = {sg["id"]: sg for sg in subgraphs if isinstance(sg, Mapping) and "id" in sg}
        self.graphs: dict[str, _Graph] = {}
        self.root = _graph(ui)
        self.dtos: dict[str, _Dto] = {}
        extra = ui.get("extra")
        self.group_data: Mapping = (extra.get("groupNodes") if isinstance(extra, Mapping) else None) or {}
        self.group_configs: dict[str, _GroupConfig] = {}

    # building ------------------------------------------------------------------------------

    def subgraph(self, sid: str) -> _Graph:
        if sid not in self.graphs:
            self.graphs[sid] = _graph(self.definitions[sid], self.definitions[sid])
        return self.graphs[sid]

    def check_types(self) -> None:
        """Every node type must be known to the server, a virtual node, or a subgraph."""
        missing: dict[str, list[str]] = {}

        def walk(graph: _Graph, path: tuple, stack: tuple) -> None:
            for node in graph.nodes.values():
                kind = RENAMED.get(node["type"], node["type"])
                where = ":".join(str(p) for p in (*path, node["id"]))
                if kind in self.definitions:
                    if kind in stack:
                        raise WorkflowError(f"subgraph {kind} contains itself (node {where}); the workflow is broken")
                    walk(self.subgraph(kind), (*path, node["id"]), (*stack, kind))
                elif kind.startswith(GROUP_PREFIXES) and kind not in self.info:
                    name = kind[len(PREFIX_V2) :]
                    if name not in self.group_data:
                        raise WorkflowError(
                            f"node {where} is a group node ({kind!r}) but the workflow's extra.groupNodes has no "
                            f"definition {name!r} (it has: {', '.join(map(repr, self.group_data)) or 'none'}); "
                            "save the workflow again from the ComfyUI that made it"
                        )
                    if path:  # ExecutableGroupNodeChildDTO refuses these too
                        raise WorkflowError(
                            f"node {where} is a group node inside a subgraph, which ComfyUI's frontend does not run "
                            "either: open the workflow in ComfyUI, convert the group node to a subgraph, and save it"
                        )
                    for index, inner in enumerate(self.group_data[name]["nodes"]):
                        inner_kind = RENAMED.get(inner["type"], inner["type"])
                        if inner_kind not in _VIRTUAL and inner_kind not in self.info:
                            missing.setdefault(inner_kind, []).append(f"{where}:{index} in group node {kind!r}")
                elif kind not in _VIRTUAL and kind not in self.info:
                    missing.setdefault(kind, []).append(where)

        walk(self.root, (), ())
        if missing:
            lines = []
            for kind, where in missing.items():
                close = difflib.get_close_matches(kind, list(self.info), n=3, cutoff=0.7)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                lines.append(f"  {kind} (node {', '.join(where[:5])}{' ...' if len(where) > 5 else ''}){hint}")
            raise WorkflowError(
                f"the workflow uses {len(missing)} node type(s) this server does not have:\n"
                + "\n".join(lines)
                + "\nInstall the custom nodes that provide them (e.g. with ComfyUI-Manager), or remove those nodes."
            )

    def build(self, graph: _Graph, path: tuple, instance: _Dto | None) -> None:
        for node in graph.nodes.values():
            kind = RENAMED.get(node["type"], node["type"])
            dto = _Dto(
                node, graph, path, instance, kind, list(node.get("inputs") or ()), list(node.get("outputs") or ())
            )
            if kind.startswith(GROUP_PREFIXES) and kind not in self.info:
                self.build_group(dto, kind[len(PREFIX_V2) :])
            elif kind in self.definitions:
                dto.subgraph = self.subgraph(kind)
                dto.inputs = self.instance_inputs(node, dto.subgraph)
                self.build(dto.subgraph, (*path, node["id"]), dto)
                dto.widgets = self.promoted_widgets(node, dto.subgraph)
            elif kind in self.info:
                self.fill_widgets(dto)
            self.dtos[dto.id] = dto

    def build_group(self, dto: _Dto, name: str) -> None:
        """GroupNodeHandler.getInnerNodes: one node per definition entry, id ``"<group id>:<index>"``,
        configured from the definition, then given the group node's widget values (updateInnerWidgets)."""
        if name not in self.group_configs:
            self.group_configs[name] = _GroupConfig(name, self.group_data[name], self.info)
        config = dto.group = self.group_configs[name]
        path = (*dto.path, dto.node["id"])
        children = []
        for index, inner in enumerate(config.nodes):
            kind = RENAMED.get(inner["type"], inner["type"])
            node = {**inner, "id": index}
            # LGraphNode.configure puts the inputs in the order a new node has them (sockets, then widgets);
            # the definition's links and input map are read against that order, by index, as stored
            inputs = _node_inputs(self.info[kind]) if kind in self.info else list(inner.get("inputs") or ())
            child = _Dto(node, dto.graph, path, None, kind, inputs, list(inner.get("outputs") or ()))
            child.group_node, child.index = dto, index
            if kind in self.info:
                self.fill_widgets(child)
            children.append(child)
            self.dtos[child.id] = child
        # the group node's own widgets; PrimitiveNodes outside may still change them (apply_primitives)
        dto.widgets = {
            shown: value for shown, sent, value in widgets(config.widget_info(), dto.node.get("widgets_values")) if sent
        }
        dto.children = children

    def update_inner_widgets(self, dto: _Dto) -> None:
        """GroupNodeHandler.updateInnerWidgets: the group node's widget values go to the inner widgets
        they stand for (through an inner PrimitiveNode or Reroute to the widgets it feeds)."""
        config, children, values = dto.group, dto.children, dto.widgets
        assert config is not None
        for shown, (index, inner_name) in config.widget_map.items():
            if shown not in values:
                continue
            targets = [(index, inner_name)]
            if config.nodes[index]["type"] == "PrimitiveNode":
                targets = config.primitive_targets.get(index, [])
            elif config.nodes[index]["type"] == "Reroute":
                for link in config.links_from.get(index, {}).get(0) or ():
                    slots = config.nodes[link[2]].get("inputs") or ()
                    widget = (slots[link[3]].get("widget") or {}) if 0 <= link[3] < len(slots) else {}
                    if widget.get("name") is not None:
                        targets.append((link[2], widget["name"]))
            for target, name in targets:
                if name in children[target].widgets:
                    children[target].widgets[name] = values[shown]

    def fill_widgets(self, dto: _Dto) -> None:
        for name, sent, value in widgets(self.info[dto.type], dto.node.get("widgets_values")):
            if sent:
                dto.widgets[name] = value
                dto.widget_order.append(name)

    def instance_inputs(self, node: Mapping, sub: _Graph) -> list[dict]:
        """A subgraph instance's inputs are its definition's; the file says which are linked."""
        saved = {i.get("name"): i for i in node.get("inputs") or () if isinstance(i, Mapping)}
        out = []
        for spec in sub.definition.get("inputs") or ():
            mine = saved.get(spec.get("name"))
            out.append({"name": spec.get("name"), "type": spec.get("type"), "link": (mine or {}).get("link")})
        return out

    def promoted_widgets(self, node: Mapping, sub: _Graph) -> dict[str, Any]:
        """Values of the widgets a subgraph instance shows for inputs that feed inner widgets,
        keyed by the subgraph input's name.

        The instance's ``widgets_values`` follow ``properties.proxyWidgets`` where it is given
        (``["-1", input name]`` for an input's widget; other entries show inner widgets, whose
        values stay the inner node's), else the definition's inputs that feed a widget.
        """
        values = node.get("widgets_values")
        values = values if isinstance(values, list) else []
        specs = {spec.get("name"): spec for spec in sub.definition.get("inputs") or ()}
        proxies = (node.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list):
            order = [p[1] if isinstance(p, list) and len(p) == 2 and str(p[0]) == "-1" else None for p in proxies]
        else:
            order = [name for name, spec in specs.items() if self.inner_widget(sub, spec) is not None]
        out: dict[str, Any] = {}
        for k, name in enumerate(order):
            if name is None or name not in specs:
                continue
            inner = self.inner_widget(sub, specs[name])
            if inner is None:
                continue
            out[name] = values[k] if k < len(values) and values[k] is not None else inner
        return out

    def inner_widget(self, sub: _Graph, spec: Mapping) -> Any:
        """The value of the first inner widget that a subgraph input feeds, or None if it feeds none."""
        for lid in spec.get("linkIds") or ():
            link = sub.links.get(lid)
            if link is None:
                continue
            node = sub.nodes.get(link.target_id)
            if node is None:
                continue
            inputs = node.get("inputs") or ()
            if 0 <= link.target_slot < len(inputs) and inputs[link.target_slot].get("widget"):
                name = inputs[link.target_slot]["widget"].get("name")
                path_dto = next((d for d in self.dtos.values() if d.node is node), None)
                if path_dto is not None and name in path_dto.widgets:
                    return path_dto.widgets[name]
                return _Missing
        return None

    def apply_primitives(self) -> None:
        """PrimitiveNode.applyToGraph: its value goes into every widget it feeds, a group node's too
        (whose inner widgets then take it, unless that input is one of the group's input slots)."""
        for dto in list(self.dtos.values()):
            if dto.type != "PrimitiveNode" or dto.group_node is not None:  # unlinked inside a group node
                continue
            values = dto.node.get("widgets_values")
            if not isinstance(values, list) or not values:
                continue
            for out in dto.outputs:
                for lid in out.get("links") or ():
                    link = dto.graph.links.get(lid)
                    if link is None:
                        continue
                    target = dto.graph.nodes.get(link.target_id)
                    if target is None:
                        continue
                    tdto = self.dtos.get(":".join(str(p) for p in (*dto.path, target["id"])))
                    inputs = target.get("inputs") or ()
                    if tdto is None or not 0 <= link.target_slot < len(inputs):
                        continue
                    widget = inputs[link.target_slot].get("widget") or {}
                    name = widget.get("name")
                    if name in tdto.widgets:
                        tdto.widgets[name] = values[0]

    # resolving links --------------------------------------------------------------------------

    def resolve_input(self, dto: _Dto, slot: int, visited: set, kind: Any = None) -> tuple | None:
        key = (id(dto.graph), dto.node["id"], "I", slot, dto.path)
        if key in visited:
            raise WorkflowError(f"node {dto.id}: its links go round in a circle; the workflow cannot be converted")
        visited.add(key)
        if not 0 <= slot < len(dto.inputs):
            return None
        if dto.group_node is not None:
            return self.resolve_group_child_input(dto, slot)
        inp = dto.inputs[slot]
        lid = inp.get("link")
        if lid is None:
            return None
        link = dto.graph.links.get(lid)
        if link is None:  # a dangling link id: the frontend logs it and goes on
            return None
        if dto.instance is not None and link.origin_id == IO_INPUT:
            outer = dto.instance
            if not 0 <= link.origin_slot < len(outer.inputs):
                return None
            if outer.inputs[link.origin_slot].get("link") is None:
                name = outer.inputs[link.origin_slot].get("name")
                if name in outer.widgets and outer.widgets[name] is not _Missing:
                    return ("value", outer.widgets[name])
                return None
            return self.resolve_input(outer, link.origin_slot, visited)
        source = dto.graph.nodes.get(link.origin_id)
        if source is None:
            return None
        sdto = self.dtos.get(":".join(str(p) for p in (*dto.path, source["id"])))
        if sdto is None:
            return None
        return self.resolve_output(sdto, link.origin_slot, kind if kind is not None else inp.get("type"), visited)

    def resolve_output(self, dto: _Dto, slot: int, kind: Any, visited: set) -> tuple | None:
        key = (id(dto.graph), dto.node["id"], "O", slot, dto.path)
        if key in visited:
            raise WorkflowError(f"node {dto.id}: its links go round in a circle; the workflow cannot be converted")
        visited.add(key)
        if dto.group is not None:
            return self.resolve_group_output(dto, slot, kind, visited)
        if dto.mode == BYPASSED:
            index = self.bypass_slot(dto, slot, kind)
            if index < 0:
                return None
            return self.resolve_input(dto, index, visited)
        if dto.subgraph is not None:
            outputs = dto.subgraph.definition.get("outputs") or ()
            if not 0 <= slot < len(outputs):
                return None
            for lid in outputs[slot].get("linkIds") or ():
                link = dto.subgraph.links.get(lid)
                if link is None:
                    continue
                inner = self.dtos.get(":".join(str(p) for p in (*dto.path, dto.node["id"], link.origin_id)))
                if inner is None:
                    return None
                return self.resolve_output(inner, link.origin_slot, kind, visited)
            return None
        if dto.type in _VIRTUAL:
            if 0 <= slot < len(dto.inputs):
                return self.resolve_input(dto, slot, visited, kind)
            return None
        return ("link", dto.id, slot)

    def resolve_group_child_input(self, dto: _Dto, slot: int) -> tuple | None:
        """ExecutableGroupNodeChildDTO.resolveInput: the origin as linked, not followed further (a link
        from a bypassed, muted or virtual node is dropped at the end like any link to a missing node)."""
        group = dto.group_node
        assert group is not None and group.group is not None
        config = group.group
        outer_slot = config.input_map.get(dto.index, {}).get(slot)
        if outer_slot is not None:  # wired through the group node's input
            if not 0 <= outer_slot < len(group.inputs):
                return None
            lid = group.inputs[outer_slot].get("link")
            link = group.graph.links.get(lid) if lid is not None else None
            if link is None or link.origin_id not in group.graph.nodes:
                return None
            source = ":".join(str(p) for p in (*group.path, link.origin_id))
            return ("link", source, link.origin_slot) if source in self.dtos else None
        inner = config.links_to.get(dto.index, {}).get(slot)
        if inner is None or config.nodes[inner[0]]["type"] == "PrimitiveNode":
            return None
        return ("link", f"{group.id}:{inner[0]}", inner[1])

    def resolve_group_output(self, dto: _Dto, slot: int, kind: Any, visited: set) -> tuple | None:
        """ExecutableGroupNodeDTO.resolveOutput: bypassed, the group passes on its first input of exactly
        the consumer's type (its own slot first); else the output is the inner node's (updateLink)."""
        assert dto.group is not None
        if dto.mode == BYPASSED:
            for index in (slot, *range(len(dto.inputs))):
                if 0 <= index < len(dto.inputs) and dto.inputs[index].get("type") == kind:
                    return self.resolve_input(dto, index, visited)
            return None
        if not 0 <= slot < len(dto.group.output_map):
            raise WorkflowError(
                f"group node {dto.id} ({dto.type}): its output {slot} is linked but its definition has no such "
                "output; open the workflow in ComfyUI and save it again"
            )
        index, inner_slot = dto.group.output_map[slot]
        config, seen = dto.group, set()
        while config.nodes[index]["type"] == "Reroute":  # GroupNodeHandler.updateLink follows inner reroutes
            if index in seen:
                raise WorkflowError(f"group node {dto.id} ({dto.type}): its inner Reroutes feed each other in a circle")
            seen.add(index)
            link = config.links_to.get(index, {}).get(0)
            if link is None:  # fed from outside the group or not at all: the frontend fails here too
                raise WorkflowError(
                    f"group node {dto.id} ({dto.type}): its output {slot} comes from an inner Reroute that is not fed "
                    "from inside the group, which ComfyUI's frontend cannot queue either (its graphToPrompt "
                    "fails); open the workflow in ComfyUI, convert the group node to nodes, and save it again"
                )
            index, inner_slot = link[0], link[1]
        return ("link", f"{dto.id}:{index}", inner_slot)

    def bypass_slot(self, dto: _Dto, slot: int, kind: Any) -> int:
        inputs = dto.inputs
        if kind in ("*", "", None):
            return slot if len(inputs) > slot else 0
        out_type = dto.outputs[slot].get("type") if 0 <= slot < len(dto.outputs) else None
        if 0 <= slot < len(inputs):
            opposite = inputs[slot].get("type")
            if _valid(opposite, out_type) and _valid(opposite, kind):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == kind:
                return i
        for i, inp in enumerate(inputs):
            if _valid(inp.get("type"), out_type) and _valid(inp.get("type"), kind):
                return i
        return -1

    # output -------------------------------------------------------------------------------------

    def convert(self) -> dict:
        self.check_types()  # the shape was checked before (see ui_to_api)
        self.build(self.root, (), None)
        self.apply_primitives()
        for dto in list(self.dtos.values()):
            if dto.group is not None:
                self.update_inner_widgets(dto)
        output: dict[str, dict] = {}
        for dto in self.dtos.values():
            if (
                dto.subgraph is not None
                or dto.group is not None
                or dto.type in _VIRTUAL
                or dto.mode in (MUTED, BYPASSED)
            ):
                continue
            inputs: dict[str, Any] = {}
            for name in dto.widget_order:
                inputs[name] = _wrap(dto.widgets[name])
            for slot, inp in enumerate(dto.inputs):
                resolved = self.resolve_input(dto, slot, set())
                if resolved is None:
                    continue
                if resolved[0] == "value":
                    inputs[str(inp.get("name"))] = _wrap(resolved[1])
                else:
                    inputs[str(inp.get("name"))] = [resolved[1], resolved[2]]
            title = dto.node.get("title")
            if title is None:
                info = self.info[dto.type]
                title = _LOCALE_TITLES.get(dto.type) or info.get("display_name") or info.get("name") or dto.type
            output[dto.id] = {"inputs": inputs, "class_type": dto.type, "_meta": {"title": title}}
        for node in output.values():
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del node["inputs"][name]
        return output


class _MissingType:
    def __repr__(self) -> str:
        return "<missing>"


_Missing = _MissingType()


def _valid(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: wildcards, equal types, or comma-separated lists that share one."""
    if a in ("", "*", None, 0) or b in ("", "*", None, 0) or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return bool({t.strip() for t in a.split(",")} & {t.strip() for t in b.split(",")})


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict:
    """The API-format prompt ComfyUI's frontend makes of the UI-format workflow ``ui``.

    ``object_info`` is the server's ``GET /object_info``. Raises WorkflowError naming node types
    the server lacks (with close matches) and links that cannot be resolved.
    """
    if not is_ui_format(ui):
        raise WorkflowError("not a UI-format workflow: it has no 'nodes' list")
    _check_shape(ui)
    _check_group_shape(ui)
    return _Converter(ui, object_info).convert()
