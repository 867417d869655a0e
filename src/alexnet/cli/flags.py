"""Command-line flags generated from the settings in alexnet/config.py.

Every field of every section becomes a flag `--section.key` (plus the short name `FLAG_ALIASES`
gives it, e.g. `--lr`), typed by the field's annotation (a Literal's values are its choices) and
documented by the field's help in config.py (`setting(default, help)`), so a setting is added in
config.py alone. Flags
left out stay None and change nothing (a resumed run keeps its own settings); the values given are
checked by the config (`resolve`/`apply`), which names the setting in its one-line error. A boolean
setting's flag takes `--data.flip` / `--no-data.flip`, and also `--data.flip false` or
`--data.flip=false` (the words of --set and the TOML file: true/false, yes/no, on/off, 1/0), which
`SettingsParser` turns into the bare forms before argparse reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Literal

from alexnet import config as C
from alexnet.config import ConfigError, coerce, field_types, parse_overrides, show


def setting_docs() -> dict[str, str]:
    """{"model.towers": "§3.2: two GPUs; ...", ...}: each field's help, from its metadata in config.py
    (`config.setting`)."""
    return {f"{section}.{f.name}": f.metadata.get("help", "") for section, cls in C.SECTIONS.items()
            for f in dataclasses.fields(cls)}


class BoolFlag(argparse.BooleanOptionalAction):
    """`--x` / `--no-x` (argparse's), and `--x WORD` / `--x=WORD` with a true/false word, which
    `SettingsParser` rewrites to `--x` / `--no-x`."""

    def __init__(self, option_strings, dest, **kw):
        self.positive = list(option_strings)
        super().__init__(option_strings, dest, **kw)


def _bool_word(text: str) -> bool | None:
    try:
        return coerce(text, bool, "")
    except ConfigError:
        return None


def bool_words(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """`args` with each `--x WORD` and `--x=WORD` of a BoolFlag `--x` (WORD true/false, yes/no, on/off,
    1/0) written as `--x` or `--no-x`; a next word that is not one stays an argument (a positional)."""
    out, k = [], 0
    while k < len(args):
        arg = args[k]
        if arg == "--":
            return out + args[k:]
        name, eq, word = arg.partition("=")
        action = parser._option_string_actions.get(name)
        if isinstance(action, BoolFlag) and name in action.positive:
            if not eq and k + 1 < len(args):
                word = args[k + 1]
            value = _bool_word(word) if (eq or word) else None
            if value is not None:
                out.append(name if value else "--no-" + name[2:])
                k += 1 if eq else 2
                continue
        out.append(arg)
        k += 1
    return out


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser whose BoolFlag flags also take a true/false word (`bool_words`); the
    subcommands' parsers are of the same class (argparse's add_subparsers)."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(bool_words(self, args), namespace)


def _metavar(tp: Any, key: str) -> str | None:
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    return {int: "N", float: "X", str: key.upper()}.get(tp, "N,N,...")


def add_setting_flags(parser: argparse.ArgumentParser, variant: bool = True) -> None:
    """One flag per setting of `Config` (and --variant), in a group per section; all default to None."""
    docs = setting_docs()
    aliases = {dotted: alias for alias, dotted in C.FLAG_ALIASES.items()}
    names = [key for cls in C.SECTIONS.values() for key in field_types(cls)]
    taken = {a.dest for a in parser._actions}
    dests = {}
    if variant:
        parser.add_argument("--variant", metavar="{" + ",".join(C.VARIANTS) + "}",
                            help="the net and, where it differs from §5's, the recipe (alexnet/config.py "
                            f"VARIANTS, RECIPES): {C.variant_help()}; default: paper".replace("%", "%%"))
        dests["variant"] = "variant"
    defaults = C.Config()
    for section, cls in C.SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings (also --set {section}.KEY=VALUE)", cls.__doc__)
        for key, tp in field_types(cls).items():
            dotted = f"{section}.{key}"
            dest = key if names.count(key) == 1 and key not in taken else f"{section}_{key}"
            default = getattr(getattr(defaults, section), key)
            shown = "none" if default == "" else show(default).lower() if tp is bool else show(default)
            flags = ([f"--{aliases[dotted]}"] if dotted in aliases else []) + [f"--{section}.{key.replace('_', '-')}"]
            also = f"; or {flags[-1]} true|false" if tp is bool else ""
            help_ = f"{docs.get(dotted) or dotted} (default: {shown}{also})".replace("%", "%%")
            if tp is bool:
                group.add_argument(*flags, dest=dest, action=BoolFlag, help=help_)
            else:
                group.add_argument(*flags, dest=dest, metavar=_metavar(tp, key), help=help_)
            dests[dest] = dotted
    parser.set_defaults(setting_flags=dests)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, then those given with --set (which win), as a nested dict for
    `config.resolve`/`apply` (which type-check and validate them)."""
    nested: dict[str, Any] = {}
    for dest, dotted in getattr(args, "setting_flags", {}).items():
        value = getattr(args, dest)
        if value is None:
            continue
        if dotted == "variant":
            nested["variant"] = value
        else:
            section, key = dotted.split(".")
            nested.setdefault(section, {})[key] = value
    for section, values in parse_overrides(getattr(args, "set", None) or []).items():
        if isinstance(values, dict):
            nested.setdefault(section, {}).update(values)
        else:
            nested[section] = values
    return nested
