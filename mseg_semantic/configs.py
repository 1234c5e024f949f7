"""The one reader of configs: plain data (a YAML mapping, keyword arguments) -> a (nested) dataclass.

Training configs, inference presets, the HRNet and PSPNet architecture configs and the original demo command
line all go through :func:`read_config`, so every one of them reports a problem the same way::

    mine.yaml: key 'optim.momentun': unknown key, did you mean 'momentum'? (known: base_lr, momentum, ...)
    --set: key 'batch_size': expected int, got 'four'
    preset 360_ss: key 'base_size': must be positive, got -1

The field annotations are the schema: ``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, fixed tuples (``tuple[int, int]``; one value is repeated, so ``crop: 713`` is ``(713, 713)``),
``dict[...]`` and ``Any`` (taken as given), and nested dataclasses. Numbers written as strings are read as numbers
(YAML 1.1 reads ``1e-4`` as a string). Checks that types cannot express live in the dataclass (``__post_init__``)
or with the caller; they raise :class:`ConfigError` naming the key, and the reader adds the file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from mseg_semantic.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A bad config value: ``SOURCE: key 'a.b': PROBLEM`` (the source and the key when known)."""

    def __init__(self, problem: str, key: str = "", source: str = "") -> None:
        self.problem, self.key, self.source = problem, key, source
        where = ": ".join(part for part in (source, f"key {key!r}" if key else "") if part)
        super().__init__(f"{where}: {problem}" if where else problem)

    def located(self, source: str, origins: Mapping[str, str] | None = None) -> ConfigError:
        """The error with its source: ``origins[k]`` when the key is ``k`` or below it, else ``source``."""
        if self.source:
            return self
        for key, origin in (origins or {}).items():
            if self.key == key or self.key.startswith(f"{key}."):
                source = origin
        return ConfigError(self.problem, self.key, source)

    def inside(self, key: str) -> ConfigError:
        """The error of a sub-config read on its own, as a key below ``key`` of the enclosing config."""
        return ConfigError(self.problem, join_key(key, self.key) if self.key else key)


def check(ok: bool, key: str, problem: str) -> None:
    """Raise ``ConfigError(problem, key)`` unless ``ok``."""
    if not ok:
        raise ConfigError(problem, key)


