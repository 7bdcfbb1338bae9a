"""What the command lines share: every Config field as an option, and one-line errors.

Used by ``python -m clr_lib.train``, ``python -m clr_lib.evaluate``,
``python -m clr_lib.experiments`` and ``python -m clr_lib.finetune``. A mistake of the user's
(a bad value, a path that does not exist, a file that is not a checkpoint) prints one line,
``error: <what is wrong>: <how to fix it>``, and exits with status 2: no traceback, and
nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

from clr_lib.config import PROFILES, Config, UserError, get_config


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line in the course's form."""

    def error(self, message: str):
        self.exit(2, f"error: {message}: see {self.prog} --help\n")


def optional_int(text: str) -> int | None:
    """An option that takes a whole number, or "none"."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number or none, not {text!r}") from None


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"takes true or false, not {text!r}")
    return text.lower() in ("true", "1", "yes")


def _optional(parse: Callable) -> Callable:
    def parse_or_none(text: str):
        return None if text.lower() == "none" else parse(text)
    return parse_or_none


def _option(annotation: str) -> dict:
    """argparse keywords for a field annotated e.g. 'int | None' or 'tuple[float, float]'."""
    base = annotation.split("|")[0].strip()
    if base.startswith("tuple"):
        return dict(nargs=2, type=float)
    if base == "int" and "None" in annotation:
        return dict(type=optional_int)
    parse = {"int": int, "float": float, "bool": _bool, "str": str}[base]
    return dict(type=_optional(parse) if "None" in annotation else parse)


def config_parser(prog: str, description: str) -> ArgumentParser:
    """--profile, and one option per Config field (--batch-size 512, --crop-scale 0.2 1)."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--profile", choices=PROFILES, default=None)
    for f in dataclasses.fields(Config):
        if f.name != "profile":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                                default=argparse.SUPPRESS, metavar=f.name.upper(),
                                **_option(str(f.type)))
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The profile's Config with every option the command line gave."""
    fields = {f.name for f in dataclasses.fields(Config)} - {"profile"}
    return get_config(args.profile, **{k: v for k, v in vars(args).items() if k in fields})


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a CLI's main. A UserError becomes one line on stderr and exit status 2; a run
    that diverged (FloatingPointError: its message says what to try) one line and status 1."""
    try:
        main(argv)
    except (UserError, FloatingPointError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)
