"""Load recorded ComfyUI protocol traces and normalise message sequences.

A trace (``fixtures/*.jsonl``, copied from ``shared/protocol-traces`` with traceback text
replaced by placeholders) is a list of records, one per line:

* ``{"src": "ws:<label>", "event": "open"|"close"|"sent", ...}``
* ``{"src": "ws:<label>", "msg": {"type": ..., "data": ...}}``   (text frame received)
* ``{"src": "ws:<label>", "binary": true, "len": N, "first8": "<hex>", "event_type": T, "metadata"?}``
* ``{"src": "http", "method", "path", "req"?, "status", "headers", "body"|"body_text"?}``
* ``{"src": "note", "text": ...}``

The live recorder (:mod:`.live`) writes exactly the same record format, so every function here
applies to a recorded trace and to a simulator run alike.

Normalisation keeps what a client may rely on and drops what varies between runs:
timestamps, prompt ids, sids/client ids, file counters (``tiny_00011_.png``), random temp-file
infixes, ``create_time``, and the global queue ``number`` (the recording server had run earlier
scenarios, so its counter did not start at 0; numbers are compared relative to the scenario's
first POST instead, see :func:`number_shape`). Timestamps are only checked to be epoch
milliseconds (ints); sids to equal the socket's own clientId.

Prompt ids are not dropped blindly: every message that carries a ``prompt_id`` is rendered with
``p#k``, the ordinal of the successful ``POST /prompt`` that returned that id in this scenario.
That makes the comparison check *which* prompt each targeted message belongs to (and the
execution order of prompts) without depending on the id's value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CID_RE = re.compile(r"\b[A-Z]-[0-9a-f]{8}\b")  # client ids of the recorder: "A-52c49eba"
COUNTER_RE = re.compile(r"_\d{5}_")  # SaveImage counter: tiny_00011_.png
TEMP_RE = re.compile(r"ComfyUI_temp_[a-z]{5}_")  # PreviewImage random infix

# keys whose *values* vary between runs (compared by JSON type only)
VOLATILE_KEYS = frozenset(
    {
        "timestamp",
        "create_time",
        "execution_start_time",
        "execution_end_time",
        "sid",
        "client_id",
        "prompt_id",
        "id",
        "number",
        "priority",
    }
)


# lists that ComfyUI builds from sets (``executed``, ``current_outputs`` of execution_error /
# execution_interrupted): their order depends on string hashing, so they compare as sets
SET_KEYS = frozenset({"executed", "current_outputs"})


# --------------------------------------------------------------------------- loading


@dataclass
class Trace:
    name: str
    records: list[dict] = field(default_factory=list)

    def labels(self) -> list[str]:
        out: list[str] = []
        for r in self.records:
            src = r["src"]
            if src.startswith("ws:") and src[3:] not in out:
                out.append(src[3:])
        return out

    def socket(self, label: str) -> list[dict]:
        """Frames received by one socket (text and binary), in order."""
        return socket_frames(self.records, label)

    def http(self) -> list[dict]:
        return [r for r in self.records if r["src"] == "http"]

    def posts(self) -> list[dict]:
        return [r for r in self.http() if r["method"] == "POST" and r["path"] in ("/prompt", "/api/prompt")]

    def prompt_bodies(self) -> list[dict]:
        """Request bodies of every POST /prompt that sent JSON, in order."""
        return [r["req"] for r in self.posts() if "req" in r]

    def client_id(self, label: str) -> str:
        for r in self.records:
            if r["src"] == f"ws:{label}" and r.get("event") == "open":
                return r["client_id"]
        raise KeyError(label)


def load(name: str) -> Trace:
    """Load ``fixtures/<name>*.jsonl``; ``name`` is the scenario prefix, e.g. ``"a_"`` or ``"c3"``."""
    prefix = name if name.endswith("_") else name + "_"
    matches = sorted(FIXTURES.glob(prefix + "*.jsonl"))
    if len(matches) != 1:
        raise FileNotFoundError(f"no unique fixture for {name!r}: {matches}")
    path = matches[0]
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Trace(path.stem, records)


def socket_frames(records: Iterable[dict], label: str, window: tuple[int, int] | None = None) -> list[dict]:
    src = f"ws:{label}"
    records = list(records)
    lo, hi = window if window is not None else (0, len(records))
    return [r for r in records[lo:hi] if r["src"] == src and "event" not in r and ("msg" in r or r.get("binary"))]


# --------------------------------------------------------------------------- masking


def mask_str(s: str) -> str:
    s = UUID_RE.sub("<uuid>", s)
    s = CID_RE.sub("<cid>", s)
    s = COUNTER_RE.sub("_<n>_", s)
    s = TEMP_RE.sub("ComfyUI_temp_<rnd>_", s)
    return s


def type_tag(v: Any) -> str:
    if v is None:
        return "<null>"
    if isinstance(v, bool):
        return "<bool>"
    if isinstance(v, int):
        return "<int>"
    if isinstance(v, float):
        return "<float>"
    if isinstance(v, str):
        return "<str>"
    if isinstance(v, list):
        return "<list>"
    return "<dict>"


def _queue_item(item: Any, ignore: frozenset) -> Any:
    # [number, prompt_id, prompt, extra_data, outputs_to_execute]
    if not (isinstance(item, list) and len(item) == 5):
        return ["<not a 5-element queue item>", mask(item, ignore)]
    number, pid, prompt, extra, outputs = item
    return [
        type_tag(number),
        type_tag(pid),
        mask(prompt, ignore),
        mask(extra, ignore),
        sorted(outputs) if isinstance(outputs, list) else type_tag(outputs),
    ]


def mask(v: Any, ignore: Iterable[str] = (), _key: str | None = None) -> Any:
    """JSON value with run-dependent parts replaced by placeholders.

    Values under :data:`VOLATILE_KEYS` (and ``ignore``) become their JSON type tag; strings
    lose uuids, client ids, file counters and temp infixes; queue items (``/queue`` lists and
    history ``prompt``) keep their 5-element structure with number/id reduced to type tags.
    """
    ignore = frozenset(ignore)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            mk = mask_str(k)
            if mk != k:  # several prompt ids as keys: keep them apart, in order
                mk = f"{mk}#{sum(1 for o in out if o.startswith(mk))}"
            if k in VOLATILE_KEYS or k in ignore:
                out[mk] = type_tag(x)
            elif k in ("queue_running", "queue_pending") and isinstance(x, list):
                out[mk] = [_queue_item(i, ignore) for i in x]
            elif k == "prompt" and isinstance(x, list):
                out[mk] = _queue_item(x, ignore)
            elif k in SET_KEYS and isinstance(x, list):
                out[mk] = sorted(mask(x, ignore, k), key=str)
            else:
                out[mk] = mask(x, ignore, k)
        return out
    if isinstance(v, list):
        return [mask(x, ignore, _key) for x in v]
    if isinstance(v, str):
        return mask_str(v)
    return v


def shape(v: Any) -> Any:
    """Keys only, all the way down (for environment-dependent bodies like /system_stats)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return ["<list>", shape(v[0])] if v else ["<list>"]
    return type_tag(v)


