"""Settings as text, whatever the settings are: typed values from TOML files and `section.key=value`
overrides, TOML written back, and the one-line error for a value that does not fit its type. What
the settings are, and which values each admits, is alexnet/config.py's."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

from alexnet.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override the user wrote is wrong (unknown key, bad type, bad value)."""


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value read from TOML or a command line string to the field's type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple,):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(coerce(v, inner, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def type_problem(value: Any, tp: Any) -> str | None:
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return None if value in choices else "must be " + " or ".join(map(str, choices))
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, tuple):
            return f"must be a list of {inner.__name__}s"
        problems = [type_problem(v, inner) for v in value]
        return next((f"every element {p}" for p in problems if p), None)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if tp is int and isinstance(value, bool):
        return "must be an integer"
    return None if isinstance(value, tp) else f"must be of type {tp.__name__}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.02", "model.lrn=false"]` -> nested dict of strings (types checked by apply)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, value = item.split("=", 1)
        if dotted == "variant":
            nested["variant"] = value
            continue
        if dotted.count(".") != 1:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = value
    return nested


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a TOML file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path} is not a config: its values are nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def update_section(section: Any, values: dict[str, Any], name: str) -> Any:
    """A copy of a section dataclass with `values` applied; unknown keys are an error."""
    types_ = field_types(type(section))
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types_:
            known = ", ".join(types_)
            raise ConfigError(f"unknown key '{name}.{key}' (known: {known})")
        changes[key] = coerce(value, types_[key], f"{name}.{key}")
    return dataclasses.replace(section, **changes)


def toml_text(d: dict[str, Any]) -> str:
    """A {"variant": ..., section: {key: value}} dict as TOML that `load_toml` reads back."""
    d = dict(d)
    lines = [f"variant = {toml_value(d.pop('variant'))}"]
    for section, values in d.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


# What a setting admits: a rule maps a value to None if allowed, else what is allowed (config.RULES).
Rule = Callable[[Any], "str | None"]  # the value -> None if allowed, else what is allowed


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low}"


def one_of(*choices: Any) -> Rule:
    return lambda v: None if v in choices else "must be " + " or ".join(map(str, choices))


def probability(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"