def check_choice(value: Any, allowed: Collection[Any], key: str) -> None:
    check(value in allowed, key, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")


def did_you_mean(name: str, names: Sequence[str]) -> str:
    """``", did you mean 'x'?"`` for the closest of ``names``, or ``""``."""
    close = difflib.get_close_matches(name, names, n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def unknown_key(name: str, known: Sequence[str]) -> str:
    return f"unknown key{did_you_mean(name, known)} (known: {', '.join(known)})"


def join_key(where: str, key: str | int) -> str:
    return f"{where}.{key}" if where else str(key)


def show(value: Any) -> str:
    return "null" if value is None else repr(value)


def strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; other types unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


# ---------------------------------------------------------------------------------------------- YAML
def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({' '.join(str(exc).split())})", source=source) from None


def read_yaml(path: str | Path) -> Any:
    """The data of a YAML file; a missing, unreadable or malformed file raises :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file does not exist", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config ({exc})", source=str(path)) from None
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------------------------- reading
def read_config(
    cls: type[T],
    data: Any,
    *,
    source: str = "config",
    origins: Mapping[str, str] | None = None,
    spelling: Callable[[str], str] | None = None,
    aliases: Mapping[str, str] | None = None,
    ignore: Collection[str] = (),
    shorthand: Mapping[type, str] | None = None,
) -> T:
    """A ``cls`` from plain data; any problem raises :class:`ConfigError` naming ``source`` and the dotted key.

    - ``origins``: dotted keys whose values came from elsewhere (``{"optim.base_lr": "--set"}``); an error at or
      below one of them names that origin instead of ``source``;
    - ``spelling``: how field names are written in the file (``str.upper`` for HRNet's ``NUM_BLOCKS``); keys are
      matched after spelling them the same way, so ``num_blocks`` is accepted too;
    - ``aliases``: other names of fields (``{"test_h": "crop_h"}``);
    - ``ignore``: keys accepted and dropped at any level (keys of an original layout that change nothing);
    - ``shorthand``: ``{DatasetConfig: "name"}``: a plain value where such a dataclass is expected sets that field.
    """
    reader = _Reader(spelling or str, aliases or {}, ignore, shorthand or {})
    try:
        return reader.dataclass(cls, data, "")
    except ConfigError as exc:
        raise exc.located(source, origins) from None


class _Reader:
    def __init__(self, spelling, aliases, ignore, shorthand) -> None:
        self.spell, self.aliases, self.shorthand = spelling, aliases, shorthand
        self.ignore = {spelling(k) for k in ignore}

    def dataclass(self, cls: type, data: Any, where: str) -> Any:
        if cls in self.shorthand and data is not None and not isinstance(data, (Mapping, list, tuple)):
            data = {self.shorthand[cls]: data}
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping, got {show(data)}", where)
        hints = typing.get_type_hints(cls)
        by_name = {self.spell(f.name): f for f in dataclasses.fields(cls) if f.init}
        values = {}
        for key, value in data.items():
            name = self.spell(self.aliases.get(str(key), str(key)))
            if name in self.ignore:
                continue
            if name not in by_name:
                raise ConfigError(unknown_key(str(key), list(by_name)), join_key(where, key))
            field = by_name[name]
            values[field.name] = self.value(hints[field.name], value, join_key(where, key))
        for name, field in by_name.items():
            if field.name not in values and field.default is field.default_factory is dataclasses.MISSING:
                raise ConfigError("missing required key", join_key(where, name))
        try:
            return cls(**values)
        except ConfigError as exc:
            raise exc.inside(where) from None
        except InputError as exc:  # a check in __post_init__ that does not name its key
            raise ConfigError(str(exc), where) from None

    def value(self, tp: Any, value: Any, key: str) -> Any:
        if tp is Any:
            return value
        optional = strip_optional(tp) is not tp
        tp = strip_optional(tp)
        if value is None:
            if optional:
                return None
            raise ConfigError(f"expected {_describe(tp)}, got null", key)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)
        origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
        if origin in (list, tuple):
            return self.sequence(origin, args, value, key)
        if origin is dict:
            if not isinstance(value, Mapping):
                raise ConfigError(f"expected a mapping, got {show(value)}", key)
            return dict(value)
        if tp in (int, float):
            return _number(tp, value, key)
        if tp in (bool, str) and not isinstance(value, tp):
            raise ConfigError(f"expected {_describe(tp)}, got {show(value)}", key)
        return value

    def sequence(self, origin: type, args: tuple, value: Any, key: str) -> Any:
        variable = origin is list or not args or args[-1] is Ellipsis
        if not isinstance(value, (list, tuple)):
            if variable:
                raise ConfigError(f"expected a list, got {show(value)}", key)
            value = [value] * len(args)  # one value for all: crop 713 is (713, 713), scale 1.0 no scaling
        item_types = [args[0] if args else Any] * len(value) if variable else list(args)
        if len(value) != len(item_types):
            raise ConfigError(f"expected {len(item_types)} values, got {show(list(value))}", key)
        items = [self.value(t, v, join_key(key, i)) for i, (t, v) in enumerate(zip(item_types, value, strict=True))]
        return items if origin is list else tuple(items)


def _describe(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "a mapping"
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _number(tp: type, value: Any, key: str) -> int | float:
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.replace("_", ""))  # YAML 1.1 reads 1e-4 (no dot) as a string
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ConfigError(f"expected {tp.__name__}, got {show(value)}", key)
    if tp is float:
        return float(number)
    if isinstance(number, numbers.Integral) or float(number).is_integer():
        return int(number)
    raise ConfigError(f"expected int, got {show(value)}", key)


# ---------------------------------------------------------------------------------------------- overrides
def field_type(cls: type, key: str, source: str = "") -> Any:
    """The annotation at a dotted key (list items by index); an unknown key raises :class:`ConfigError`."""
    tp: Any = cls
    parts = key.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        tp = strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise ConfigError(unknown_key(part, names), here, source)
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is list:
            if not part.isdigit():
                raise ConfigError("a list is indexed by a number", here, source)
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict or tp is Any:
            return Any  # free-form
        else:
            raise ConfigError("is a value, not a section", ".".join(parts[:depth]), source)
    return tp


def set_key(
    data: Mapping[str, Any],
    cls: type,
    key: str,
    value: Any,
    *,
    source: str,
    shorthand: Mapping[type, str] | None = None,
) -> dict[str, Any]:
    """A copy of ``data`` with the dotted ``key`` set to ``value`` (``datasets.0.root``); the key is checked
    against ``cls`` first and errors name ``source`` (``--set``). Missing sections are created."""
    field_type(cls, key, source)
    parts = key.split(".")
    result = copy.deepcopy(dict(data))
    node: Any = result
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"index out of range (the list has {len(node)} item(s))", here, source)
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"expected a mapping, got {show(node)}", ".".join(parts[:depth]), source)
        if depth == len(parts) - 1:
            node[part] = value
            break
        child = node[part] if isinstance(node, list) else node.get(part)
        section = strip_optional(field_type(cls, here))
        if child is None:
            child = node[part] = {}
        elif section in (shorthand or {}) and not isinstance(child, (dict, list)):
            child = node[part] = {shorthand[section]: child}  # e.g. a dataset given by name only
        node = child
    return result


# ---------------------------------------------------------------------------------------------- writing
def to_plain(config: Any) -> Any:
    """Plain data in the file layout (dataclasses as dicts, tuples as lists), e.g. to save a resolved config."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_plain(v) for k, v in config.items()}
    return config
