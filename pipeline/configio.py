"""Typed, frozen configuration from YAML: unknown keys and bad values are one clear error.

:func:`from_dict` builds a (nested) frozen dataclass from a mapping, checking every key
against the dataclass fields and every value against the field's annotation (``int``,
``float``, ``str``, ``bool``, ``Literal[...]``, ``X | None``, ``tuple[...]``, nested
dataclasses). The error names the dotted key, the file, the expected type or the valid
choices. Value ranges are checked by each dataclass's own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from pharmafl.errors import ConfigError

T = TypeVar("T")


def _where(path: str, source: str | None) -> str:
    return f"{source}: {path}" if source else path


def _check(value: Any, hint: Any, path: str, source: str | None) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path, source)} must be a mapping of {hint.__name__} settings, got {value!r}")
        return from_dict(hint, value, source=source, prefix=path)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{_where(path, source)}: Could not resolve {value!r} among choices {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, path, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_where(path, source)}: {value!r} fits none of {args}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path, source)} must be a list, got {value!r}")
        (item,) = get_args(hint)[:1]
        return tuple(_check(v, item, f"{path}[{i}]", source) for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path, source)} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path, source)} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(path, source)} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(path, source)} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path, source)} must be a string, got {value!r}")
        return value
    if hint is Any:
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {path}")  # programming error


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None, prefix: str = "") -> T:
    """Build ``cls`` from ``data``; see the module docstring."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{_where(path, source)}: unknown key{hint}; valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = _check(value, hints[key], path, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None


def load_yaml(cls: type[T], path: Path) -> T:
    """Read ``path`` (YAML) into ``cls``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level, got {type(data).__name__}")
    return from_dict(cls, data, source=str(path))


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain JSON-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
