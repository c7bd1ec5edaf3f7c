"""Credentials: knowing every form of each, scrubbing them from what comfynb prints or stores,
and refusing them in tags.

A server (or a proxy in front of it) may echo a credential in any form: the bare token of a
``Bearer`` header, the base64 of a ``Basic`` one or the ``user:password`` inside it, a password
from the URL, an ``api_key`` query parameter, JSON- or URL-escaped. :class:`Secrets` holds every
such part of a session's credentials and replaces them with ``***`` in error messages and bodies
(``HTTPStatusError``), in the ``servers()`` error column (it shows those errors) and in comfynb's
log records. Tags are stored on the server in clear, so :func:`check_tags` compares their decoded
values (not JSON text) with every part and refuses them rather than send a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import yarl

from .errors import TagError

_CREDENTIAL_HEADERS = ("auth", "cookie", "key", "token", "secret", "password", "session", "api")
_CREDENTIAL_PARAMS = re.compile(r"key|token|secret|password|passwd|auth|sig|credential|session", re.I)
_SHORT = 4  # shorter parts are matched as whole words only, or every message would be garbled
_MASK = "***"


def _userinfo(user: str, password: str) -> list[str]:
    pair = f"{user}:{password}"
    return [password, pair, base64.b64encode(pair.encode()).decode()]


def _header_parts(name: str, value: str) -> list[str]:
    """A credential header's value and the parts that identify it alone."""
    parts = [value]
    if "cookie" in name.lower():  # Cookie: a=b; c=d
        return parts + [v.strip() for c in value.split(";") if (v := c.partition("=")[2]).strip()]
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if rest:
        parts.append(rest)  # the bare token of "Bearer T", "Token T", "Basic B64", ...
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if decoded:
                password = decoded.partition(":")[2]
                parts += [decoded, password]
    return parts


class Secrets:
    """Every part of a set of credentials; ``scrub`` masks them in text, ``find`` spots them in values."""

    def __init__(self, parts: Iterable[str] = ()):
        self._parts = sorted({str(p) for p in parts if p}, key=len, reverse=True)
        forms = sorted({f for p in self._parts for f in _forms(p)}, key=len, reverse=True)
        long = [re.escape(f) for f in forms if len(f) >= _SHORT]
        short = [rf"(?<!\w){re.escape(f)}(?!\w)" for f in forms if len(f) < _SHORT]
        self._pattern = re.compile("|".join(long + short)) if forms else None
        _LIVE.add(self)
        _install_log_filter()

    @classmethod
    def of(
        cls,
        urls: Iterable[str] = (),
        *,
        headers: Mapping | None = None,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        api_keys: Iterable[str | None] = (),
    ) -> Secrets:
        """The credentials a session is given: credential headers (by name), ``auth``, ``token``,
        the userinfo and credential-like query parameters of its URLs, and any API keys."""
        parts: list[str] = []
        for name, value in (headers or {}).items():
            if any(word in str(name).lower() for word in _CREDENTIAL_HEADERS):
                parts += _header_parts(str(name), str(value))
        if token:
            parts += [str(token), f"Bearer {token}"]
        if auth is not None:
            parts += _userinfo(str(auth[0]), str(auth[1]))
        for url in urls:
            u = yarl.URL(url if "://" in url else "http://" + url)
            if u.password:
                parts += _userinfo(u.user or "", u.password)
            parts += [v for k, v in u.query.items() if _CREDENTIAL_PARAMS.search(k)]
        parts += [str(k) for k in api_keys if k]
        return cls(parts)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def __repr__(self) -> str:
        return f"<Secrets: {len(self._parts)} part(s) hidden>"

    def scrub(self, text: str) -> str:
        """``text`` with every form of every part replaced by ``***``."""
        return text if self._pattern is None else self._pattern.sub(_MASK, text)

    def scrub_bytes(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        text = data.decode("utf-8", errors="surrogateescape")
        clean = self.scrub(text)
        return data if clean == text else clean.encode("utf-8", errors="surrogateescape")

    def find(self, value: Any, where: str = "") -> str | None:
        """Where in ``value`` (JSON data: keys, strings, numbers) a credential appears, or None."""
        if self._pattern is None:
            return None
        if isinstance(value, Mapping):
            for k, v in value.items():
                path = f"{where}.{k}" if where else str(k)
                if self._pattern.search(str(k)):
                    return path
                if (found := self.find(v, path)) is not None:
                    return found
            return None
        if isinstance(value, (list, tuple)):
            for n, v in enumerate(value):
                if (found := self.find(v, f"{where}[{n}]")) is not None:
                    return found
            return None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return (where or "value") if self._pattern.search(str(value)) else None
        return None


def _forms(part: str) -> set[str]:
    """How a part may appear in text: as is, JSON-escaped (ASCII or not), URL-encoded."""
    return {
        part,
        json.dumps(part)[1:-1],
        json.dumps(part, ensure_ascii=False)[1:-1],
        quote(part, safe=""),
        quote_plus(part, safe=""),
    }


def check_tags(tags: str | Mapping | None, secrets: Secrets | None = None) -> dict | None:
    """Tags as stored with a prompt: a string becomes ``{"tag": ...}``; a dict must be JSON data
    and hold no credential. Anything else is a :class:`~comfynb.errors.TagError`."""
    if tags is None:
        return None
    if isinstance(tags, str):
        tags = {"tag": tags}
    elif not isinstance(tags, Mapping):
        raise TagError(
            f"tags must be a string or a dict, not {type(tags).__name__}: e.g. tags='run 3' or tags={{'run': 3}}"
        )
    try:
        data = json.loads(json.dumps(dict(tags)))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TagError(
            f"tags must be JSON data (strings, numbers, booleans, None, lists and dicts, without cycles): {exc}"
        ) from None
    where = secrets.find(data) if secrets is not None else None
    if where is not None:
        raise TagError(
            f"tags hold a credential of this session (at '{where}'); tags are stored on the server in clear, "
            "so nothing was sent: remove it from the tags"
        )
    return data


# -- log records ---------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[Secrets] = weakref.WeakSet()


class _ScrubFilter(logging.Filter):
    """Masks every live session's credentials in comfynb's log records (message and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        live = [s for s in list(_LIVE) if s]
        if not live:
            return True
        message = record.getMessage()
        clean = message
        for secrets in live:
            clean = secrets.scrub(clean)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            for secrets in live:
                text = secrets.scrub(text)
            record.exc_text = text
        return True


_FILTER = _ScrubFilter()


def _install_log_filter() -> None:
    """Attach the filter to every comfynb logger (filters do not apply to records from child loggers)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n == "comfynb" or n.startswith("comfynb.")]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