def sanitize(v: Any) -> Any:
    """What was done to the fixtures: traceback text -> ``["<traceback>"]``, each recorded
    ``current_inputs`` value -> ``"<value>"`` (structure kept). Apply to live records too."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k == "traceback" and isinstance(x, list):
                out[k] = ["<traceback>"]
            elif k == "current_inputs" and isinstance(x, dict):
                out[k] = {ik: (["<value>"] * len(iv) if isinstance(iv, list) else "<value>") for ik, iv in x.items()}
            else:
                out[k] = sanitize(x)
        return out
    if isinstance(v, list):
        return [sanitize(x) for x in v]
    return v


def note_index(records: list[dict], prefix: str) -> int:
    """Index of the first note whose text starts with ``prefix`` (live runs add the same notes)."""
    for i, r in enumerate(records):
        if r["src"] == "note" and r["text"].startswith(prefix):
            return i
    raise KeyError(prefix)


# --------------------------------------------------------------------------- prompt ordinals


class Ordinals:
    """Map prompt ids to the ordinal of the POST /prompt that returned them.

    A client-supplied ``prompt_id`` can be reused (trace h); the k-th ``execution_start``
    seen for an id on a socket selects the k-th POST that returned it.
    """

    def __init__(self, records: Iterable[dict]):
        self.by_id: dict[str, list[int]] = {}
        n = 0
        for r in records:
            if (
                r["src"] == "http"
                and r["method"] == "POST"
                and r["path"] in ("/prompt", "/api/prompt")
                and r["status"] == 200
                and isinstance(r.get("body"), dict)
                and "prompt_id" in r["body"]
            ):
                self.by_id.setdefault(r["body"]["prompt_id"], []).append(n)
                n += 1
        self.starts: dict[str, int] = {}

    def seen_start(self, pid: str) -> None:
        self.starts[pid] = self.starts.get(pid, 0) + 1

    def __call__(self, pid: Any) -> str:
        if not isinstance(pid, str) or pid not in self.by_id:
            return "p?"
        lst = self.by_id[pid]
        k = max(self.starts.get(pid, 0) - 1, 0)
        return f"p#{lst[min(k, len(lst) - 1)]}"


# --------------------------------------------------------------------------- WS messages


def _num(x: Any) -> str:
    """Numbers keep their JSON type (ComfyUI sends 0.0/1.0 for plain nodes, ints for steps)."""
    return repr(x)


def _keys(d: dict) -> str:
    return "{" + ",".join(sorted(d)) + "}"


def _dump(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def norm_frame(rec: dict, ordinal: Ordinals, *, queue_values: bool = True, client_id: str | None = None) -> str:
    """One received frame as a comparable string.

    ``queue_values=False`` drops ``queue_remaining`` from ``status`` (used where the count
    depends on the timing of concurrent POSTs).
    """
    if rec.get("binary"):
        et = rec["event_type"]
        s = f"binary:{et}"
        first8 = rec.get("first8", "")
        if et == 1 and len(first8) >= 16:
            s += f" fmt={int(first8[8:16], 16)}"  # 1 = JPEG, 2 = PNG
        if et == 4:
            meta = rec.get("metadata")
            if isinstance(meta, dict):
                s += (
                    f" meta={_keys(meta)} node={meta.get('node_id')} "
                    f"image_type={meta.get('image_type')} {ordinal(meta.get('prompt_id'))}"
                )
            else:
                s += " meta=<missing>"
        return s

    msg = rec["msg"]
    t = msg.get("type")
    d = msg.get("data")
    if not isinstance(d, dict):
        return f"{t} data={type_tag(d)}"
    if t == "execution_start" and "prompt_id" in d:
        ordinal.seen_start(d["prompt_id"])
    s = f"{t}{_keys(d)}"
    if "prompt_id" in d:
        s += f" {ordinal(d['prompt_id'])}"
    if "timestamp" in d:  # epoch milliseconds (ints around 1.8e12)
        ts = d["timestamp"]
        s += " ts=ms" if isinstance(ts, int) and not isinstance(ts, bool) and ts > 10**12 else f" ts={ts!r}"
    if "sid" in d:
        s += " sid=own" if d["sid"] == client_id else f" sid={d['sid']!r}"

    if t == "status":
        st = d.get("status")
        ei = st.get("exec_info") if isinstance(st, dict) else None
        s += f" status={_keys(st) if isinstance(st, dict) else type_tag(st)}"
        s += f" exec_info={_keys(ei) if isinstance(ei, dict) else type_tag(ei)}"
        if queue_values and isinstance(ei, dict):
            s += f" q={ei.get('queue_remaining')}"
    elif t == "executing":
        s += f" node={d.get('node')}"
        if "display_node" in d:
            s += f" display={d.get('display_node')}"
    elif t == "executed":
        s += f" node={d.get('node')} display={d.get('display_node')} output={_dump(mask(d.get('output')))}"
    elif t == "progress":
        s += f" node={d.get('node')} {_num(d.get('value'))}/{_num(d.get('max'))}"
    elif t == "progress_state":
        nodes = d.get("nodes")
        if isinstance(nodes, dict):
            parts = []
            entry_keys = set()
            for nid, e in nodes.items():
                if not isinstance(e, dict):
                    parts.append(f"{nid}:{type_tag(e)}")
                    continue
                entry_keys.add(_keys(e))
                parts.append(
                    f"{nid}:{e.get('state')}:{_num(e.get('value'))}/{_num(e.get('max'))}"
                    f"{'' if e.get('node_id') == nid else '!node_id=' + str(e.get('node_id'))}"
                    f"{'' if e.get('prompt_id') == d.get('prompt_id') else '!prompt_id'}"
                    f"{'' if e.get('display_node_id') == nid else '!display=' + str(e.get('display_node_id'))}"
                    f"{'' if e.get('real_node_id') == nid else '!real=' + str(e.get('real_node_id'))}"
                    f"{'' if e.get('parent_node_id', 0) is None else '!parent'}"
                )
            s += f" nodes=[{' '.join(parts)}] entry={'|'.join(sorted(entry_keys))}"
        else:
            s += f" nodes={type_tag(nodes)}"
    elif t == "execution_cached":
        s += f" nodes={d.get('nodes')}"  # prompt order in ComfyUI: compared as is
    elif t == "execution_error":
        ci = d.get("current_inputs")
        s += (
            f" node_id={d.get('node_id')} node_type={d.get('node_type')}"
            f" exception_type={d.get('exception_type')} message={d.get('exception_message')!r}"
            f" executed={sorted(d.get('executed') or [])}"
            f" traceback={type_tag(d.get('traceback'))}"
            f" current_inputs={_keys(ci) if isinstance(ci, dict) else type_tag(ci)}"
            f" current_outputs={sorted(d.get('current_outputs') or [])}"
        )
    elif t == "execution_interrupted":
        s += f" node_id={d.get('node_id')} node_type={d.get('node_type')} executed={sorted(d.get('executed') or [])}"
    elif t == "feature_flags":
        s += f" data={_dump(d)}"
    return s


def norm_socket(
    records: list[dict],
    label: str,
    *,
    statuses: str = "full",
    window: tuple[int, int] | None = None,
    relabel: bool = False,
) -> list[str]:
    """Normalised frames of one socket.

    statuses: ``"full"`` keeps ``status`` with ``queue_remaining``; ``"keys"`` keeps status
    messages but not the count; ``"drop"`` removes them (see :func:`status_messages`).
    ``window`` = (first, end) record indices: only frames recorded there are returned (prompt
    ordinals still come from the whole scenario).
    ``relabel``: prompt tags renumbered per socket by first appearance (``q#0``, ``q#1``...),
    for scenarios where the POST order itself is racy (concurrent POSTs from several clients).
    """
    ordinal = Ordinals(records)
    cid = next((r.get("client_id") for r in records if r["src"] == f"ws:{label}" and r.get("event") == "open"), None)
    out = []
    if window is not None:  # replay execution_start counts before the window (reused prompt ids)
        for rec in socket_frames(records, label, (0, window[0])):
            if "msg" in rec and rec["msg"].get("type") == "execution_start":
                ordinal.seen_start(rec["msg"]["data"].get("prompt_id"))
    for rec in socket_frames(records, label, window):
        is_status = "msg" in rec and rec["msg"].get("type") == "status"
        if is_status and statuses == "drop":
            continue
        out.append(norm_frame(rec, ordinal, queue_values=(statuses == "full"), client_id=cid))
    if relabel:
        seen: dict[str, str] = {}

        def sub(m: re.Match) -> str:
            return seen.setdefault(m.group(0), f"q#{len(seen)}")

        out = [re.sub(r"p#\d+", sub, x) for x in out]
    return out


def status_messages(records: list[dict], label: str, *, values: bool = True) -> list[str]:
    return [x for x in norm_socket(records, label, statuses="full" if values else "keys") if x.startswith("status{")]


def queue_counts(records: list[dict], label: str) -> list[Any]:
    return [
        r["msg"]["data"]["status"]["exec_info"]["queue_remaining"]
        for r in socket_frames(records, label)
        if "msg" in r and r["msg"].get("type") == "status"
    ]


def prompt_order(records: list[dict], label: str) -> list[str]:
    """Ordinals (``p#k``) of prompts in the order their first message reached ``label``."""
    ordinal = Ordinals(records)
    seen: list[str] = []
    for r in socket_frames(records, label):
        pid = None
        if "msg" in r and isinstance(r["msg"].get("data"), dict):
            if r["msg"].get("type") == "execution_start":
                ordinal.seen_start(r["msg"]["data"].get("prompt_id"))
            pid = r["msg"]["data"].get("prompt_id")
        elif r.get("binary") and isinstance(r.get("metadata"), dict):
            pid = r["metadata"].get("prompt_id")
        if pid is not None:
            o = ordinal(pid)
            if not seen or seen[-1] != o:
                seen.append(o)
    return seen


def terminal_then_status_then_done(norm: list[str]) -> list[str]:
    """For each prompt, what lies between its terminal event and its ``executing null``.

    ComfyUI writes history, then broadcasts ``status``, then sends ``executing {node: null}``
    (protocol §5.2 steps 7-9). Returns one string per terminal event: the types seen until
    the matching done message, statuses collapsed to ``status+``.
    """
    out = []
    for i, s in enumerate(norm):
        if s.startswith(("execution_success{", "execution_error{", "execution_interrupted{")):
            pid = s.split(" ")[1]
            between = []
            for s2 in norm[i + 1 :]:
                if s2.startswith("executing{") and " node=None" in s2 and f" {pid} " in s2 + " ":
                    break
                between.append(s2.split("{")[0])
            else:
                between.append("<no executing null>")
            collapsed = []
            for b in between:
                b = "status+" if b == "status" else b
                if not (collapsed and collapsed[-1] == b == "status+"):
                    collapsed.append(b)
            out.append(f"{s.split('{')[0]} {pid} -> {' '.join(collapsed)} -> done")
    return out


# --------------------------------------------------------------------------- HTTP


def number_shape(n: Any, base: int) -> str:
    """A POST /prompt ``number`` relative to the scenario's first counter value ``base``.

    Counter values are ints (negated for ``front``); an explicit ``number`` is echoed as float.
    """
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return type_tag(n)
    if isinstance(n, float):
        return f"float({n})"
    if n >= 0:
        return f"counter+{n - base}"
    return f"-(counter+{-n - base})"


def path_shape(path: str) -> str:
    path = mask_str(path)
    path = re.sub(r"^(/api)?/history/[^?]+", r"\1/history/{id}", path)
    path = re.sub(r"^/api/jobs/[^?]+", "/api/jobs/{id}", path)
    return path


def norm_http(rec: dict, *, ignore: Iterable[str] = (), with_body: bool | None = None, body: str = "mask") -> tuple:
    """(method, path shape, request shape, status, content type, disposition?, body).

    ``with_body=None`` compares the body only if the record carries one (the recorder did not
    store every body). ``body="shape"`` compares keys only; ``body="entries"`` compares the
    masked values of an ``{id: entry}`` object without its keys.
    """
    headers = rec.get("headers") or {}
    ct = headers.get("Content-Type")
    disp = "Content-Disposition" in headers
    req = rec.get("req")
    req_shape = mask(req, ignore) if req is not None else ("<raw>" if "req_raw" in rec else None)
    has_body = "body" in rec or "body_text" in rec
    if with_body is None:
        with_body = has_body
    b: Any = "<not compared>"
    if with_body:
        if "body" in rec:
            if body == "shape":
                b = shape(rec["body"])
            elif body == "entries":  # {id: entry}: ids dropped, entries masked
                b = mask(list(rec["body"].values()), ignore)
            else:
                b = mask(rec["body"], ignore)
        elif "body_text" in rec:
            b = ("text", rec["body_text"])
        else:
            b = ("empty", rec.get("body_len", 0))
    elif rec.get("body_len") == 0 or (not has_body and headers.get("Content-Length") == "0"):
        b = ("empty", 0)
    return (
        rec["method"],
        path_shape(rec["path"]),
        _dump(req_shape),
        rec["status"],
        ct,
        disp,
        b if isinstance(b, (str, tuple)) else _dump(b),
    )


def http_records(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r["src"] == "http"]


def compare_http(
    expected: list[dict],
    actual: list[dict],
    *,
    ignore: Iterable[str] = (),
    ignore_at: dict[int, Iterable[str]] | None = None,
    body_mode: dict[int, str] | None = None,
) -> tuple[list, list]:
    """Normalise two HTTP exchange lists pairwise (body compared where the trace has one).

    ``ignore``: extra keys compared by type only, everywhere; ``ignore_at``/``body_mode``:
    per exchange index (``body_mode[i] = "shape"`` compares keys only).
    """
    ignore_at = ignore_at or {}
    body_mode = body_mode or {}
    exp, act = [], []
    for i, e in enumerate(expected):
        has = "body" in e or "body_text" in e
        ig = tuple(ignore) + tuple(ignore_at.get(i, ()))
        exp.append(norm_http(sanitize(e), ignore=ig, with_body=has, body=body_mode.get(i, "mask")))
        if i < len(actual):
            act.append(norm_http(sanitize(actual[i]), ignore=ig, with_body=has, body=body_mode.get(i, "mask")))
    for a in actual[len(expected) :]:
        act.append(norm_http(a))
    return exp, act


def post_numbers(records: Iterable[dict]) -> list[str]:
    """``number`` of every successful POST /prompt, relative to the scenario's first one."""
    nums = [
        r["body"]["number"]
        for r in http_records(records)
        if r["method"] == "POST" and r["path"] in ("/prompt", "/api/prompt") and r["status"] == 200
    ]
    base = next((n for n in nums if isinstance(n, int) and n >= 0), 0)
    return [number_shape(n, base) for n in nums]


def with_client(body: dict, client_id: str | None) -> dict:
    """A recorded request body with the recorder's client_id replaced (or removed)."""
    body = json.loads(json.dumps(body))
    if client_id is None:
        body.pop("client_id", None)
    elif "client_id" in body:
        body["client_id"] = client_id
    return body


def _lines(items: list) -> list[str]:
    out = []
    for i, it in enumerate(items):
        parts = it if isinstance(it, tuple) else (it,)
        for p in parts:
            if isinstance(p, str) and p[:1] in "{[":
                try:
                    out += [f"[{i}] {ln}" for ln in json.dumps(json.loads(p), indent=1, sort_keys=True).splitlines()]
                    continue
                except ValueError:
                    pass
            out.append(f"[{i}] {p}")
    return out


def assert_same(actual: list, expected: list, what: str = "") -> None:
    """``actual == expected`` with a readable unified diff (trace = expected, sim = actual)."""
    if actual == expected:
        return
    import difflib

    diff = "\n".join(difflib.unified_diff(_lines(expected), _lines(actual), "trace", "simulator", lineterm="", n=2))
    raise AssertionError(f"{what}: simulator deviates from the trace\n{diff}")


def swap_node_runs(records: list[dict], label: str, prompt_id: str, first: str, second: str) -> list[dict]:
    """A copy of ``records`` in which socket ``label`` sees node ``second`` run before ``first``.

    For equivalent schedules: when several output nodes become ready together, ComfyUI runs
    them in the order of ``outputs_to_execute``, which ``validate_prompt`` builds as
    ``list(set)`` -- an order that depends on the server process's string hashing. A trace
    shows one such order; this derives the other one: the two runs (``progress_state``
    running ... ``progress_state`` finished, contiguous) are swapped and every
    ``progress_state`` of the prompt from there on is rebuilt (its ``nodes`` object lists the
    nodes in the order they started).
    """
    import copy

    recs = copy.deepcopy(records)
    idx = [
        i
        for i, r in enumerate(recs)
        if r["src"] == f"ws:{label}" and "event" not in r and ("msg" in r or r.get("binary"))
    ]

    def ps(i: int) -> dict | None:
        m = recs[i].get("msg") or {}
        if m.get("type") == "progress_state" and m["data"].get("prompt_id") == prompt_id:
            return m["data"]["nodes"]
        return None

    def run(node: str) -> tuple[int, int]:
        lo = next(k for k, i in enumerate(idx) if ps(i) is not None and ps(i).get(node, {}).get("state") == "running")
        hi = next(
            k
            for k, i in enumerate(idx)
            if k > lo and ps(i) is not None and ps(i).get(node, {}).get("state") == "finished"
        )
        return lo, hi

    (a0, a1), (b0, b1) = run(first), run(second)
    assert a1 + 1 == b0, "runs are not contiguous"
    final_first = copy.deepcopy(ps(idx[a1])[first])
    final_second = copy.deepcopy(ps(idx[b1])[second])
    old = [recs[i] for i in idx[a0 : b1 + 1]]
    new = old[b0 - a0 :] + old[: b0 - a0]
    for k, i in enumerate(idx[a0 : b1 + 1]):
        recs[i] = new[k]
    n_second = b1 - b0 + 1
    for k, i in enumerate(idx[a0:]):
        m = recs[i].get("msg") or {}
        if (
            m.get("type") in ("execution_success", "execution_error", "execution_interrupted")
            and m["data"].get("prompt_id") == prompt_id
        ):
            break  # end of this run of the prompt id
        nodes = ps(i)
        if nodes is None:
            continue
        rest = {n: e for n, e in nodes.items() if n not in (first, second)}
        if k < n_second:  # second runs, first not started
            rest[second] = nodes[second]
        elif k < b1 - a0 + 1:  # first runs after second finished
            rest[second] = copy.deepcopy(final_second)
            rest[first] = nodes[first]
        else:
            rest[second] = nodes.get(second, final_second)
            rest[first] = nodes.get(first, final_first)
        nodes.clear()
        nodes.update(rest)
    return recs


def status_before_start(norm: list[str]) -> list[str]:
    """What directly precedes each ``execution_start``: the worker broadcasts ``status`` when it
    dequeues a prompt, then sends ``execution_start`` (a concurrent POST's status may slip in
    between, which is still a status)."""
    out = []
    for i, s in enumerate(norm):
        if s.startswith("execution_start{"):
            prev = norm[i - 1].split("{")[0] if i else "<nothing>"
            out.append(f"{prev} -> execution_start {s.split(' ')[1]}")
    return out


def assert_socket_conforms(live: list[dict], trace: list[dict], label: str, **norm) -> None:
    """One socket's frames, normalised the same way on both sides, must match the trace."""
    assert_same(norm_socket(live, label, **norm), norm_socket(trace, label, **norm), label)


def assert_http_conforms(trace: list[dict], live: list[dict], **compare) -> None:
    """Every HTTP exchange of the scenario must match the trace's, pairwise."""
    exp, act = compare_http(http_records(trace), http_records(live), **compare)
    assert_same(act, exp, "HTTP")
