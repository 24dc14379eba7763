"""How a stage's configuration declares the command-line flags that set it.

Every stage owns a frozen dataclass: `DataConfig` (data), `TreeConfig` (the initial tree),
`ScorerConfig` (the model), `TrainConfig` and `BeamAwareConfig` (fitting), `TreeLearningConfig`
and `JointConfig` (Algorithm 2 and 1), `EvalProtocol` (evaluation), and the baselines' own. A
field the user may set is declared with `option(default, help, ...)`: its default, its reason
(a comment beside it) and its help line are written there and nowhere else. The command line
builds its flags from these fields (`add_options`), reads back only the flags actually given
(`given_options`), and `configure` writes them into a configuration by name. A flag that was
not given leaves every configuration at its own default, so YouTube-DNN's 20 epochs and the
tree methods' 10 need no "not given" sentinel.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import DataError

# Behaviours a sample sees as features, most recent first: XDL's TDM feature length. Every stage
# that reads histories defaults to it; the --max-history flag is `EvalProtocol.max_history`.
MAX_HISTORY = 69


@dataclass(frozen=True)
class Option:
    """The command-line side of a configuration field."""

    help: str | None  # None: the field follows a flag another configuration declares (same name)
    flag: str | None = None  # default: --field-name
    at_least: float | None = None
    above: float | None = None  # strictly greater than this
    at_most: float | None = None
    choices: tuple[str, ...] | None = None
    # The value as typed -> the field's value (e.g. "on" -> True); type(default) when None.
    parse: Callable[[str], Any] | None = None
    kind: type | None = None  # the type argparse converts to, where the default (None) does not tell
    into: Callable[[Any], Any] | None = None  # the flag's value -> this field's (a grid pinned to one value)
    show: Callable[[Any], str] | None = None  # how help prints the default

    def check(self, flag: str, value: Any) -> None:
        """Refuse a value that makes no training or no search, in the form the CLI prints."""
        if value is None:
            return
        if self.at_least is not None and value < self.at_least:
            raise DataError(f"{flag} must be at least {_number(self.at_least)}, got {value}")
        if self.above is not None and not value > self.above:
            if self.at_most is not None:
                raise DataError(f"{flag} must be in ({_number(self.above)}, {_number(self.at_most)}], got {value}")
            raise DataError(f"{flag} must be positive, got {value}" if self.above == 0
                            else f"{flag} must be above {_number(self.above)}, got {value}")
        if self.at_most is not None and value > self.at_most:
            raise DataError(f"{flag} must be at most {_number(self.at_most)}, got {value}")


def option(default: Any, help: str | None, **settings: Any) -> Any:
    """A dataclass field with its command-line flag (see `Option`)."""
    return field(default=default, metadata={"option": Option(help, **settings)})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def flag_of(spec: dataclasses.Field) -> str:
    return spec.metadata["option"].flag or "--" + spec.name.replace("_", "-")


def dest_of(flag: str) -> str:
    """The key a flag's value is known by: in `given_options`, and in the results that record it."""
    return flag.lstrip("-").replace("-", "_")


def declared(config: Any) -> Iterable[tuple[dataclasses.Field, Option]]:
    """The fields of a configuration (class or instance) that carry a flag."""
    for spec in dataclasses.fields(config):
        if "option" in spec.metadata:
            yield spec, spec.metadata["option"]


def configure(config: Any, given: Mapping[str, Any]) -> Any:
    """`config` with every field whose flag is in `given` set to the given value, nested
    configurations included. Flags absent from `given` keep the configuration's own defaults."""
    changes: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if "option" in spec.metadata and dest_of(flag_of(spec)) in given:
            into = spec.metadata["option"].into
            value = given[dest_of(flag_of(spec))]
            changes[spec.name] = value if into is None else into(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = configure(value, given)
            if nested is not value:
                changes[spec.name] = nested
    return dataclasses.replace(config, **changes) if changes else config


@dataclass(frozen=True)
class Declared:
    """One flag as the configurations declare it: where its help comes from, and the default
    of every configuration it sets (labelled by whose default it is: "" for the main one)."""

    flag: str
    option: Option
    defaults: list[tuple[str, Any]]
    fallback_kind: type


def collect(configs: Iterable[tuple[str, Any]], only: Iterable[str] | None = None) -> list[Declared]:
    """The flags that `configs` (label, configuration class or instance) declare, nested
    configurations included, in declaration order. A flag that several configurations share
    takes its help from the one that declares it (`Option.help`); a flag that only follows one
    declared elsewhere is left out."""
    found: dict[str, Declared] = {}

    def visit(label: str, config: Any) -> None:
        for spec in dataclasses.fields(config):
            value = getattr(config, spec.name, None)
            if "option" not in spec.metadata:
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    visit(label, value)
                continue
            opt, flag = spec.metadata["option"], flag_of(spec)
            if only is not None and flag not in only:
                continue
            entry = found.get(flag)
            if entry is None:
                entry = found[flag] = Declared(flag, opt, [], type(value))
            elif opt.help is not None and entry.option.help is None:
                entry = found[flag] = Declared(flag, opt, entry.defaults, type(value))
            if opt.help is not None:  # the declaring configuration's default is the one quoted first
                entry.defaults[:] = [(label, value)] + [(k, v) for k, v in entry.defaults if v != value]
            elif all(value != known for _, known in entry.defaults):
                entry.defaults.append((label, value))

    for label, config in configs:
        visit(label, config)
    return [entry for entry in found.values() if entry.option.help is not None]


def add_options(group: argparse._ActionsContainer, flags: Iterable[Declared]) -> None:
    """Add each declared flag to `group`. Its argparse default is SUPPRESS: a flag not given is
    absent from the parsed namespace, and its help quotes the configurations' defaults."""
    for entry in flags:
        opt = entry.option
        (_, main_default), *others = entry.defaults
        show = opt.show or _show
        text = f"default {show(main_default)}"
        if others:
            text += "; " + ", ".join(f"{label} {show(value)}" for label, value in others)
        help_text = f"{opt.help} ({text})"
        kind = opt.kind or (entry.fallback_kind if entry.fallback_kind is not type(None) else str)
        if kind is bool and opt.choices is None:
            group.add_argument(entry.flag, action="store_true", default=argparse.SUPPRESS, help=opt.help)
            continue
        group.add_argument(entry.flag, type=kind if opt.choices is None else str, choices=opt.choices,
                           default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "tuned over " + ", ".join(_show(v) for v in value)
    return str(value)


def given_options(args: argparse.Namespace, flags: Iterable[Declared]) -> dict[str, Any]:
    """The flags of `flags` that the command line gave, parsed and checked, by `dest_of`."""
    given = {}
    for entry in flags:
        dest = dest_of(entry.flag)
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if entry.option.parse is not None:
            value = entry.option.parse(value)
        entry.option.check(entry.flag, value)
        given[dest] = value
    return given
