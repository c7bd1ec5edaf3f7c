"""Comfy Cloud as a backend: what differs from a local ComfyUI, in one place.

The cloud speaks an API "compatible with local ComfyUI's" (docs.comfy.org, Development > Cloud;
``docs/cloud.md`` lists each fact with its source). The transport consults a :class:`Profile`
for the differences:

- every route lives under ``/api``, every request carries ``X-API-Key``, and the WebSocket
  takes the key as its ``token`` query parameter;
- outcomes and outputs come from ``/api/jobs/{id}`` (there is no ``/history/{id}``);
- ``/api/view`` answers 302 to a signed URL on a storage host: it is fetched *without* any
  credential (a redirect to another origin never carries the key), and ``subfolder`` means
  nothing there (flat, content-addressed storage);
- ``429`` means "not now": the request was refused, so it is sent again after ``Retry-After``
  (or a backoff), however long that takes, and cannot run a prompt twice;
- ``/api/interrupt`` stops *every* running job of the account, so comfynb never calls it there,
  and there is no ``/free``: that degrades with a clear message; the history is paged through
  ``/api/history_v2`` (newest first, another entry shape: :mod:`comfynb.cloudapi`);
- a refusal for the account (402, or a 429 "Payment required") is not "busy": it fails the job
  at once with :class:`~comfynb.errors.PaymentRequired` (:func:`account_problem`).

A URL is a cloud backend when its host is ``cloud.comfy.org`` or when it is wrapped with
:class:`Cloud` (a simulator in cloud mode, a proxy). The plan's number of parallel jobs
(``max_jobs``) becomes that backend's ``max_inflight``.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yarl

CLOUD_HOST = "cloud.comfy.org"
DEFAULT_URL = f"https://{CLOUD_HOST}"
DEFAULT_MAX_JOBS = 3  # the Creator plan's concurrent jobs (API access starts there); the Pro plan has 5
ENV_CLOUD_KEY = "COMFY_CLOUD_API_KEY"
ENV_PARTNER_KEY = "COMFY_API_KEY"
PARTNER_FIELD = "api_key_comfy_org"
MAX_BUSY_WAIT = 30.0  # longest pause between two tries after a 429 without Retry-After
BUSY_WARNING_EVERY = 60.0  # seconds between two warnings that a server keeps answering 429
REDIRECTS = (301, 302, 303, 307, 308)
# the words of the cloud's refusals for the account: its 429 "Payment required - User has not
# paid" / "Subscription inactive", its 402 "insufficient credits" (a queue-full 429 has none of them)
_ACCOUNT_WORDS = re.compile(r"pa(id|yment)|subscription|credit|billing|insufficient.?funds", re.IGNORECASE)
ACCOUNT_FIX = (
    "Check the plan and credits of the account behind the API key at https://comfy.org "
    "(platform.comfy.org: subscription active, credits left), then submit again"
)


@dataclass(frozen=True)
class Profile:
    """How to talk to one backend: a local ComfyUI (the default) or Comfy Cloud."""

    cloud: bool = False
    prefix: str = ""  # put in front of every HTTP path
    max_jobs: int | None = None  # the plan's parallel jobs: the backend's default max_inflight

    def path(self, path: str) -> str:
        return path if not self.prefix or path.startswith(self.prefix + "/") else self.prefix + path


LOCAL = Profile()


class Cloud(str):
    """A server URL marked as a Comfy Cloud backend whose plan runs ``max_jobs`` jobs at once.

    ``cn.Session([local1, local2, cn.Cloud()], api_key=...)``; it is a plain ``str`` otherwise.
    ``https://cloud.comfy.org`` itself needs no marking unless the plan is not Creator (3 jobs).
    """

    max_jobs: int

    def __new__(cls, url: str = DEFAULT_URL, *, max_jobs: int = DEFAULT_MAX_JOBS) -> Cloud:
        if not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(f"max_jobs must be a whole number >= 1 (your plan's parallel jobs), got {max_jobs!r}")
        marked = super().__new__(cls, url)
        marked.max_jobs = max_jobs
        return marked


def simulated_url(sim: Any) -> str:
    """A simulator's URL, marked as a cloud backend when it runs in cloud mode."""
    return Cloud(str(sim.url), max_jobs=sim.cloud.max_parallel) if sim.cloud is not None else str(sim.url)


def profile_of(url: str) -> Profile:
    if isinstance(url, Cloud):
        return Profile(cloud=True, prefix="/api", max_jobs=url.max_jobs)
    host = yarl.URL(url if "://" in url else "http://" + url).host
    if host == CLOUD_HOST:
        return Profile(cloud=True, prefix="/api", max_jobs=DEFAULT_MAX_JOBS)
    return LOCAL


def keys(profiles: list[Profile], api_key: str | None, partner_key: str | None) -> tuple[str | None, str | None]:
    """The cloud key (argument, else ``COMFY_CLOUD_API_KEY``) and the partner-node key (argument,
    else ``COMFY_API_KEY``); a cloud backend without a key is refused here, before anything is sent."""
    api_key = api_key or os.environ.get(ENV_CLOUD_KEY) or None
    partner_key = partner_key or os.environ.get(ENV_PARTNER_KEY) or None
    if any(p.cloud for p in profiles) and not api_key:
        raise ValueError(
            f"a Comfy Cloud backend needs an API key: Session(..., api_key='...') or set {ENV_CLOUD_KEY} "
            "(make one at https://platform.comfy.org)"
        )
    for name, key in (("api_key", api_key), ("api_key_comfy_org", partner_key)):
        if key is not None and (not isinstance(key, str) or len(key) < 8 or key != key.strip()):
            raise ValueError(f"{name} does not look like an API key (a string of 8 or more characters, no spaces)")
    return api_key, partner_key


