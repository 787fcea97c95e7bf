"""The command line's arguments as data: one spec per argument, which `add` hands to argparse.

A command's arguments are a tuple of specs in the order its --help lists them: an `Arg` (one
`add_argument` call), a `OneOf` (a mutually exclusive group of them) or a `Group` (a titled
section of --help). Arguments several commands take are one tuple, spliced into each.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ["Arg", "Command", "Group", "OneOf", "Spec", "add", "switch"]


class Arg(NamedTuple):
    """One argument: `add_argument`'s keywords, the first ones in the order a usage line shows
    them (names, metavar, type, default), then the help; None leaves a keyword to argparse.

    `names` is a flag and its aliases, separated by spaces ("--out -o"), or a positional's name.
    """

    names: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    help: str | None = None
    choices: Sequence[str] | None = None
    action: str | None = None
    dest: str | None = None
    required: bool | None = None
    nargs: str | None = None


def switch(names: str, help: str) -> Arg:
    """A flag that is off unless given."""
    return Arg(names, help=help, action="store_true")


class OneOf(NamedTuple):
    """Arguments of which at most one may be given; exactly one when `required`."""

    args: tuple[Arg, ...]
    required: bool = False


class Group(NamedTuple):
    """Arguments that --help lists in a section of their own."""

    title: str
    description: str | None
    args: tuple[Arg, ...]


Spec = Arg | OneOf | Group


class Command(NamedTuple):
    """A subcommand: its name, its line in the top-level --help, its own --help's description,
    and its arguments."""

    name: str
    help: str
    description: str
    args: tuple[Spec, ...]


def add(parser: argparse._ActionsContainer, specs: Iterable[Spec]) -> None:
    """Adds the arguments `specs` declare to `parser` (or to a group of it), in order."""
    for spec in specs:
        if isinstance(spec, OneOf):
            add(parser.add_mutually_exclusive_group(required=spec.required), spec.args)
        elif isinstance(spec, Group):
            add(parser.add_argument_group(spec.title, spec.description), spec.args)
        else:
            keywords = {k: v for k, v in spec._asdict().items() if v is not None}
            parser.add_argument(*keywords.pop("names").split(), **keywords)
