"""The one error tree of caelum-mcp.

Every failure that crosses a module boundary is one of these. Backends translate the HTTP stack's
exceptions (httpx2, the anthropic SDK) into this tree at one place each, keeping the cause with
``raise ... from exc``; nothing above the backends ever catches an ``httpx2`` or ``anthropic`` error.

    CaelumError
    ├── ConfigError                 bad or unreadable configuration (names key, value and fix)
    ├── PathNotAllowedError         a path outside the allowed roots, or one that does not exist
    ├── BackendError                a host or provider failed a request      (.host, .status, .fault)
    │   ├── HostUnavailableError    may succeed on another host: fail over   (.failover = True)
    │   │   ├── HostConnectError    connection refused / DNS: opens the breaker at once
    │   │   ├── HostTimeoutError    no answer within the attempt's limit: opens the breaker at once
    │   │   ├── HostOverloadedError 503 / 529 / 429: busy, try elsewhere or later (.retry_after_s)
    │   │   ├── HostServerError     other 5xx before the first token
    │   │   │   └── HostDisconnectedError  the connection was cut before a whole reply arrived
    │   │   └── MalformedResponseError     a 200 whose body is empty or not the documented shape
    │   ├── ModelNotFoundError      404 for the model: another host may have it (.failover = True)
    │   ├── BadRequestError         400/422: the request itself is wrong; never retried
    │   ├── AuthenticationError     401/403: credentials; never retried
    │   └── StreamInterruptedError  failed after output was streamed; never retried silently
    ├── NoHostAvailableError        nothing healthy serves the wanted tier or model
    ├── AllHostsFailedError         every attempt failed (.causes holds each one)
    │   └── DeadlineExceededError   the call's deadline passed (queued, mid-attempt or backing off)
    ├── BudgetExceededError         the daily Claude budget is spent (or reserved by calls in flight)
    ├── TaskFailedError             the router could not produce any answer
    │   ├── TaskSkippedError        no model that can do the task may be used: nothing was called
    │   └── TaskTimedOutError       the task's time budget ran out before any answer
    └── ToolInputError              a tool's arguments are invalid (names each bad one)
        └── InvalidSchemaError      an output schema that cannot be used (bad keyword, dangling or
                                    endless ``$ref``)

Each :class:`BackendError` class says what kind of host fault it is (``fault``: the per-host failure
counters of ``pool_status``), whether it is the host's fault at all (``host_fault``: counts toward
the circuit breaker) and whether it opens the breaker at once (``opens_breaker``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

# What went wrong with a host, as counted per host in ``pool_status``. ``request`` is not a host
# fault at all (a bad request, refused credentials, a model the host does not have).
Fault = Literal["timeout", "connect", "5xx", "overloaded", "bad_body", "interrupted", "request"]
FAULTS: tuple[Fault, ...] = ("timeout", "connect", "5xx", "overloaded", "bad_body", "interrupted", "request")

# Error messages echo names and text that came from outside (a host name a caller typed, a server's
# reply): never more than this many characters of one.
ECHO_CHARS = 200


def echo(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` as a message may quote it: its repr, cut to about ``limit`` characters."""
    shown = repr(text) if isinstance(text, str) else str(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


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
    ``host_fault`` says whether it counts toward the host's circuit breaker, ``opens_breaker``
    whether it opens it at once, and ``fault`` under which cause ``pool_status`` counts it.
    """

    failover: ClassVar[bool] = False
    host_fault: ClassVar[bool] = False
    opens_breaker: ClassVar[bool] = False
    fault: ClassVar[Fault] = "request"

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
    host_fault = True
    fault: ClassVar[Fault] = "5xx"


class HostConnectError(HostUnavailableError):
    """The host refused the connection or could not be reached: it is down, so its breaker opens."""

    opens_breaker = True
    fault: ClassVar[Fault] = "connect"


class HostTimeoutError(HostUnavailableError):
    """The host did not answer within the attempt's limit.

    A host that accepts a request and never answers would hold every request sent to it, so the
    breaker opens at once; the pool leaves it closed when the *caller's* deadline cut the attempt.
    """

    opens_breaker = True
    fault: ClassVar[Fault] = "timeout"


class HostOverloadedError(HostUnavailableError):
    """The host said it is busy (503 queue full, 529 overloaded, 429 rate limited).

    ``retry_after_s`` is how long it asked us to wait (from ``Retry-After``), when it said. Busy is
    not broken: it does not count toward the breaker, so a sole busy host can be retried.
    """

    host_fault = False
    fault: ClassVar[Fault] = "overloaded"

    def __init__(
        self, message: str, *, host: str = "", status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, host=host, status=status)
        self.retry_after_s = retry_after_s


class HostServerError(HostUnavailableError):
    """The host failed with a 5xx before any output was sent."""


class HostDisconnectedError(HostServerError):
    """The host cut the connection before a whole reply had arrived."""

    fault: ClassVar[Fault] = "connect"


class MalformedResponseError(HostUnavailableError):
    """The host answered 200 with a body that is empty or does not have the documented shape.

    A host fault like a 5xx: the request may do fine on another host.
    """

    fault: ClassVar[Fault] = "bad_body"


class ModelNotFoundError(BackendError):
    """The host does not have the model; another host may."""

    failover = True
    host_fault = True


class BadRequestError(BackendError):
    """The request was rejected as invalid; sending it elsewhere would fail the same way."""


class AuthenticationError(BackendError):
    """The credentials were missing or refused."""


class StreamInterruptedError(BackendError):
    """The host failed after part of the answer had been streamed to the caller.

    Never failed over (the caller has the first part), but the host's fault: it counts toward the
    breaker, so a host whose streams keep breaking is taken out of rotation.
    """

    host_fault = True
    fault: ClassVar[Fault] = "interrupted"


class NoHostAvailableError(CaelumError):
    """No enabled, healthy host serves the wanted model or tier."""


class AllHostsFailedError(CaelumError):
    """Every attempt failed; ``causes`` holds each failure in order."""

    def __init__(self, message: str, causes: Sequence[BaseException]) -> None:
        self.causes = tuple(causes)
        detail = "; ".join(str(c) for c in self.causes[-5:])
        super().__init__(f"{message}: {detail}" if detail else message)


class DeadlineExceededError(AllHostsFailedError):
    """The call's deadline passed: while it waited for a host's slot, during an attempt, or while it
    waited to retry a busy host. ``causes`` holds the attempts that failed before (maybe none);
    ``hosts`` names every host the call tried or waited for."""

    def __init__(self, message: str, causes: Sequence[BaseException], *, hosts: Sequence[str] = ()) -> None:
        self.hosts = tuple(hosts)
        super().__init__(message, causes)


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


class InvalidSchemaError(ToolInputError):
    """An output schema cannot be used: not a valid JSON schema, a ``$ref`` that points nowhere, or
    references that loop without ever reaching a schema (validation would never end)."""


def error_for_status(status: int, message: str, *, host: str, retry_after_s: float | None = None) -> BackendError:
    """Map an HTTP status from any backend to the error tree (one table for every protocol)."""
    cls: type[BackendError]
    if status in (429, 503, 529):
        return HostOverloadedError(message, host=host, status=status, retry_after_s=retry_after_s)
    if status == 404:
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
