"""Validation of JSON config sections against dataclasses, with errors that name the bad key by its full path.

A config section is a dataclass; `from_dict(cls, data, where)` reads its fields and their type annotations
and builds it from JSON data:

- int, float (an int is accepted and converted), bool, str, None, `X | None`, `X | Y`, `Literal[...]`
  (the allowed values), `list[X]`, `tuple[X, ...]` / `tuple[X, Y]` (a JSON list of that length), `dict` /
  `dict[str, X]`, nested dataclasses and lists of them; `Any` takes the value as it is;
- a JSON `true` is never an int or a float (bool is an int in Python; `true` where a number is expected is
  a mistake);
- an unknown key, a missing required key (a field without a default) or a wrong type raises ConfigError
  naming the full key path, e.g. `data.train[1].num_frames: expected int, got str 'x'`;
- fields with `metadata=INTERNAL` are not config keys (the dataclass keeps them for itself);
- after a dataclass is built, its `check(self, where)` method, if it has one, checks ranges and rules
  across fields (raising ConfigError with the key path) -- nested sections are checked before the section
  holding them;
- a section class may derive from `Section` for a `Cls.from_dict(data, where)` classmethod; a nested
  dataclass with a `from_dict` classmethod is built by it (so one that overrides it, e.g. to apply a preset
  first, is built the same way wherever it appears).
"""

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Union

INTERNAL = {"config": False}  # dataclass field metadata: not read from the JSON


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key path."""


class Section:
    """Base of a config section dataclass: `Cls.from_dict(data, where)`."""

    @classmethod
    def from_dict(cls, data, where: str):
        return from_dict(cls, data, where)


def key_path(where: str, key: str) -> str:
    """`where.key`, or `key` at the root (where == "")."""
    return f"{where}.{key}" if where else key


def from_dict(cls, data, where: str):
    """Build dataclass `cls` from JSON `data`, checking keys and types; `where` is the key path of `data`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected an object, got {_describe(data)}")
    fields = _config_fields(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{key_path(where, key)}: unknown key (known: {', '.join(sorted(fields))})")
    values = {}
    for name, (annotation, required) in fields.items():
        if name in data:
            values[name] = convert(annotation, data[name], key_path(where, name))
        elif required:
            raise ConfigError(f"{key_path(where, name)}: required key is missing")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


@functools.cache
def _config_fields(cls) -> dict:
    """{field name: (type annotation, required)} of the fields read from JSON."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
        if f.init and f.metadata.get("config", True)
    }


def convert(annotation, value, where: str):
    """`value` checked against (and converted to) `annotation`; ConfigError naming `where` otherwise."""
    if annotation is Any:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        # the alternative whose JSON kind fits reports its own errors (e.g. a bad item of a list)
        for arm in args:
            if _kind_fits(arm, value):
                return convert(arm, value, where)
        raise ConfigError(f"{where}: expected {' or '.join(_name(a) for a in args)}, got {_describe(value)}")
    if origin is Literal:
        if not any(type(value) is type(choice) and value == choice for choice in args):
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if hasattr(annotation, "from_dict"):
            return annotation.from_dict(value, where)
        return from_dict(annotation, value, where)
    if not _kind_fits(annotation, value):
        raise ConfigError(f"{where}: expected {_name(annotation)}, got {_describe(value)}")
    if origin is list and args:
        return [convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        items = args[:1] * len(value) if len(args) == 2 and args[1] is ... else args
        if len(items) != len(value) or not all(_kind_fits(t, v) for t, v in zip(items, value)):
            raise ConfigError(f"{where}: expected {_name(annotation)}, got {value!r}")
        return tuple(convert(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    if origin is dict and args:
        return {key: convert(args[1], item, key_path(where, key)) for key, item in value.items()}
    if annotation is float:
        return float(value)
    return value


def _kind_fits(annotation, value) -> bool:
    """Whether `value` is of the JSON kind `annotation` takes (items and choices are checked by `convert`)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_kind_fits(arm, value) for arm in typing.get_args(annotation))
    if origin is Literal:
        return any(type(value) is type(choice) for choice in typing.get_args(annotation))
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    base = {tuple: list}.get(origin or annotation, origin or annotation)  # a tuple is a JSON list
    if base is type(None):
        return value is None
    if base is float:
        return type(value) in (int, float)
    if base is int:
        return type(value) is int
    return isinstance(value, base)


def _name(annotation) -> str:
    """How an error names a type: `int`, `number`, `a list`, `a list of 3 numbers`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is float:
        return "number"
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list or annotation is list:
        return "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is ...:
            return f"a list of {_name(args[0])}"
        plural = "numbers" if set(args) == {float} else ", ".join(_name(a) for a in args)
        return f"a list of {len(args)} {plural}"
    if origin is dict or annotation is dict:
        return "an object"
    if dataclasses.is_dataclass(annotation):
        return "an object"
    return getattr(annotation, "__name__", str(annotation))


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"
