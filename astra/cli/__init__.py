"""The ``astra`` command: look at, explain and forget the task records in the astra database.

Tables are for people; ``--json`` prints the same records for scripts. Exit codes: 0 when all went well, 1 when
nothing matched or something failed (an unreachable database, a task that is not done), 2 for a usage error, 130
after Ctrl-C, 141 when the reader of the output went away (``astra results ... | head``), as for a program that
SIGPIPE ends.

One module per command group (:mod:`.db`, :mod:`.tasks` with :mod:`.why`, :mod:`.results`), each a thin layer
over the query and explanation modules below it (``astra.database.records``, ``astra.explain``,
``astra.results_table``); :mod:`.formats` and :mod:`.options` are what they share. Each is imported only when its
command runs (:class:`~.lazy_group.LazyGroup`): ``astra --version`` imports neither luigi nor peewee.
"""

from __future__ import annotations

import configparser
import errno
import os
import sys
from collections.abc import Sequence

import click
from click.utils import PacifyFlushWrapper

from astra.cli.formats import say
from astra.cli.lazy_group import LazyGroup
from astra.cli.options import CONTEXT, help_if_bare
from astra.version import __version__

COMMANDS = {"db": "astra.cli.db:db", "tasks": "astra.cli.tasks:tasks", "results": "astra.cli.results:results"}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, invoke_without_command=True, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="astra")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Look at, explain and forget the task records in the astra database."""
    help_if_bare(ctx)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``astra`` console script."""
    try:
        code = cli.main(args, prog_name="astra", standalone_mode=False)
        sys.stdout.flush()  # here, not at exit: the reader may be gone
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        say(f"astra: {exc.format_message()}{hint}")
        code = 2
    except click.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # click made Ctrl-C an Abort
            say("astra: interrupted")
            code = 130
        else:  # an answer piped in is not echoed, so the prompt's line is still open
            say(("" if sys.stdin.isatty() else "\n") + "astra: aborted, nothing changed")
            code = 1
    except BrokenPipeError:
        code = _reader_gone()
    except OSError as exc:  # stdout on a full disk (`> out.txt`, `> /dev/full`), or a device that failed
        if exc.errno not in OUTPUT_ERRORS:
            raise
        _reader_gone()  # what is still buffered for stdout would fail again at exit, with a traceback of its own
        say(f"astra: cannot write to stdout: {os.strerror(exc.errno)}; what it holds is incomplete")
        code = 1
    except UnicodeEncodeError as exc:  # a lone surrogate (an undecodable byte) in a name or value given
        if exc.reason != "surrogates not allowed":
            raise
        say(
            f"astra: {exc.object[exc.start]!r} (at position {exc.start} of {exc.object!r}) is not valid Unicode (an "
            "undecodable byte on the command line?): no database holds it, so nothing is recorded under it"
        )
        code = 1
    except click.ClickException as exc:
        say(f"astra: {exc.format_message()}")
        code = exc.exit_code
    except (Exception, SystemExit) as exc:  # DatabaseNotReady is a SystemExit (see there)
        line = _configuration_failure(exc) or _database_failure(exc)
        if isinstance(sys.stdout, PacifyFlushWrapper):  # click met the closed pipe, and exits 1 for it
            code = _reader_gone()
        elif line is None:
            raise
        else:
            say(line)
            code = 1
    sys.exit(code if isinstance(code, int) else 0)


#: What a write to stdout meets when what holds it cannot take more (as a pipe whose reader left, EPIPE, does).
OUTPUT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _reader_gone() -> int:
    """The exit code when the reader of stdout went away; stdout is pointed at /dev/null, since what is still
    buffered for it would fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno())
    os.close(devnull)
    return 141


def _configuration_failure(exc: BaseException) -> str | None:
    """The one line that says what is wrong in luigi's configuration, or None if ``exc`` is about something else."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, str) and exc.code.startswith("astra: "):
        return exc.code  # astra's own stops, e.g. a bad [astra] setting (SettingError)
    if not isinstance(exc, configparser.Error):
        return None
    # luigi reads its files as it is imported, so that import failed: say which line, never what it holds (a URL
    # with a password, perhaps).
    where = getattr(exc, "source", None) or "luigi's configuration"
    if isinstance(exc, configparser.ParsingError):
        number = exc.errors[0][0] if getattr(exc, "errors", None) else getattr(exc, "lineno", "?")
        return (
            f"astra: {where}, line {number} is neither a [section] header nor a name = value line; correct it "
            "(luigi cannot read the file either)"
        )
    return f"astra: {where} cannot be read: {str(exc).splitlines()[0]}; correct it (luigi cannot read it either)"


def _database_failure(exc: BaseException) -> str | None:
    """The one line that says what went wrong with the database, or None if ``exc`` is about something else."""
    import peewee  # here, not at the top: --version needs no database, and most commands no database error

    from astra.database import DatabaseError, DatabaseNotReady

    if isinstance(exc, DatabaseNotReady):
        return str(exc.code)
    if isinstance(exc, (DatabaseError, peewee.PeeweeException)):
        lines = str(exc).strip().splitlines()
        line = lines[0] if lines else type(exc).__name__
        # astra's own errors already say what went wrong and start with "astra: "; the driver's do not.
        return line if line.startswith("astra: ") else f"astra: database error: {line}"
    return None