def headers_for(profile: Profile, headers: Mapping | None, api_key: str | None) -> dict | None:
    """The session's headers, plus ``X-API-Key`` for a cloud backend (and only for it)."""
    if not profile.cloud:
        return dict(headers) if headers else None
    return {**(headers or {}), "X-API-Key": api_key}


def inflight(urls: list[str], profiles: list[Profile], value: Any) -> Any:
    """``max_inflight`` with each cloud backend's ``"auto"`` turned into its plan's parallel jobs."""
    if not any(p.cloud for p in profiles):
        return value
    if isinstance(value, Mapping):
        given = {str(k): v for k, v in value.items()}
        return {
            **given,
            **{u: p.max_jobs for u, p in zip(urls, profiles) if p.cloud and given.get(u, "auto") == "auto"},
        }
    if value is None or isinstance(value, (int, str)):
        values = [value] * len(urls)
    else:
        values = list(value)
        if len(values) != len(urls):
            return value  # the pool names the mistake
    return [p.max_jobs if p.cloud and v == "auto" else v for v, p in zip(values, profiles)]


def with_partner_key(body: dict, key: str | None) -> dict:
    """A copy of a POST /prompt body carrying the partner key (the stored body never holds it)."""
    if key is None:
        return body
    return {**body, "extra_data": {**(body.get("extra_data") or {}), PARTNER_FIELD: key}}


def busy_delay(retry_after: str | None, fallback: float) -> float:
    """Seconds to wait after a 429: ``Retry-After`` (seconds or an HTTP date) if given, else ``fallback``."""
    if retry_after:
        text = retry_after.strip()
        try:
            return max(0.0, float(text))
        except ValueError:
            when = email.utils.parsedate_to_datetime(text) if text else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return fallback


def account_problem(status: int, body: bytes) -> str | None:
    """What a refused POST /prompt says is wrong with the account, or None (busy, or not a refusal).

    402 is always the account (insufficient credits); a 429 is when its message speaks of payment,
    subscription or credits, as the cloud's "Payment required - User has not paid" does.
    """
    if status == 402:
        return "not enough credits (HTTP 402 Payment Required)"
    if status != 429 or not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", errors="replace")
    words = " ".join(str(v) for v in data.values()) if isinstance(data, dict) else str(data)
    if not _ACCOUNT_WORDS.search(words):
        return None
    return "the Comfy Cloud subscription is inactive or unpaid"


def local_entry(entry: Any) -> tuple[str | None, Any]:
    """``(prompt_id, entry)`` with the local history shape, from a ``/api/history_v2`` entry.

    The cloud's ``prompt`` is an object ``{priority, prompt_id, prompt, extra_data,
    outputs_to_execute}`` (the list view leaves out ``prompt`` and ``outputs_to_execute``); the
    local one is ``[number, prompt_id, graph, extra_data, outputs_to_execute]``. Anything not shaped
    so is passed on unchanged, for :func:`comfynb.history.check_entry` to name what is wrong.
    """
    if not isinstance(entry, Mapping):
        return None, entry
    prompt = entry.get("prompt")
    pid = entry.get("prompt_id") or (prompt.get("prompt_id") if isinstance(prompt, Mapping) else None)
    if not isinstance(prompt, Mapping):
        return (str(pid) if pid else None), entry
    local: list[Any] = [
        prompt.get("priority"),
        pid,
        prompt.get("prompt") if prompt.get("prompt") is not None else {},
        prompt.get("extra_data"),  # None when the list left it out: see comfynb.cloudapi.read_history
        prompt.get("outputs_to_execute") if prompt.get("outputs_to_execute") is not None else [],
    ]
    rest = {k: v for k, v in entry.items() if k in ("outputs", "status", "meta")}
    return (str(pid) if pid else None), {"prompt": local, **rest}


def history_entry(job: dict | None) -> dict | None:
    """A history-shaped entry from a cloud ``/api/jobs/{id}`` record; None while it is not finished.

    The messages are whatever ``execution_status`` the cloud recorded, else made from the status.
    """
    if not job or job.get("status") not in ("completed", "failed"):
        return None
    workflow: dict = job["workflow"] if isinstance(job.get("workflow"), dict) else {}
    status = job.get("execution_status")
    if not isinstance(status, dict) or not status.get("status_str"):
        ok = job["status"] == "completed"
        if ok:
            messages = [["execution_success", {"prompt_id": job.get("id")}]]
        else:
            messages = [["execution_error", job.get("execution_error") or {"exception_message": "failed on the cloud"}]]
        status = {"status_str": "success" if ok else "error", "completed": ok, "messages": messages}
    prompt: list = [None, job.get("id"), workflow.get("prompt") or {}, workflow.get("extra_data") or {}, []]
    return {
        "prompt": prompt,
        "outputs": job.get("outputs") or {},
        "status": status,
        "meta": job.get("execution_meta") or {},
    }


def same_origin(a: yarl.URL, b: yarl.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def describe_target(url: yarl.URL) -> str:
    """A redirect target for messages: origin and path, never the signed query."""
    return str(url.with_query(None).with_fragment(None))
