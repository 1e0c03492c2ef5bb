"""Typed, frozen configuration on pydantic v2: unknown keys and bad values are one clear error.

A config section is a pydantic *dataclass* (:func:`section`), frozen, with ``extra="forbid"``.
Dataclasses rather than ``BaseModel`` because the rest of the code builds, reads and changes
configs as dataclasses: ``dataclasses.replace(cfg, ...)`` (which validates the new value
again), ``fields`` and ``asdict`` keep working, and attribute access is unchanged.

Validation is pydantic's, on the field annotations: ``Literal[...]`` choices, nested
sections, ``X | None``, ``dict[...]``, ``tuple[...]`` (a YAML list is accepted). Scalars are
strict (``StrictInt``, ``StrictFloat``, ``StrictBool``): ``"5"`` or ``1.5`` is no integer and
``"yes"`` no boolean, as in YAML itself; an integer is a fine float. Ranges and rules across
fields are each section's own ``__post_init__`` (it runs after the fields are validated),
raising :class:`~pharmafl.errors.ConfigError` with the dotted key.

Every pydantic :class:`~pydantic.ValidationError` becomes one :class:`ConfigError` (the
first problem; :func:`explain`) naming the file, the dotted key (``federation.strategy``),
the bad value, the valid choices of a ``Literal`` and a "did you mean" for a misspelt key
or choice, whether the config came from YAML (:func:`load_yaml`) or Python
(``DataConfig(sites="3")``). Reading YAML files and ``--set`` overrides:
:mod:`pharmafl.pipeline.configio`.

Sections live beside what they configure (``models/config.py``, ``sites/privacy.py``,
``pipeline/config.py``); this module is shared by all of them, so it imports no project
module but :mod:`pharmafl.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import pydantic.dataclasses
from pydantic import ConfigDict, TypeAdapter, ValidationError

from pharmafl.errors import ConfigError

T = TypeVar("T")

CONFIG = ConfigDict(extra="forbid", revalidate_instances="never")


def section(name: str):
    """Class decorator: a frozen pydantic dataclass whose errors are :class:`ConfigError`
    naming ``name.key`` (``name`` is the section's dotted place in a run config, "" at the top)."""

    def wrap(cls: type[T]) -> type[T]:
        dc = pydantic.dataclasses.dataclass(frozen=True, config=CONFIG)(cls)
        init = dc.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(explain(exc, dc, prefix=name)) from None

        dc.__init__ = __init__
        dc.__config_section__ = name
        return dc

    return wrap


# --- ValidationError -> one line -------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "none_required": "null",
}


def _strip(hint: Any) -> Any:
    """``hint`` without ``Annotated`` and without a ``None`` member of a union."""
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return hint


def _walk(cls: type, loc: Sequence) -> tuple[list[str], Any, type | None]:
    """The dotted parts of pydantic's ``loc``, the annotation found there (None: unknown key)
    and the last section passed through."""
    parts: list[str] = []
    hint: Any = cls
    owner = None
    for item in loc:
        hint = _strip(hint)
        if dataclasses.is_dataclass(hint) and isinstance(item, str):
            owner = hint
            parts.append(item)
            hint = get_type_hints(hint, include_extras=True).get(item)
        elif get_origin(hint) in (dict, Mapping) or hint is dict:
            parts.append(str(item))
            args = get_args(hint)
            hint = args[1] if args else Any
        elif isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
            args = get_args(hint)
            hint = args[0] if args else Any
        elif get_origin(hint) in (Union, types.UnionType):
            continue  # a union member's tag ('int', 'float'), not a key
        else:
            parts.append(str(item))
            hint = Any
    return parts, _strip(hint), owner


def _did_you_mean(value: Any, choices: Sequence) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1) if isinstance(value, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(prefix: str, parts: Sequence[str]) -> str:
    return ".".join(p for p in (prefix, *parts) if p).replace(".[", "[")


def explain(exc: ValidationError, cls: type, *, prefix: str = "", source: str | None = None) -> str:
    """One line for the first problem of ``exc`` raised validating ``cls`` (see the module docstring)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    parts, hint, owner = _walk(cls, first["loc"])
    path = _dotted(prefix, parts)
    where = f"{source}: {path}" if source else path
    kind, value = first["type"], first.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        keys = [f.name for f in dataclasses.fields(owner)] if owner is not None else []
        valid = f"valid keys: {', '.join(sorted(keys))}" if keys else "this section takes no keys"
        return f"{where}: unknown key{_did_you_mean(parts[-1], keys)}; {valid}"
    if kind == "literal_error" and get_origin(hint) is Literal:
        choices = list(get_args(hint))
        return f"{where}: Could not resolve {value!r} among choices {choices}{_did_you_mean(value, choices)}"
    if kind in ("dataclass_type", "dataclass_args_type", "model_type"):
        name = first.get("ctx", {}).get("class_name") or getattr(hint, "__name__", "section")
        return f"{where} must be a mapping of {name} settings, got {value!r}"
    if kind == "missing":
        return f"{where} is required"
    same = [e for e in errors if _walk(cls, e["loc"])[0] == parts]
    expected = list(dict.fromkeys(_EXPECTED[e["type"]] for e in same if e["type"] in _EXPECTED))
    if expected:
        return f"{where} must be {' or '.join(expected)}, got {value!r}"
    return f"{where}: {first['msg']}, got {value!r}"


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None, prefix: str = "") -> T:
    """Build ``cls`` (a :func:`section` dataclass) from plain ``data``; see the module docstring."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source or prefix or cls.__name__} must hold a mapping of settings, got {data!r}")
    try:
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(explain(exc, cls, prefix=prefix, source=source)) from None
    except ConfigError as exc:  # a section's own range or cross-field check
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain JSON-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
