"""Workflow step arguments, filled in from the run's inputs and earlier steps' results.

A template is any JSON-like value (a string, a list, an object) whose strings may hold
``{{ path }}`` placeholders. A path is dotted names (and list indexes) into the run's context:
``project`` (the project folder), ``inputs.<name>`` (the workflow's inputs) and
``steps.<id>.<field>`` (``status``, ``ok``, ``findings``, ``seconds``, ``output.<...>``).

- A string that is exactly one placeholder becomes the value itself: a number stays a number, a
  list a list, and an input left unset (``None``) removes the argument it fills.
- Elsewhere each placeholder's value is written into the string as text.

Nothing is evaluated: no expressions, no calls, no attribute access on objects, no shell. A value
put into a command's argument list stays one argument, whatever characters it holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")
_WHOLE = re.compile(r"^\s*\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}\s*$")
_STRAY = re.compile(r"\{\{|\}\}")
ROOTS = ("project", "inputs", "steps")


class TemplateError(ValueError):
    """A placeholder that names nothing, or a value that cannot go where it was put."""


class Missing:
    """What :func:`lookup` returns for a path that names nothing (with ``strict=False``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


def paths_in(template: Any) -> Iterator[str]:
    """Every placeholder path in ``template`` (strings inside lists and objects included)."""
    if isinstance(template, str):
        yield from PLACEHOLDER.findall(template)
    elif isinstance(template, Mapping):
        for value in template.values():
            yield from paths_in(value)
    elif isinstance(template, list | tuple):
        for value in template:
            yield from paths_in(value)


def check_syntax(template: Any) -> None:
    """Raise :class:`TemplateError` for braces that are not a well-formed placeholder."""
    if isinstance(template, str):
        if _STRAY.search(PLACEHOLDER.sub("", template)):
            raise TemplateError(
                f"{template[:80]!r}: a placeholder is written {{{{ name }}}} with a dotted path such as "
                "inputs.base or steps.lint.findings"
            )
    elif isinstance(template, Mapping):
        for value in template.values():
            check_syntax(value)
    elif isinstance(template, list | tuple):
        for value in template:
            check_syntax(value)


def lookup(context: Mapping[str, Any], path: str, *, strict: bool = True) -> Any:
    """The value at dotted ``path`` in ``context``. A path that names nothing raises
    :class:`TemplateError` (``strict``) or gives :data:`MISSING`."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, Sequence) and not isinstance(value, str) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            if strict:
                raise TemplateError(f"{{{{ {path} }}}}: nothing is called {part!r} there")
            return MISSING
    return value


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """``template`` with every placeholder filled in from ``context`` (see the module docstring).

    In objects, an entry whose value renders to ``None`` is left out (an unset optional input
    removes the argument). Raises :class:`TemplateError` for a path that names nothing.
    """
    if isinstance(template, str):
        whole = _WHOLE.match(template)
        if whole:
            return lookup(context, whole.group(1))
        return PLACEHOLDER.sub(lambda m: as_text(lookup(context, m.group(1))), template)
    if isinstance(template, Mapping):
        rendered = {key: render(value, context) for key, value in template.items()}
        return {key: value for key, value in rendered.items() if value is not None}
    if isinstance(template, list | tuple):
        return [render(value, context) for value in template]
    return template


def render_argv(argv: Sequence[str], context: Mapping[str, Any]) -> list[str]:
    """A command's argument list with its placeholders filled in, one value per argument.

    A whole-argument placeholder must give a string or a number. An argument whose template does
    not start with ``-`` may not start with ``-`` once filled in, whole or partial
    (``"{{ inputs.p }}/x"`` with ``--exec=sh``): a value from the caller or from an earlier step
    would be read as an option. Put the option in the template instead
    (``--base={{ inputs.base }}``). Raises :class:`TemplateError`.
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        whole = _WHOLE.match(arg)
        if whole:
            value = lookup(context, whole.group(1))
            if value is None or isinstance(value, Mapping | list | tuple):
                raise TemplateError(f"argument {i + 1} ({arg.strip()}) gives {as_text(value)[:60]!r}, not one value")
            text = as_text(value)
        else:
            text = str(render(arg, context))
        if text.startswith("-") and not arg.startswith("-"):
            raise TemplateError(
                f"argument {i + 1} ({arg.strip()[:80]}) would start with '-' once filled in and be read as an "
                "option; give a value that does not start with '-', or write the option into the template "
                "(--name={{ inputs.name }})"
            )
        out.append(text)
    return out


def as_text(value: Any) -> str:
    """A value as it is written into a string: text as is, ``true``/``false``/``null``, JSON otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)
