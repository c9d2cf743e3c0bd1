"""The one error tree of caelum-mcp.

Every failure that crosses a module boundary is one of these. Backends translate the HTTP stack's
exceptions (httpx2, the anthropic SDK) into this tree at one place each, keeping the cause with
``raise ... from exc``; nothing above the backends ever catches an ``httpx2`` or ``anthropic`` error.

    CaelumError
    ├── ConfigError                 bad or unreadable configuration (names key, value and fix)
    ├── PathNotAllowedError         a path outside the allowed roots, or one that does not exist
    ├── BackendError                a host or provider failed a request      (.host, .status)
    │   ├── HostUnavailableError    may succeed on another host: fail over   (.failover = True)
    │   │   ├── HostConnectError    connection refused / reset / DNS
    │   │   ├── HostTimeoutError    connect, read or pool timeout
    │   │   ├── HostOverloadedError 503 / 529 / 429: busy, try elsewhere or later
    │   │   └── HostServerError     other 5xx before the first token
    │   ├── ModelNotFoundError      404 for the model: another host may have it (.failover = True)
    │   ├── BadRequestError         400/422: the request itself is wrong; never retried
    │   ├── AuthenticationError     401/403: credentials; never retried
    │   ├── StreamInterruptedError  failed after output was streamed; never retried silently
    │   └── MalformedResponseError  the reply did not have the documented shape
    ├── NoHostAvailableError        nothing healthy serves the wanted tier or model
    ├── AllHostsFailedError         every attempt failed (.causes holds each one)
    ├── BudgetExceededError         the daily Claude budget is spent
    ├── TaskFailedError             the router could not produce any answer
    │   ├── TaskSkippedError        no model that can do the task may be used: nothing was called
    │   └── TaskTimedOutError       the task's time budget ran out before any answer
    └── ToolInputError              a tool's arguments are invalid (names each bad one)
"""

from __future__ import annotations

from collections.abc import Sequence


class CaelumError(Exception):
    """Base of every error caelum-mcp raises on purpose."""


class ConfigError(CaelumError):
    """The configuration is invalid; the message names the key, the bad value and the fix."""


class PathNotAllowedError(CaelumError):
    """A path is outside the allowed roots, escapes them through a link, or does not exist."""


class BackendError(CaelumError):
    """A request to a model host failed.

    ``failover`` says whether the same request may be sent to another host: true only when no
    output has reached the caller and the failure is about this host, not about the request.
    """

    failover: bool = False

    def __init__(self, message: str, *, host: str = "", status: int | None = None) -> None:
        self.host = host
        self.status = status
        prefix = f"{host}: " if host else ""
        suffix = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{prefix}{message}{suffix}")
        self.detail = message


class HostUnavailableError(BackendError):
    """The host could not serve the request now; another host may."""

    failover = True


class HostConnectError(HostUnavailableError):
    """The host refused or dropped the connection."""


class HostTimeoutError(HostUnavailableError):
    """The host did not answer in time."""


class HostOverloadedError(HostUnavailableError):
    """The host said it is busy (503 queue full, 529 overloaded, 429 rate limited)."""


class HostServerError(HostUnavailableError):
    """The host failed with a 5xx before any output was sent."""


class ModelNotFoundError(BackendError):
    """The host does not have the model; another host may."""

    failover = True


class BadRequestError(BackendError):
    """The request was rejected as invalid; sending it elsewhere would fail the same way."""


class AuthenticationError(BackendError):
    """The credentials were missing or refused."""


class StreamInterruptedError(BackendError):
    """The host failed after part of the answer had been streamed to the caller."""


class MalformedResponseError(BackendError):
    """The host answered with a body that does not have the documented shape."""


class NoHostAvailableError(CaelumError):
    """No enabled, healthy host serves the wanted model or tier."""


class AllHostsFailedError(CaelumError):
    """Every attempt failed; ``causes`` holds each failure in order."""

    def __init__(self, message: str, causes: Sequence[BaseException]) -> None:
        self.causes = tuple(causes)
        detail = "; ".join(str(c) for c in self.causes[-5:])
        super().__init__(f"{message}: {detail}" if detail else message)


class BudgetExceededError(CaelumError):
    """The daily Claude budget is spent; Claude is not called until the next UTC day."""


class TaskFailedError(CaelumError):
    """The router could not produce any answer for an LLM task."""


class TaskSkippedError(TaskFailedError):
    """No local model of the tier the task needs is up, and Claude may not be used.

    Raised before any model call, so the step costs the user nothing; the message says why and
    what to configure.
    """


class TaskTimedOutError(TaskFailedError):
    """The task's time budget ran out before any model answered."""


class ToolInputError(CaelumError):
    """A tool's arguments do not validate; the message names each bad argument."""


def error_for_status(status: int, message: str, *, host: str) -> BackendError:
    """Map an HTTP status from any backend to the error tree (one table for every protocol)."""
    cls: type[BackendError]
    if status in (429, 503, 529):
        cls = HostOverloadedError
    elif status == 404:
        cls = ModelNotFoundError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status in (400, 413, 422):
        cls = BadRequestError
    elif status == 408 or status >= 500:
        cls = HostServerError if status != 408 else HostTimeoutError
    else:
        cls = BadRequestError
    return cls(message, host=host, status=status)
