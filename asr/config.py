"""Configs as frozen dataclasses, loaded from plain YAML with `key.sub=value` overrides.

A config file holds plain values only (numbers, strings, booleans, lists), nested by section:

    model:
      hidden: 512
      rnn_type: lstm

`load_config(ExperimentConfig, "conf/small.yaml", ["model.hidden=768", "optim.lr=5e-4"])` builds
the dataclass, then applies each override with `dataclasses.replace`. An override's value is
parsed with `yaml.safe_load`, so `train.amp=none` is the string "none", `x=3` an int and
`x=[1, 2]` a list. An unknown key or a value of the wrong type raises `ConfigError` naming the key
and where it came from (the file, or the override). `dump_config` writes the resolved config
back to YAML (atomically); loading that file gives the same config.

A dataclass may declare `DERIVED: ClassVar[dict[str, str]]`, dotted keys that the program fills in
itself (e.g. `model.input_dim` from the features): they are refused on input, with the reason,
and left out of the dump.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union

import yaml

from asr.errors import ConfigError
from asr.fileio import atomic_write_text

T = TypeVar("T")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

__all__ = [
    "load_config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "parse_override",
    "dump_config",
    "config_diff",
]


def _derived(cls) -> dict[str, str]:
    return dict(getattr(cls, "DERIVED", {}) or {})


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, key: str, where: str, base: Any = None) -> Any:
    """Check `value` against the annotation `tp` and return it in the field's own type.

    Ints are accepted for floats; lists become tuples for tuple fields; nested dicts become
    nested dataclasses (starting from `base`, the field's default, when given). Booleans are
    never accepted as numbers, nor numbers as booleans.
    """
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _mismatch(value, tp, key, where)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _mismatch(value, tp, key, where)
        return from_dict(tp, value, where=where, prefix=f"{key}.", base=base)
    if origin in (tuple, list):
        return _convert_sequence(value, tp, key, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(value, tp, key, where)
        return dict(value)
    return _convert_scalar(value, tp, key, where)


def _mismatch(value: Any, tp, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _convert_union(value: Any, tp, key: str, where: str) -> Any:
    """The first member of the union `tp` that `value` converts to (None only for an Optional)."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _mismatch(value, tp, key, where)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key, where)
        except ConfigError:
            continue
    raise _mismatch(value, tp, key, where)


def _convert_sequence(value: Any, tp, key: str, where: str) -> tuple | list:
    """A list or tuple field: fixed-length tuples check their length, items are converted."""
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp, key, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{where}: key '{key}' expects {len(args)} values ({_type_name(tp)}), got {value!r}")
        items = [_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args))]
    else:
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(value: Any, tp, key: str, where: str) -> Any:
    """bool, int, float, str or another plain type; never a bool for a number or a number for a bool."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "1e-3" (no dot) as a string; accept it where a float is expected.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp not in (bool, int, float, str) and isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(value, tp, key, where)


def _unknown_key(cls, key: str, name: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{key[: len(key) - len(name)]}{close[0]}'?)" if close else ""
    return ConfigError(
        f"{where}: unknown key '{key}'{hint}; {cls.__name__} has: {', '.join(names)}"
    )


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def from_dict(cls: type[T], data: dict, where: str = "<config>", prefix: str = "", base: T | None = None) -> T:
    """Build the dataclass `cls` from a (nested) dict of plain values, checking every key and type.

    `where` names the source (a file name) in error messages; `prefix` is the dotted path of
    `cls` inside the top-level config. Missing keys keep their value in `base` if given, else
    the field defaults (a nested section starts from its field's default instance).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix[:-1] or '<top level>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    derived = _derived(cls)
    for dotted, reason in derived.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            raise ConfigError(f"{where}: key '{prefix}{dotted}' is not set in a config: {reason}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in fields:
            raise _unknown_key(cls, key, str(name), where)
        if base is not None:
            field_base = getattr(base, name)
        else:
            field_base = _field_default(fields[name])
        kwargs[name] = _convert(value, hints[name], key, where, base=field_base)
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {prefix[:-1] or cls.__name__}: {err}") from err


def to_dict(config) -> dict:
    """The dataclass as nested plain dicts/lists (tuples become lists), minus `DERIVED` keys."""

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    data = plain(config)
    for dotted in _derived(type(config)):
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"model.hidden=512"` -> (["model", "hidden"], 512); the value is parsed with yaml.safe_load."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML: {err}") from err
    return key.split("."), value


def _replace_path(config, path: list[str], value: Any, done: list[str], where: str):
    cls = type(config)
    name = path[0]
    key = ".".join(done + [name])
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if name not in fields:
        raise _unknown_key(cls, key, name, where)
    full = ".".join(done + path)
    derived = _derived(cls)
    if ".".join(path) in derived:
        raise ConfigError(f"{where}: key '{full}' is not set in a config: {derived['.'.join(path)]}")
    tp = typing.get_type_hints(cls)[name]
    if len(path) == 1:
        new = _convert(value, tp, key, where)
    else:
        current = getattr(config, name)
        if not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
            raise ConfigError(f"{where}: key '{key}' is a value, not a section; cannot set '{full}'")
        new = _replace_path(current, path[1:], value, done + [name], where)
    try:
        return dataclasses.replace(config, **{name: new})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def apply_overrides(config: T, overrides: Iterable[str]) -> T:
    """Apply `key.sub=value` overrides in order, each with `dataclasses.replace`."""
    for text in overrides:
        path, value = parse_override(text)
        config = _replace_path(config, path, value, [], f"override '{text}'")
    return config


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> T:
    """Load `cls` from the YAML file `path` (None: the defaults), then apply `overrides`.

    Raises ConfigError naming the file (missing, unreadable, not YAML) or the key (unknown,
    wrong type).
    """
    if path is None:
        config = cls()
    else:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config: {err.strerror}") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        config = from_dict(cls, data or {}, where=str(path))
    return apply_overrides(config, overrides)


class _BlockDumper(yaml.SafeDumper):
    """Sections in block style, lists of values on one line (`betas: [0.9, 0.98]`)."""


_BlockDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def dump_config(config, path: str | os.PathLike | None = None, header: str = "") -> str:
    """The config as YAML text (keys in field order); written atomically to `path` if given.

    `header` lines are written as `#` comments at the top.
    """
    text = yaml.dump(to_dict(config), Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    if path is not None:
        atomic_write_text(path, text)
    return text


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, as "key: old -> new"."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes
