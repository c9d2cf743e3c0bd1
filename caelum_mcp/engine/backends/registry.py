"""Which backends exist: one line each in :data:`BUILTIN_BACKENDS`, each module imported on first use.

A backend is one module holding a :class:`~caelum_mcp.engine.backends.base.Backend` subclass. A kind that
``[[hosts]]`` entries may name also gives the class a ``config_model`` (a
:class:`~caelum_mcp.engine.backends.base.HostConfigBase` subclass beside it, whose ``kind`` is a
``Literal`` of its name) and, when that model has keys of its own, a ``from_config`` reading them.
An application embedding the server, or a test, adds a kind with :func:`register_backend`.

Modules are imported when a config names their kind or a call needs the class, so a kind's own
dependencies cost nothing until then (the Anthropic SDK alone takes 2-4 s to import on a loaded
2-core machine). :data:`HostConfig` is the type of one ``[[hosts]]`` entry: a pydantic union of
the registered kinds' models, discriminated by ``kind`` (``"ollama"`` when left out).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args

import httpx2
from pydantic import Discriminator, Tag, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from caelum_mcp.core.errors import ConfigError
from caelum_mcp.engine.backends.base import Backend, HostConfigBase

__all__ = [
    "BACKENDS",
    "BUILTIN_BACKENDS",
    "DEFAULT_HOST_KIND",
    "BackendEntry",
    "BackendRegistry",
    "HostConfig",
    "UnknownBackendError",
    "backend_class",
    "build_backend",
    "register_backend",
]

DEFAULT_HOST_KIND = "ollama"


class UnknownBackendError(ConfigError):
    """A kind no backend is registered under; the message lists the known ones."""


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """One backend: its ``kind``, where its class is (``"package.module:ClassName"``, imported on
    first use, or the class itself) and whether ``[[hosts]]`` entries may name it."""

    kind: str
    target: str | type[Backend]
    hosts: bool = True

    @property
    def module(self) -> str:
        """The module that defines the backend (what a deferred import loads)."""
        return self.target.partition(":")[0] if isinstance(self.target, str) else self.target.__module__

    def load(self) -> type[Backend]:
        if not isinstance(self.target, str):
            return self.target
        module, _, name = self.target.partition(":")
        found = getattr(importlib.import_module(module), name, None)
        if not (isinstance(found, type) and issubclass(found, Backend)):
            raise TypeError(f"backend {self.kind!r}: {self.target} is not a Backend subclass")
        return found


# The one list of backends: a new one is a module and a line here.
BUILTIN_BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry("ollama", "caelum_mcp.engine.backends.ollama:OllamaBackend"),
    BackendEntry("openai", "caelum_mcp.engine.backends.openai:OpenAIBackend"),
    BackendEntry("anthropic", "caelum_mcp.engine.backends.anthropic:AnthropicBackend", hosts=False),  # [claude]
    BackendEntry("scripted", "caelum_mcp.engine.backends.scripted:ScriptedBackend", hosts=False),  # tests, in code
)


class BackendRegistry:
    """Backends by kind; builds a host's backend and validates a ``[[hosts]]`` entry by its kind."""

    def __init__(self, entries: Iterable[BackendEntry] = ()) -> None:
        self._entries: dict[str, BackendEntry] = {}
        self._classes: dict[str, type[Backend]] = {}
        self._hosts_adapter: TypeAdapter[HostConfigBase] | None = None
        self._tagged = True
        for entry in entries:
            self.add(entry)

    def add(self, entry: BackendEntry) -> BackendEntry:
        """Register ``entry``; a kind already taken is refused (two backends under one name)."""
        known = self._entries.get(entry.kind)
        if known is not None and known != entry:
            raise ValueError(f"backend kind {entry.kind!r} is already registered ({known.target})")
        self._entries[entry.kind] = entry
        self._hosts_adapter = None
        return entry

    def remove(self, kind: str) -> None:
        """Forget ``kind`` (a test's own backend, once the test is over)."""
        self._entries.pop(kind, None)
        self._classes.pop(kind, None)
        self._hosts_adapter = None

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def host_kinds(self) -> tuple[str, ...]:
        """The kinds a ``[[hosts]]`` entry may name."""
        return tuple(kind for kind, entry in self._entries.items() if entry.hosts)

    def entry(self, kind: str) -> BackendEntry:
        found = self._entries.get(kind)
        if found is None:
            raise UnknownBackendError(
                f"no backend of kind {kind!r}; known kinds: {', '.join(map(repr, self._entries))} "
                "(a new one is registered in caelum_mcp/engine/backends/registry.py or with register_backend)"
            )
        return found

    def backend_class(self, kind: str) -> type[Backend]:
        """The class of ``kind``, its module imported now if it was not yet."""
        cls = self._classes.get(kind)
        if cls is None:
            cls = self._classes[kind] = self.entry(kind).load()
        return cls

    def host_config_model(self, kind: str) -> type[HostConfigBase]:
        """The ``[[hosts]]`` model of ``kind``; a kind entries may not name is UnknownBackendError."""
        entry = self.entry(kind)
        model = self.backend_class(kind).config_model if entry.hosts else None
        if model is None:
            kinds = ", ".join(map(repr, self.host_kinds()))
            raise UnknownBackendError(f"backend {kind!r} cannot serve a [[hosts]] entry; host kinds: {kinds}")
        return model

    def build(self, config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Backend:
        """The backend a validated ``[[hosts]]`` entry describes (its class's ``from_config``)."""
        self.host_config_model(config.kind)  # a kind registered for code only is refused here too
        return self.backend_class(config.kind).from_config(config, http=http, environ=environ)

    def validate_host(self, value: Any) -> HostConfigBase:
        """One ``[[hosts]]`` entry (a table, or a model already built) as its kind's model.

        Errors are located as in the file (``url``, not ``ollama.url``); an unknown kind names
        the known ones with what each is for.
        """
        if not isinstance(value, dict | HostConfigBase):
            raise ValidationError.from_exception_data(
                "HostConfig", [InitErrorDetails(type="dict_type", loc=(), input=value)]
            )
        kind = _kind_of(value)
        if kind not in self.host_kinds():
            raise ValidationError.from_exception_data(
                "HostConfig", [InitErrorDetails(type=self._unknown_kind(), loc=("kind",), input=kind)]
            )
        if isinstance(value, HostConfigBase):
            if isinstance(value, self.host_config_model(value.kind)):
                return value
            value = value.model_dump()  # a model of the right kind from elsewhere: checked again
        try:
            return self._adapter().validate_python(value)
        except ValidationError as exc:
            raise (_without_tags(exc) if self._tagged else exc) from None

    def _unknown_kind(self) -> PydanticCustomError:
        kinds = [f"{k!r} ({_kind_help(self.host_config_model(k))})" for k in self.host_kinds()]
        return PydanticCustomError("host_kind", "unknown host kind; known kinds: {kinds}", {"kinds": ", ".join(kinds)})

    def _adapter(self) -> TypeAdapter[HostConfigBase]:
        """The discriminated union of the host kinds' models, rebuilt when a kind is registered."""
        if self._hosts_adapter is None:
            members = tuple(Annotated[self.host_config_model(k), Tag(k)] for k in self.host_kinds())
            if len(members) == 1:  # a union of one is that model, whose errors carry no tag
                self._hosts_adapter = TypeAdapter(self.host_config_model(self.host_kinds()[0]))
                self._tagged = False
            else:
                # A union of the kinds registered at run time: no static type can spell it.
                union = Union[members]  # type: ignore[valid-type]  # noqa: UP007
                self._hosts_adapter = TypeAdapter(Annotated[union, Discriminator(_kind_of)])
                self._tagged = True
        return self._hosts_adapter


_PYDANTIC_ERROR_TYPES = frozenset(get_args(ErrorType))


def _kind_of(value: dict[str, Any] | HostConfigBase) -> Any:
    return value.get("kind", DEFAULT_HOST_KIND) if isinstance(value, dict) else value.kind


def _kind_help(model: type[HostConfigBase]) -> str:
    field = model.model_fields.get("kind")
    return field.description if field and field.description else model.__name__


def _without_tags(exc: ValidationError) -> ValidationError:
    """``exc`` with the union's tag taken out of every location: ``url``, as the file says, not
    ``ollama.url``. The union reports every error under a tag, so the first part is always one."""
    details: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        error_type: str | PydanticCustomError = kind
        if kind not in _PYDANTIC_ERROR_TYPES:  # a validator's own error type: keep its message as it was
            error_type = PydanticCustomError(kind, err["msg"])  # no context: the text is kept verbatim
        detail = InitErrorDetails(type=error_type, loc=err["loc"][1:], input=err["input"])
        if "ctx" in err and kind in _PYDANTIC_ERROR_TYPES:
            detail["ctx"] = err["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details)


BACKENDS = BackendRegistry(BUILTIN_BACKENDS)


def register_backend(kind: str, target: str | type[Backend], *, hosts: bool = True) -> BackendEntry:
    """Make ``target`` (a Backend class, or ``"module:ClassName"``) the backend of ``kind``."""
    return BACKENDS.add(BackendEntry(kind, target, hosts))


def backend_class(kind: str) -> type[Backend]:
    return BACKENDS.backend_class(kind)


def build_backend(config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Backend:
    return BACKENDS.build(config, http=http, environ=environ)


def _validate_host(value: Any, _handler: Any) -> HostConfigBase:
    return BACKENDS.validate_host(value)


# One [[hosts]] entry: typed as the fields every kind has, validated as its own kind's model.
HostConfig = Annotated[HostConfigBase, WrapValidator(_validate_host)]
