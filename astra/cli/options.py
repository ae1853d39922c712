"""What the commands share: their context settings, the options that select tasks, importing the user's modules."""

from __future__ import annotations

import datetime
import functools
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import click

from astra.cli import formats
from astra.cli.formats import UTC, say

if TYPE_CHECKING:
    import luigi

    from astra.database import records

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

MODULE_HELP = "The output tables of every astra.OutputModel in this module (repeat for several)."
module_option = click.option(
    "--module", "modules", multiple=True, metavar="MODULE", help=f"Also {MODULE_HELP[0].lower()}{MODULE_HELP[1:]}"
)


class When(click.ParamType):
    """A time (ISO 8601, UTC unless it says otherwise) or an age such as ``30m``, ``2h``, ``7d``."""

    name = "WHEN"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def convert(self, value, param, ctx) -> datetime.datetime:
        if isinstance(value, datetime.datetime):
            return value
        text = value.strip()
        age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
        if age:
            seconds = float(age.group(1)) * self.UNITS[age.group(2)]
            try:
                return datetime.datetime.now(UTC) - datetime.timedelta(seconds=seconds)
            except OverflowError:  # before the year 1, or more days than a timedelta holds
                self.fail(f"{formats.given(value)} reaches back before the year 1; give a smaller age or a time")
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            example = "a time (2026-11-25, 2026-11-25T14:00) nor an age (30m, 2h, 7d)"
            self.fail(f"{formats.given(value)} is neither {example}")
        return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_where(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, equals, wanted = value.partition("=")
        key = key.strip().replace("-", "_")  # --spectrum-path on luigi's command line is spectrum_path here
        if not equals or not key:
            raise click.BadParameter(f"{formats.given(value)} is not key=value", ctx=ctx, param=param)
        pairs.append((key, wanted))
    return tuple(pairs)


def filter_options(command: Callable) -> Callable:
    """The options that select tasks, collected into a ``filters`` argument."""
    from astra.database import records  # here: `astra --version` imports this module, and needs no database

    options = [
        click.option("--name", "names", multiple=True, help="Task name (luigi family). Repeat for several."),
        click.option("--module", "modules", multiple=True, help="Module the task class is defined in."),
        click.option(
            "--status", "statuses", multiple=True, type=click.Choice(records.STATUSES), help="Recorded status."
        ),
        click.option(
            "--where",
            multiple=True,
            callback=_parse_where,
            metavar="KEY=VALUE",
            help=(
                "Parameter value as stored (see `astra tasks show`); * matches any text, \\* is a literal * and "
                "\\\\ a literal backslash. Repeat for several parameters (all must match) or values (any may)."
            ),
        ),
        click.option("--since", type=When(), help="Created, started or completed since: a UTC time or an age (2h)."),
    ]

    @functools.wraps(command)
    def wrapper(*args, names, modules, statuses, where, since, **kwargs):
        filters = records.Filters(tuple(names), tuple(modules), tuple(statuses), where, since)
        return command(*args, filters=filters, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def nothing_matches(filters: records.Filters) -> click.ClickException:
    """Why nothing matched, when the filters name something that does not exist at all."""
    from astra.database import records

    hints = []
    unknown = [name for name in filters.names if name not in records.known_names()]
    if unknown:
        known = ", ".join(records.known_names()) or "none yet"
        hints.append(f"no task is named {', '.join(map(formats.given, unknown))} (recorded: {known})")
    missing = records.unknown_parameter_names(key for key, _ in filters.where)
    if missing:
        hints.append(f"no task has a parameter {', '.join(map(formats.given, missing))}")
    return click.ClickException("no tasks match" + (": " + "; ".join(hints) if hints else ""))


def help_if_bare(ctx: click.Context) -> None:
    """A group called without a command shows its help, as a usage error."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(2)


def look_where_the_user_is() -> None:
    """Find task modules in the current directory too (last), as ``luigi --module`` does.

    The console script's path starts at its own directory, not at the user's.
    """
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def _where_it_failed(exc: Exception) -> str:
    """``Kind: message (file, line N)`` of an exception raised while a module was imported: the line of the user's
    code that raised it, or that called what raised it."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    from astra import config  # imports luigi: only when a module fails

    frame = config.users_frame(exc.__traceback__) or traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__}: {exc} ({frame.filename}, line {frame.lineno})"


def import_modules(names: Sequence[str]) -> list:
    """Import the modules ``names`` (a usage error if one cannot be)."""
    look_where_the_user_is()
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            why = str(exc)
            if exc.name == name:  # the module itself is not found, not one it imports; Python's words, cut short
                why = f"No module named {formats.given(name)}; run from the directory that holds it, or add that to "
                why += "PYTHONPATH"
            raise click.UsageError(f"cannot import module {formats.given(name)}: {why}") from None
        except Exception as exc:  # the module is there but fails as it is imported: say where
            raise click.UsageError(f"cannot import module {formats.given(name)}: {_where_it_failed(exc)}") from None
    return found


def output_models(names: Sequence[str]) -> list:
    """The astra.OutputModels in the modules ``names``."""
    from astra import outputs
    from astra.database import output_tables

    models = outputs.models_in(import_modules(names))
    if names and not models:
        say(f"note: no astra.OutputModel in {', '.join(names)}")
    for model in models:
        try:
            outputs.units(model)
        except TypeError as exc:
            raise click.UsageError(str(exc)) from None
    output_tables.check_own_columns(models)  # before any command reads or changes their tables
    return models


def task_class(name: str, modules: Sequence[str]) -> type[luigi.Task] | None:
    """The task class named ``name``, imported from ``modules`` or where its records say; None if it cannot be."""

    from astra.database import records

    if modules:
        where = list(modules)
        try:
            import_modules(where)
        except click.UsageError as exc:
            say(f"note: {exc.format_message()}; using the recorded JSON results")
            where = []  # said already
    else:  # where its records say: a module of them may be gone (the class moved since), the class in another
        where, failures = [], []
        for module in records.modules_of(name):
            try:
                import_modules([module])
                where.append(module)
            except click.UsageError as exc:
                failures.append(exc.format_message())
        if failures and registered(name) is None:
            say(f"note: {failures[0]}; using the recorded JSON results")
            where = []  # said already
    cls = registered(name)
    if cls is None:  # perhaps two classes of the name: the class moved to another module, say, and both are imported
        found = same_named(name)
        mine = [one for one in found if one.__module__ in where]
        if len(mine) == 1:
            cls = mine[0]
        elif len(found) > 1:
            raise click.UsageError(
                f"{name} is a task class of more than one module ({', '.join(sorted(c.__module__ for c in found))}), "
                "each with tasks of its own; name the one you mean with --module"
            )
    if cls is None:
        if where:  # imported, but the class is not there (any more): renamed or removed since its tasks ran
            say(
                f"note: {name} is no task class of {', '.join(where)} (renamed or removed?); using the recorded JSON "
                "results"
            )
    return cls


def registered(name: str) -> type[luigi.Task] | None:
    """luigi's task class of family ``name``, or None if it knows none (or two).

    Not luigi's own lookup alone: for a name it does not know, that measures the name's edit distance to every
    class's (seconds for a value pasted by mistake).
    """
    from luigi.task_register import Register, TaskClassException

    if name not in Register.task_names():
        return None
    try:
        return Register.get_task_cls(name)
    except TaskClassException:  # two classes of one name
        return None


def same_named(name: str) -> list[type[luigi.Task]]:
    """The task classes luigi knows of family ``name`` (more than one: in several modules)."""
    from luigi.task_register import Register

    return [cls for cls in Register._reg if cls.get_task_family() == name]  # luigi keeps no other list of them


def as_recorded(cls: type[luigi.Task], where: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``--where`` values written as astra records them for ``cls``'s parameters, so that a value given as on luigi's
    command line finds its tasks: ``snr=1`` is ``1.0`` for a FloatParameter, ``flag=true`` is ``True``. A pattern,
    and a value the parameter does not parse, stay as given."""
    from astra.identity import canonical_value

    known = dict(cls.get_params())
    written = []
    for key, value in where:
        parameter = known.get(key)
        if parameter is not None and "*" not in value and "\\" not in value:
            try:
                parsed = parameter.parse(value)
            except Exception as exc:  # not a value of this parameter: matched as written (a task made in Python may be)
                say(
                    f"note: --where {key}={value}: not a value of {cls.get_task_family()}'s {key} ({exc}), so it is "
                    "matched as written"
                )
            else:
                try:  # as luigi makes the task: ./x.fits is x.fits for a PathParameter
                    parsed = parameter.normalize(parsed)
                except Exception:  # e.g. a PathParameter(exists=True) of a file gone since: its tasks stay recorded
                    pass
                value = canonical_value(parameter, parsed)
        written.append((key, value))
    return tuple(written)
