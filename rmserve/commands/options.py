"""Options shared by the subcommands: one flag per field of an options dataclass (grouped in --help
sections), and one per setting of `rmserve serve`."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def at_least_one(text: str) -> int:
    """An argparse type for counts of rows: 0 would read as "no rows" and blame the data file."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | None = None) -> None:
    """One option per field of `cls` (only those of the --help sections in `only`, when given)."""
    hints = typing.get_type_hints(cls)
    sections: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata.get("group")
        if only is not None and group_name not in only:
            continue
        target = sections.setdefault(group_name, parser.add_argument_group(group_name)) if group_name else parser
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        if kind is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        if isinstance(kind, types.UnionType):  # "int | None" -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default_text = "" if f.default is None else f" (default: {f.default})"
        target.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                            help=help_text + default_text)


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    try:
        from rmserve.service.settings import Settings
    except ImportError:  # a client-only install: take any options; `rmserve serve` says which extra it needs
        parser.description = (parser.description or "") + " Needs the server: pip install 'rmserve[serve]'."
        parser.set_defaults(takes_any_options=True)
        return

    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "RMSERVE_" + name.upper()
        secret = name in ("api_keys", "admin_api_keys")
        default = "" if secret else info.default
        note = " Prefer the environment or a file: a command line is visible to every user of the machine." if secret else ""
        # A boolean setting given alone (--allow-unauthenticated) means true; it also takes a value.
        switch = {"nargs": "?", "const": "true", "metavar": "BOOL"} if info.annotation is bool else {}
        parser.add_argument(flag, default=None, help=f"{info.description or ''}{note} [env {env}; default {default!r}]",
                            **switch)

