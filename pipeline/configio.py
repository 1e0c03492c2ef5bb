"""Run configs from YAML files, with ``--set section.key=value`` overrides.

The sections themselves and their validation: :mod:`pharmafl.typedconfig`. YAML is read
safely, with YAML 1.2's floats without a dot (``lr: 1e-3`` is a number, as a user means it).
An override's value is read as a YAML scalar or flow value (``3``, ``iid``, ``1e-3``,
``{mu: 0.01}``) and set in the file's mapping before validation, so a misspelt key is the
same error, with the same "did you mean", as in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import from_dict, to_dict

__all__ = ["apply_overrides", "from_dict", "load_yaml", "parse_override", "parse_yaml", "read_yaml", "to_dict"]

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus YAML 1.2's floats without a dot (``1e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``text`` as YAML (safe; ``1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


def read_yaml(path: Path) -> dict:
    """The top-level mapping of the YAML file ``path``."""
    try:
        data = parse_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level, got {type(data).__name__}")
    return dict(data)


def load_yaml(cls: type[T], path: Path, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (YAML) into ``cls``, after the ``section.key=value`` ``overrides`` (``--set``)."""
    data = apply_overrides(read_yaml(path), overrides)
    source = f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)
    return from_dict(cls, data, source=source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` as (``[section, key]``, value read as a YAML scalar or flow value)."""
    key, sep, value = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ConfigError(
            f"--set {text!r} is not section.key=value (e.g. --set federation.rounds=3, "
            "--set federation.strategy_options={mu: 0.01})"
        )
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not YAML: {' '.join(str(exc).split())}") from None
    return [k.strip() for k in keys], parsed


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """A copy of ``data`` with each ``section.key=value`` of ``overrides`` set (later ones win).
    Unknown keys are left to validation, which names them with a "did you mean"."""
    out = _copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(keys[: i + 1])} is {child!r}, not a section of keys")
            node = child
        node[keys[-1]] = value
    return out


def _copy(data: Any) -> Any:
    return {k: _copy(v) for k, v in data.items()} if isinstance(data, Mapping) else data
