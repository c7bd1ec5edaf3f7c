"""One exception hierarchy, so callers can catch precisely or broadly.

Everything comfynb raises on purpose derives from :class:`ComfyError`. Messages name the
problem and, where there is one, the fix. No exception carries credentials: URLs are stored
without userinfo, and headers or tokens are never part of a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ComfyError(Exception):
    """Base class of every error comfynb raises on purpose."""


# -- talking to a server ------------------------------------------------------------------


class TransportError(ComfyError):
    """An HTTP or WebSocket exchange with a server failed."""

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message)
        self.url = url


class ServerUnavailable(TransportError):
    """The server could not be reached (refused, DNS, TLS, reset), even after retries."""


class HTTPStatusError(TransportError):
    """The server answered with an unexpected HTTP status."""

    def __init__(self, message: str, *, url: str | None = None, status: int, body: str = ""):
        super().__init__(message, url=url)
        self.status = status
        self.body = body


class ProtocolError(TransportError):
    """The URL answers, but not like a ComfyUI server (or a message had an impossible shape)."""


class TooLarge(TransportError):
    """An answer was larger than comfynb accepts for its kind (see :class:`comfynb.transport.Limits`)."""


class Timeout(ComfyError, TimeoutError):
    """A call or a wait ran out of time. Also a builtin ``TimeoutError``."""


# -- a prompt that did not run or did not succeed ----------------------------------------


@dataclass(frozen=True)
class NodeError:
    """One validation problem of one node input, as ComfyUI reports it."""

    node_id: str
    class_type: str
    type: str
    message: str
    details: str = ""
    input_name: str | None = None
    received: Any = None

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input_name:
            where += f" input '{self.input_name}'"
        text = f"{where}: {self.message}"
        if self.details:
            text += f" - {self.details}"
        return text


class ValidationError(ComfyError):
    """The server refused the prompt (HTTP 400), or dropped some outputs as invalid.

    ``type`` is ComfyUI's ``error.type`` (``invalid_prompt``, ``prompt_outputs_failed_validation``,
    ...); ``node_errors`` lists every per-node problem; ``raw`` is the server's body.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str = "",
        node_errors: list[NodeError] | None = None,
        raw: dict | None = None,
    ):
        self.type = type
        self.node_errors = list(node_errors or [])
        self.raw = raw or {}
        lines = [message] + [f"  - {e}" for e in self.node_errors]
        super().__init__("\n".join(lines))


class CapabilityError(ValidationError):
    """No server of the session has what a workflow uses (node classes, model files).

    ``missing`` maps each server's URL to what it lacks.
    """

    def __init__(self, missing: dict[str, list[str]]):
        self.missing = missing
        lines = [f"{url} lacks {', '.join(items)}" for url, items in missing.items()]
        super().__init__(
            "no server of this session can run this workflow:\n  - " + "\n  - ".join(lines), type="no_capable_server"
        )


class ExecutionError(ComfyError):
    """A node raised while the prompt ran on the server."""

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str | None,
        node_type: str | None,
        exception_type: str,
        exception_message: str,
        traceback: list[str] | None = None,
        raw: dict | None = None,
    ):
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = list(traceback or [])
        self.raw = raw or {}
        super().__init__(
            f"prompt {prompt_id} failed at node {node_id} ({node_type}): {exception_type}: {exception_message.strip()}"
        )


class Interrupted(ComfyError):
    """The prompt was interrupted on the server (by us or by someone else)."""

    def __init__(self, message: str, *, prompt_id: str, node_id: str | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.node_id = node_id


class Refused(ComfyError):
    """The server will not take the prompt, and asking again soon would not change that: the
    prompt was not accepted (so it never runs twice); ``status`` is the HTTP status it answered."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class PaymentRequired(Refused):
    """Comfy Cloud refuses work for the account: subscription inactive or unpaid (its 429 "Payment
    required"), or not enough credits (402). Fixed on the account at comfy.org, not by waiting."""


class QueueFull(Refused):
    """The server kept answering "busy" (HTTP 429) for longer than ``max_queue_wait`` seconds."""


class Cancelled(ComfyError):
    """The job was cancelled by the caller before it produced a result."""


class JobLost(ComfyError):
    """The server no longer knows the prompt (restart, eviction) and it was not resubmitted."""


class OutputsMissing(ComfyError):
    """The prompt succeeded, but outputs sent only over the WebSocket (SaveImageWebsocket) may not
    all have reached us; ``result`` holds what did, ``result.missing`` names the nodes in doubt."""

    def __init__(self, message: str, *, result: Any):
        super().__init__(message)
        self.result = result


# -- local mistakes -----------------------------------------------------------------------


class TagError(ComfyError, TypeError, ValueError):
    """Tags that cannot be stored with a prompt: not a string or dict, not JSON, or holding a credential."""


class WorkflowError(ComfyError, ValueError):
    """A workflow is not usable: not API format, malformed, or an input value is wrong."""


class AddressError(WorkflowError, KeyError):
    """An input address like ``"KSampler.seed"`` matches no input, or several."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


__all__ = [
    "AddressError",
    "Cancelled",
    "CapabilityError",
    "ComfyError",
    "ExecutionError",
    "HTTPStatusError",
    "Interrupted",
    "JobLost",
    "NodeError",
    "OutputsMissing",
    "PaymentRequired",
    "ProtocolError",
    "QueueFull",
    "Refused",
    "ServerUnavailable",
    "TagError",
    "Timeout",
    "TooLarge",
    "TransportError",
    "ValidationError",
    "WorkflowError",
]
