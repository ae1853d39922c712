"""A task from luigi's command line (``[--module M] FAMILY --param value ...``), built by luigi's own parser.

``astra tasks why`` takes the task as ``luigi`` would, so that what it explains is exactly the task luigi would
build, parameter parsing, defaults and ``[Family]`` config sections included.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import click
import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import Register, TaskClassException

from astra import outcome
from astra.cli import formats
from astra.cli.options import import_modules, look_where_the_user_is, registered
from astra.database import records


def task_from_command_line(family: str, args: Sequence[str], module: str | None = None) -> luigi.Task:
    """The task luigi would build from ``luigi [--module M] FAMILY ARGS...``; a click.UsageError if it cannot.

    Without ``module``, the records say which module defines FAMILY, so --module is only needed for a task never
    recorded.
    """
    for i, arg in enumerate(args):  # --module after the task, as luigi allows
        if arg == "--module" and i + 1 < len(args):
            module = args[i + 1]
        elif arg.startswith("--module="):
            module = arg.split("=", 1)[1]
    look_where_the_user_is()
    modules = [module] if module else []
    if not module and family not in Register.task_names():
        modules = records.modules_of(family)
    import_modules(modules)
    if registered(family) is None:
        if family in Register.task_names():
            raise click.UsageError(f"two task classes are named {family}; luigi runs neither (rename one)")
        if module:
            raise click.UsageError(f"module {module} defines no task class {formats.given(family)}")
        raise click.UsageError(f"no task class {formats.given(family)} is known; give --module to import it")
    errors, parser = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(errors):
            with CmdlineParser.global_instance([family, *args], allow_override=True) as parser:
                return parser.get_task_obj()
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        # argparse printed a usage line listing every parameter of every task; its last line says what is wrong.
        lines = errors.getvalue().strip().splitlines() or [str(exc.code)]
        raise click.UsageError(lines[-1].split("error: ", 1)[-1]) from None
    except (TaskClassException, luigi.parameter.ParameterException, ValueError) as exc:
        said = outcome.bad_value(parser, exc) if parser is not None else None  # names it, as the luigi command does
        if said is not None:
            raise click.UsageError(said.removeprefix("astra: ")) from None
        raise click.UsageError(str(exc).strip().splitlines()[0]) from None
