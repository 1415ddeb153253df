"""Strict configuration: dataclasses filled from YAML mappings and `key=value` overrides.

Every component (shard writer, loader, method, trainer) describes its settings as a dataclass. YAML
files in `configs/` mirror those dataclasses field for field; an unknown key or a value of the wrong
type fails at load time with the dotted path of the offending key, never later in a training run.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fastvid.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A configuration key is unknown, missing or of the wrong type; `key` is its dotted path when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def did_you_mean(word: str, options: typing.Iterable[str], prefix: str = "") -> str:
    """"; did you mean <prefix>X?" for the option X closest to `word` (difflib), or "" when none is close."""
    match = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def _check_value(tp: Any, value: Any, where: str) -> Any:
    """Return `value` converted to the annotated type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {tp}", where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}", where)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}", where)
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}", where)
            return tuple(_check_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_check_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", where)
        kt, vt = args if args else (Any, Any)
        return {_check_value(kt, k, where): _check_value(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; users mean a number.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}", where) from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}", where)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}", where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}", where)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        close = [did_you_mean(k, fields, prefix) for k in unknown]
        if not any(close):
            close[-1] = f" (known: {', '.join(sorted(fields))})"
        raise ConfigError(f"unknown key {', '.join(prefix + k + c for k, c in zip(unknown, close))}",
                          prefix + unknown[0])
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_value(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}", where or None) from None
    except ConfigError as err:  # a check in __post_init__: give it the key it came from, if it names none
        if err.key is not None:
            raise
        raise ConfigError(str(err), _post_init_key(str(err), fields, where)) from None


def _post_init_key(message: str, fields: typing.Iterable[str], where: str) -> str | None:
    """The dotted key of a __post_init__ error in section `where`: the field its message starts with (as
    "bn_splits: ..." or "model.bn_splits: ..."), else the section itself."""
    head = message.split(":", 1)[0].strip()
    prefix = f"{where}." if where else ""
    for name in fields:
        if head in (name, prefix + name):
            return prefix + name
    return where or None


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data from a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value (`lr=1e-3` gives a float)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key.split("."), yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parser error in one line: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key.path=value` override set; the dataclass checks it later."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return out


def check_key(schema: dict[str, Any], path: list[str], text: str) -> None:
    """Raise ConfigError unless the key path of override `text` names a field. `schema` maps the top-level
    names to their types; a dataclass type (or an optional one) is a section whose fields nest."""
    fields: dict[str, Any] = schema
    for i, part in enumerate(path):
        where = ".".join(path[:i + 1])
        if part not in fields:
            close = did_you_mean(part, fields, "".join(p + "." for p in path[:i])) or \
                f" (known: {', '.join(sorted(fields))})"
            raise ConfigError(f"override {text}: unknown key {where}{close}", where)
        if i == len(path) - 1:
            return
        section = [t for t in (typing.get_args(fields[part]) or (fields[part],)) if dataclasses.is_dataclass(t)]
        if not section:
            raise ConfigError(f"override {text}: {where} is a value, not a section", where)
        hints = typing.get_type_hints(section[0])
        fields = {f.name: hints[f.name] for f in dataclasses.fields(section[0]) if f.init}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
