"""Validation of JSON config sections, with errors that name the bad key by its full path."""
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key path."""


def check_keys(section: dict, where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Raise ConfigError for a missing required key or a key that is not known."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected an object, got {type(section).__name__}")
    required, optional = list(required), list(optional)
    for key in required:
        if key not in section:
            raise ConfigError(f"{where}.{key}: required key is missing")
    known = set(required) | set(optional)
    for key in section:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


def get_typed(section: dict, key: str, types, where: str, default: Any = ..., choices: Iterable | None = None):
    """Read section[key], check its type (and choices); return default when absent and a default is given."""
    if key not in section:
        if default is ...:
            raise ConfigError(f"{where}.{key}: required key is missing")
        return default
    value = section[key]
    types = types if isinstance(types, tuple) else (types,)
    # bool is an int in Python; a config that says `true` where a number is expected is a mistake
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{where}.{key}: expected {'/'.join(t.__name__ for t in types)}, got bool")
    if not isinstance(value, types):
        raise ConfigError(f"{where}.{key}: expected {'/'.join(t.__name__ for t in types)}, "
                          f"got {type(value).__name__} {value!r}")
    if choices is not None and value not in list(choices):
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {list(choices)}")
    return value
