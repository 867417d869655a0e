"""Command-line flags generated from the settings in alexnet/config.py.

Every field of every section becomes a flag `--section.key` (plus the short name `FLAG_ALIASES`
gives it, e.g. `--lr`), typed by the field's annotation (a Literal's values are its choices) and
documented by the field's own comment in config.py, so a setting is added in config.py alone. Flags
left out stay None and change nothing (a resumed run keeps its own settings); the values given are
checked by the config (`resolve`/`apply`), which names the setting in its one-line error.
"""

from __future__ import annotations

import argparse
import ast
import functools
import io
import tokenize
import typing
from pathlib import Path
from typing import Any, Literal

from alexnet import config as C
from alexnet.config_text import field_types, parse_overrides, show


@functools.cache
def setting_docs() -> dict[str, str]:
    """{"model.towers": "§3.2: two GPUs; ...", ...}: each field's comment in config.py, the one at the
    end of its line or else the block of comment lines right above it."""
    try:
        source = Path(C.__file__).read_text(encoding="utf-8")
    except OSError:  # no source shipped (a frozen build): flags without their comments
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    sections = {cls.__name__: name for name, cls in C.SECTIONS.items()}
    docs = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            text, alone = comments.get(item.end_lineno, ("", True))
            if alone or not text:
                above, line = [], item.lineno - 1
                while line in comments and comments[line][1]:
                    above.insert(0, comments[line][0])
                    line -= 1
                text = " ".join(above)
            docs[f"{sections[node.name]}.{item.target.id}"] = text
    return docs


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
            help_ = f"{docs.get(dotted) or dotted} (default: {shown})".replace("%", "%%")
            flags = ([f"--{aliases[dotted]}"] if dotted in aliases else []) + [f"--{section}.{key.replace('_', '-')}"]
            if tp is bool:
                group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, help=help_)
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
