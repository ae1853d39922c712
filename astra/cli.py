"""The ``astra`` command: look at, explain and forget the task records in the astra database.

Tables are for people; ``--json`` prints the same records for scripts. Exit codes: 0 when all went well, 1 when
nothing matched or something failed (an unreachable database, a task that is not done), 2 for a usage error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib
import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import click
import luigi
import peewee
from luigi.cmdline_parser import CmdlineParser
from luigi.task import flatten
from luigi.task_register import Register, TaskClassException

import astra
from astra import export, identity, outputs, values
from astra.batch import BatchTask
from astra.database import (
    DatabaseError,
    DatabaseNotReady,
    create_schema,
    describe,
    output_tables,
    records,
    upgrade_schema,
)
from astra.database.connection import SCHEMA_SQL
from astra.database.models import Task
from astra.targets import database_targets, stale_dynamic_dependencies

UTC = datetime.timezone.utc

#: How many tasks ``forget`` lists before it asks; the rest are counted per task name.
SHOWN = 20

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def _time(value: datetime.datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _iso(value: datetime.datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _short(value: str, width: int = 40) -> str:
    # The end of a long value (a file name, the last digits) tells values apart better than its start.
    return value if len(value) <= width else "..." + value[-(width - 3) :]


def _name(task: luigi.Task, width: int = 200) -> str:
    """A task as luigi writes it, cut short: a batch's list of a million files is no use on a terminal."""
    text = str(task)
    return text if len(text) <= width else text[: width - 4] + "...)"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _record(task: Task, parameters: dict[str, str] | None = None) -> dict:
    """A task record as plain JSON values."""
    record = {
        "pk": task.pk,
        "task_module": task.task_module,
        "task_name": task.task_name,
        "task_id": task.task_id,
        "task_hash": task.task_hash,
        "version": task.version,
        "status": task.status,
        "created": _iso(task.created),
        "started": _iso(task.started),
        "heartbeat": _iso(task.heartbeat),
        "completed": _iso(task.completed),
        "duration": task.duration,
        "host": task.host,
        "pid": task.pid,
        "attempts": task.attempts,
        "astra_version": task.astra_version,
        "error": task.error,
        "slurm_job_id": task.slurm_job_id,
        "slurm_node": task.slurm_node,
    }
    if parameters is not None:
        record["parameters"] = parameters
    return record


def _edge(task: Task) -> dict:
    return {k: getattr(task, k) for k in ("pk", "task_name", "task_id", "task_hash", "status", "dynamic")}


def _task_rows(tasks: Sequence[Task], parameters: dict[int, dict[str, str]]) -> list[list[str]]:
    return [
        [
            str(task.pk),
            task.task_name,
            task.status,
            task.version or "-",
            _time(task.completed or task.started or task.created),
            _duration(task.duration),
            task.host or "-",
            task.task_hash[:12],
            " ".join(f"{key}={_short(value)}" for key, value in parameters[task.pk].items()),
        ]
        for task in tasks
    ]


TASK_HEADERS = ["pk", "name", "status", "version", "when (UTC)", "duration", "host", "hash", "parameters"]


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str, allow_nan=False))


def _say(message: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays clean for scripts)."""
    click.echo(message, err=True)


# ---------------------------------------------------------------------------------------------------------------
# Options shared by several commands

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


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
            return datetime.datetime.now(UTC) - datetime.timedelta(seconds=seconds)
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither a time (2026-11-25, 2026-11-25T14:00) nor an age (30m, 2h, 7d)")
        return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_where(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, equals, wanted = value.partition("=")
        key = key.strip().replace("-", "_")  # --spectrum-path on luigi's command line is spectrum_path here
        if not equals or not key:
            raise click.BadParameter(f"{value!r} is not key=value", ctx=ctx, param=param)
        pairs.append((key, wanted))
    return tuple(pairs)


def filter_options(command: Callable) -> Callable:
    """The options that select tasks, collected into a ``filters`` argument."""
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
                "\\\\ a literal backslash. Repeat to require all."
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


def _nothing_matches(filters: records.Filters) -> click.ClickException:
    """Why nothing matched, when the filters name something that does not exist at all."""
    hints = []
    unknown = [name for name in filters.names if name not in records.known_names()]
    if unknown:
        known = ", ".join(records.known_names()) or "none yet"
        hints.append(f"no task is named {', '.join(map(repr, unknown))} (recorded: {known})")
    missing = records.unknown_parameter_names(key for key, _ in filters.where)
    if missing:
        hints.append(f"no task has a parameter {', '.join(map(repr, missing))}")
    return click.ClickException("no tasks match" + (": " + "; ".join(hints) if hints else ""))


def _help_if_bare(ctx: click.Context) -> None:
    """A group called without a command shows its help, as a usage error."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(2)


# ---------------------------------------------------------------------------------------------------------------
# Commands


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click.version_option(astra.__version__, prog_name="astra")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Look at, explain and forget the task records in the astra database."""
    _help_if_bare(ctx)


@cli.group(invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def db(ctx: click.Context) -> None:
    """The astra database: create its schema, see what it holds."""
    _help_if_bare(ctx)


@cli.group(invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def tasks(ctx: click.Context) -> None:
    """Recorded tasks: list, show, explain (why) and forget them."""
    _help_if_bare(ctx)


module_option = click.option(
    "--module",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Also the output tables of every astra.OutputModel in this module (repeat for several).",
)


def _import_modules(names: Sequence[str]) -> list:
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # task modules live where the user is, as for luigi --module
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            raise click.UsageError(f"cannot import module {name!r}: {exc}") from None
    return found


def _output_models(names: Sequence[str]) -> list:
    models = outputs.models_in(_import_modules(names))
    if names and not models:
        _say(f"note: no astra.OutputModel in {', '.join(names)}")
    return models


@db.command(context_settings=CONTEXT)
@module_option
def init(modules: tuple[str, ...]) -> None:
    """Create the astra schema in the configured database (a no-op where it exists; never drops data).

    On PostgreSQL this runs schema/astradb/astradb.sql. The database is $ASTRA_DATABASE_URL, else [astra] in
    luigi.cfg, else ~/.astra/astra.db. With --module, also the output tables of the tasks in those modules.
    """
    models = _output_models(modules)
    click.echo(f"astra schema ready in {create_schema()}")
    output_tables.create(models)
    for model in models:
        click.echo(f"output table {output_tables.table_name(model)} ready ({model.__module__}.{model.__name__})")


@db.command(context_settings=CONTEXT)
@module_option
def sql(modules: tuple[str, ...]) -> None:
    """Print the PostgreSQL DDL of the astra schema, or with --module of those modules' output tables.

    For whoever owns the database: `astra db sql --module workflows | psql -d sdss5db`. Safe to run again.
    """
    if not modules:
        click.echo(SCHEMA_SQL.read_text().rstrip())
        return
    for statement in output_tables.ddl(_output_models(modules)):
        click.echo(statement)


@db.command(context_settings=CONTEXT)
def upgrade() -> None:
    """Bring a database made by an older astra to this astra's schema, keeping every task and its result.

    Each step runs in a transaction of its own (on PostgreSQL, workers wait while it runs); running it again
    does nothing.
    """

    def progress(version: int, description: str) -> None:
        click.echo(f"schema {version}: {description}")

    where, before, after = upgrade_schema(progress)
    if before == after:
        click.echo(f"{where} already holds astra schema {after}; nothing to do")
    else:
        click.echo(f"upgraded {where} from astra schema {before} to {after}")


@db.command(context_settings=CONTEXT)
@json_option
def status(as_json: bool) -> None:
    """Where the database is (password masked) and how many tasks it holds, per status and per task name."""
    where = describe()
    summary = records.summary()
    if as_json:
        names = [{"task_name": name, **counts, "total": sum(counts.values())} for name, counts in summary.names.items()]
        _print_json(
            {
                "database": where,
                "total": summary.total,
                "statuses": summary.statuses,
                "names": names,
                "parameters": summary.parameters,
                "dependencies": summary.dependencies,
            }
        )
        return
    counts = ", ".join(f"{status} {n}" for status, n in summary.statuses.items())
    click.echo(f"database      {where}")
    click.echo(f"tasks         {summary.total} ({counts})")
    click.echo(f"parameters    {summary.parameters} distinct values")
    click.echo(f"dependencies  {summary.dependencies} edges")
    if summary.names:
        rows = [
            [name, *(str(counts[s]) for s in records.STATUSES), str(sum(counts.values()))]
            for name, counts in summary.names.items()
        ]
        click.echo()
        click.echo(_table(["name", *records.STATUSES, "total"], rows))


@tasks.command("list", context_settings=CONTEXT)
@filter_options
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0), help="At most this many (0: all).")
@json_option
def list_tasks(filters: records.Filters, limit: int, as_json: bool) -> None:
    """List recorded tasks, newest first. Exit code 1 when none match."""
    found = records.find(filters, limit)
    parameters = records.parameters_of([task.pk for task in found])
    if as_json:
        _print_json([_record(task, parameters[task.pk]) for task in found])
    elif found:
        click.echo(_table(TASK_HEADERS, _task_rows(found, parameters)))
    if not found:
        raise _nothing_matches(filters)
    if limit and len(found) == limit:
        total = records.count(filters)
        if total > limit:
            _say(f"({limit} of {total} shown; --limit 0 shows all)")


def _resolve(ref: str) -> Task:
    try:
        task = records.resolve(ref)
    except records.AmbiguousReferenceError as exc:
        raise click.ClickException(f"{exc}; give the pk or a longer hash") from None
    if task is None:
        raise click.ClickException(f"no task has pk, luigi task_id or hash (prefix) {ref!r}")
    return task


@tasks.command(context_settings=CONTEXT)
@click.argument("ref")
@json_option
def show(ref: str, as_json: bool) -> None:
    """Everything recorded about one task: REF is its pk, its hash (or a unique prefix) or its luigi task_id."""
    task = records.whole(_resolve(ref).pk)  # the only task whose result is loaded
    if task is None:
        raise click.ClickException(f"task {ref!r} was forgotten meanwhile")
    parameters = records.parameters_of([task.pk])[task.pk]
    upstream, downstream = records.requires(task.pk), records.required_by(task.pk)
    if as_json:
        record = _record(task, parameters)
        record["result"] = values.plain(task.result)  # strict JSON: NaN is {"$float": "NaN"}
        record["traceback"] = task.traceback
        record["requires"] = [_edge(t) for t in upstream]
        record["required_by"] = [_edge(t) for t in downstream]
        _print_json(record)
        return
    fields = [
        ("status", task.status),
        ("module", task.task_module),
        ("luigi id", task.task_id),
        ("hash", task.task_hash),
        ("version", task.version or "(none)"),
        ("created", _time(task.created)),
        ("started", _time(task.started)),
        ("heartbeat", _time(task.heartbeat)),
        ("completed", _time(task.completed)),
        ("duration", _duration(task.duration)),
        ("host", f"{task.host or '-'} (pid {task.pid or '-'})"),
        ("attempts", str(task.attempts)),
        ("astra", task.astra_version),
    ]
    if task.slurm_job_id:
        fields.append(("slurm", f"SLURM job {task.slurm_job_id} on {task.slurm_node or '(not started)'}"))
    click.echo(f"task {task.pk}: {task.task_name}")
    for label, value in fields:
        click.echo(f"  {label:<10} {value}")
    click.echo(f"parameters ({len(parameters)})")
    for key, value in parameters.items():
        click.echo(f"  {key} = {value}")
    for label, linked in (("requires", upstream), ("required by", downstream)):
        click.echo(f"{label} ({len(linked)})")
        for other in linked:
            dynamic = " (dynamic)" if other.dynamic else ""
            click.echo(f"  {other.pk:<6} {other.task_name:<20} {other.status:<8} {other.task_id}{dynamic}")
    if task.result is not None:
        click.echo(f"result\n  {_short(json.dumps(values.plain(task.result)), 2000)}")
    if task.error:
        click.echo(f"error\n  {task.error}")
    if task.traceback:
        click.echo("traceback\n" + "\n".join("  " + line for line in task.traceback.rstrip().splitlines()))


@tasks.command(context_settings=CONTEXT)
@click.argument("refs", nargs=-1, metavar="[REF]...")
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every task (when no REF or filter is given).")
@click.option("--cascade", is_flag=True, help="Also forget every task downstream that required them.")
@click.option("--dry-run", is_flag=True, help="Only show what would be forgotten.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def forget(
    refs: tuple[str, ...],
    filters: records.Filters,
    everything: bool,
    cascade: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete task records, so luigi runs those tasks again next time they are asked for.

    Select the tasks by REF (pk, hash or luigi task_id) or by filters. Their parameters stay where other tasks
    still use them. Everything is deleted in one transaction.
    """
    if refs and (filters or everything):
        raise click.UsageError("give task references or filters, not both")
    if not (refs or filters or everything):
        raise click.UsageError("say which tasks to forget: REF..., filters (see --help) or --all")
    chosen = [_resolve(ref) for ref in refs] if refs else records.find(filters)
    if not chosen:
        raise _nothing_matches(filters)
    if cascade:
        chosen += records.get(records.downstream(task.pk for task in chosen))
    chosen = list({task.pk: task for task in chosen}.values())
    running = sum(task.status == "running" for task in chosen)
    if not as_json:
        _describe_plan(chosen, cascade)
        if running:
            _say(f"note: {running} of them are running; their workers will not be able to record them")
    if dry_run:
        if as_json:
            _print_json({"dry_run": True, "tasks": [_record(task) for task in chosen]})
        else:
            _say("dry run: nothing forgotten")
        return
    if not yes:
        click.confirm(f"Forget these {len(chosen)} tasks?", abort=True, err=True)
    forgotten = records.forget([task.pk for task in chosen], cascade=cascade)
    if as_json:
        _print_json(
            {
                "dry_run": False,
                "tasks": [_record(task) for task in forgotten.tasks],
                "parameters_removed": forgotten.parameters,
            }
        )
    else:
        click.echo(
            f"forgot {len(forgotten.tasks)} tasks; "
            f"removed {forgotten.parameters} parameter values that no task uses any more"
        )


def _describe_plan(chosen: list[Task], cascade: bool) -> None:
    per_name = Counter(task.task_name for task in chosen)
    summary = ", ".join(f"{n} {name}" for name, n in sorted(per_name.items()))
    click.echo(f"{len(chosen)} tasks to forget ({summary}){' with everything downstream' if cascade else ''}:")
    shown = sorted(chosen, key=lambda task: task.pk)[:SHOWN]
    click.echo(_table(TASK_HEADERS, _task_rows(shown, records.parameters_of([t.pk for t in shown]))))
    if len(chosen) > SHOWN:
        click.echo(f"... and {len(chosen) - SHOWN} more")


# ---------------------------------------------------------------------------------------------------------------
# why


def _build_task(family: str, args: Sequence[str], module: str | None) -> luigi.Task:
    """The task luigi would build from ``luigi [--module M] FAMILY ARGS...``."""
    for i, arg in enumerate(args):  # --module after the task, as luigi allows
        if arg == "--module" and i + 1 < len(args):
            module = args[i + 1]
        elif arg.startswith("--module="):
            module = arg.split("=", 1)[1]
    if os.getcwd() not in sys.path:
        # The console script's path starts at its own directory; look for task modules where the user is, last.
        sys.path.append(os.getcwd())
    modules = [module] if module else []
    if not module and family not in Register.task_names():
        # The records say which module defines the task, so --module is only needed for tasks never recorded.
        modules = records.modules_of(family)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise click.UsageError(f"cannot import module {name!r}: {exc}") from None
    try:
        Register.get_task_cls(family)
    except TaskClassException:
        raise click.UsageError(f"no task class {family!r} is known; give --module to import it") from None
    errors = io.StringIO()
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
        raise click.UsageError(str(exc).strip().splitlines()[0]) from None


def _astra_requirements(task: luigi.Task) -> dict[str, luigi.Task]:
    """The tasks ``task`` requires that astra records, by hash."""
    return {identity.task_hash(t): t for t in flatten(task.requires()) if database_targets([t])}


def _difference_lines(candidate: records.Candidate, wanted: dict[str, luigi.Task]) -> list[str]:
    lines = []
    for key, (have, want) in candidate.parameters.items():
        have_text = "(not given)" if have is None else repr(have)
        lines.append(f"parameter {key}: recorded {have_text}, asked {want!r}")
    if candidate.module:
        lines.append(f"module: recorded {candidate.module[0]!r}, asked {candidate.module[1]!r}")
    if candidate.version:
        have, want = candidate.version
        lines.append(f"version: recorded {have or '(none)'!r}, asked {want or '(none)'!r}")
    if (candidate.missing_requires or candidate.extra_requires) and lines:
        # Different parameters already explain it; different upstream tasks follow from them.
        parts = []
        if candidate.missing_requires:
            parts.append(f"needs {len(candidate.missing_requires)} tasks it was not made from")
        if candidate.extra_requires:
            parts.append(f"was made from {len(candidate.extra_requires)} tasks this one does not need")
        lines.append(f"upstream differs too: {' and '.join(parts)}")
    elif candidate.missing_requires or candidate.extra_requires:
        status = records.recorded(candidate.missing_requires)
        for task_hash in candidate.missing_requires:
            state = status[task_hash].status if task_hash in status else "not recorded"
            lines.append(f"upstream: needs {_name(wanted[task_hash])} ({state}, hash {task_hash[:12]})")
        for other in candidate.extra_requires:
            lines.append(f"upstream: was made from task {other.pk} {other.task_id} (version {other.version or '-'})")
    if candidate.task.status != "done":
        lines.append(
            f"status: {candidate.task.status}" + (f" ({candidate.task.error})" if candidate.task.error else "")
        )
    if not lines:
        lines.append("no difference in parameters, version or recorded upstream: an input that is not an astra task")
    return lines


@tasks.command(
    context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--module", help="Module to import the task class from (luigi's --module).")
@json_option
@click.argument("family")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[--PARAM VALUE]...")
def why(module: str | None, as_json: bool, family: str, args: tuple[str, ...]) -> None:
    """Is this task done, and if not, which recorded tasks are closest and how do they differ?

    Give the task as on luigi's command line (--module only if no task of that name was ever recorded):

    \b
      astra tasks why --module workflows EstimateSNR --spectrum-path /data/spec-00001.fits

    Exit code 0 when the task is done, 1 when luigi would run it. For a batch, it counts the items per status.
    """
    if "--json" in args:  # given after the task, where luigi's parser would reject it
        as_json, args = True, tuple(arg for arg in args if arg != "--json")
    task = _build_task(family, args, module)
    if isinstance(task, BatchTask):
        sys.exit(_why_batch(task, as_json))
    try:
        if not database_targets([task]):
            raise click.UsageError(
                f"{_name(task)} is not an astra task: luigi checks its own output, not the astra records"
            )
        task_hash = identity.task_hash(task)
    except identity.IdentityError as exc:
        raise click.ClickException(f"{exc}; luigi will not run {_name(task)} or anything that requires it")
    record = records.by_hash(task_hash)
    stale = None
    if record is not None and record.status == "done" and record.dynamic_dependencies:
        stale = stale_dynamic_dependencies({task_hash: record.dynamic_dependencies}).get(task_hash)
    wanted = _astra_requirements(task)
    upstream = records.recorded(wanted)
    not_done = [t for h, t in wanted.items() if h not in upstream or upstream[h].status != "done"]
    candidates = (
        []
        if record
        else records.closest(
            task.task_module,
            task.task_family,
            identity.task_version(task),
            identity.parameters(task, significant_only=True),
            list(wanted),
        )
    )
    if as_json:
        _print_json(
            {
                "task": str(task),
                "task_hash": task_hash,
                "status": record.status if record else "not recorded",
                "record": _record(record) if record else None,
                "complete": record is not None and record.status == "done" and stale is None,
                "not_complete_because": stale,
                "upstream_not_done": [str(t) for t in not_done],
                "closest": [
                    {"record": _record(c.task), "differences": _difference_lines(c, wanted)} for c in candidates
                ],
            }
        )
    else:
        _print_why(task, task_hash, record, not_done, candidates, wanted, stale)
    if record is None or record.status != "done" or stale is not None:
        sys.exit(1)


def _why_batch(batch: BatchTask, as_json: bool) -> int:
    """A batch is done when all its items are: how many are, and which are not. The exit code."""
    items = list(batch.items())
    status = records.statuses([item.task_hash for item in items])
    counts = Counter(status.get(item.task_hash, "not recorded") for item in items)
    pending = [item for item in items if status.get(item.task_hash) != "done"]
    errors = {h: t.error for h, t in records.recorded([item.task_hash for item in pending[:SHOWN]]).items()}
    if as_json:
        shown = [
            {
                "task_id": item.task_id,
                "task_hash": item.task_hash,
                "parameters": item.parameters,
                "status": status.get(item.task_hash, "not recorded"),
                "error": errors.get(item.task_hash),
            }
            for item in pending[:SHOWN]
        ]
        _print_json({"task": str(batch), "batch": True, "items": len(items), "statuses": counts, "not_done": shown})
        return 1 if pending else 0
    family = batch.item_class.get_task_family()
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    click.echo(f"{_name(batch)} is a batch of {len(items)} {family} items: {summary or 'none'}.")
    if not pending:
        click.echo("luigi will not run it again.")
        return 0
    click.echo(f"luigi will run it for the {len(pending)} items not done:")
    for item in pending[:SHOWN]:
        state = status.get(item.task_hash, "not recorded")
        error = f": {errors[item.task_hash]}" if errors.get(item.task_hash) else ""
        click.echo(f"  {item.task_id} ({state}{error})")
    if len(pending) > SHOWN:
        click.echo(f"  ... and {len(pending) - SHOWN} more")
    return 1


def _print_why(task, task_hash, record, not_done, candidates, wanted, stale) -> None:
    if record is not None:
        where = f"task {record.pk} on {record.host or '?'} (pid {record.pid or '?'})"
        if record.status == "done" and stale is not None:
            click.echo(f"{_name(task)} is recorded done ({where}, completed {_time(record.completed)} UTC),")
            click.echo(f"but luigi will run it again: {stale}.")
        elif record.status == "done":
            click.echo(f"{_name(task)} is done: {where}, completed {_time(record.completed)} UTC.")
            click.echo(f"luigi will not run it again; `astra tasks forget {record.pk}` would make it.")
        elif record.status == "running":
            click.echo(f"{_name(task)} is running: {where}, attempt {record.attempts}.")
            click.echo(f"  started {_time(record.started)} UTC, last heartbeat {_time(record.heartbeat)} UTC")
        else:
            click.echo(f"{_name(task)} failed: {where}, attempt {record.attempts}.")
            click.echo(f"  error: {record.error}")
            click.echo("luigi will run it again.")
        return
    click.echo(f"{_name(task)} is not recorded: luigi will run it (hash {task_hash[:12]}).")
    if not_done:
        names = ", ".join(_name(t) for t in not_done[:5]) + (" ..." if len(not_done) > 5 else "")
        click.echo(f"{len(not_done)} of the astra tasks it requires are not done either: {names}")
    if not candidates:
        click.echo(f"No {task.task_family} task has been recorded yet.")
        return
    click.echo(f"Closest recorded {task.task_family} tasks:")
    for candidate in candidates:
        other = candidate.task
        click.echo(
            f"  task {other.pk} ({other.status}, {_time(other.completed or other.created)} UTC, {other.task_id})"
        )
        for line in _difference_lines(candidate, wanted):
            click.echo(f"    {line}")


# ---------------------------------------------------------------------------------------------------------------
# results


def _task_class(name: str, modules: Sequence[str]) -> type[luigi.Task] | None:
    """The task class named ``name``, imported from ``modules`` or where its records say; None if it cannot be."""
    try:
        _import_modules(modules or records.modules_of(name))
    except click.UsageError as exc:
        _say(f"note: {exc.format_message()}; using the recorded JSON results")
    try:
        return Register.get_task_cls(name)
    except TaskClassException:
        return None


def _typed(cls: type[luigi.Task] | None, name: str, text: str | None) -> object:
    """A recorded parameter value as its parameter parses it (an int for an IntParameter), else as recorded."""
    parameter = dict(cls.get_params()).get(name) if cls is not None else None
    if parameter is None or text is None:
        return text
    try:
        value = parameter.parse(text)
    except Exception:  # recorded by another version of the class: keep the text
        return text
    return value if isinstance(value, (int, float, str, bool)) else text


def _results_table(name: str, filters: records.Filters, version: str | None):
    """The astropy Table of the results of the done tasks named ``name`` that match ``filters``."""
    tasks = records.select(filters)
    if version is not None:
        tasks = tasks.where(Task.version == version)
    cls = _task_class(name, filters.modules)
    model = outputs.output_model(cls) if cls is not None else None
    if model is not None:
        parameters = outputs.parameter_names(cls)
        query = output_tables.select_rows(model, tasks.select(Task.pk).order_by(), parameters)
        fields = [f for f in model._meta.fields if f not in ("pk", "task")]
        task_columns = [output_tables.task_column(model, n) for n in [*parameters, "version", "completed"]]
        names = ["task_pk", *task_columns, *fields]
        typed = dict(zip(task_columns, parameters))
        rows = (
            [_typed(cls, typed[a], getattr(row, a)) if a in typed else getattr(row, a) for a in names]
            for row in query.iterator()
        )
        return export.table(names, rows)
    # Listing leaves results out (they can be large); here they are the table.
    found = list(tasks.select_extend(Task.result).order_by(Task.pk))
    parameters = records.parameters_of([task.pk for task in found])
    parameter_names = list(dict.fromkeys(key for task in found for key in parameters[task.pk]))
    values = [task.result for task in found]  # decoded by the result field (astra/values.py)
    keys = list(dict.fromkeys(k for value in values if isinstance(value, dict) for k in value))
    if any(value is not None and not isinstance(value, dict) for value in values):
        keys.append("result")  # results that are not dicts: one column with the whole value
    names = ["task_pk", *parameter_names, "version", "completed"]
    names += [key if key not in names else f"result_{key}" for key in keys]
    rows = []
    for task, value in zip(found, values):
        given = parameters[task.pk]
        row = [task.pk, *(_typed(cls, k, given.get(k)) for k in parameter_names), task.version, task.completed]
        for key in keys:
            if isinstance(value, dict):
                row.append(value.get(key))
            else:
                row.append(value if key == "result" else None)
        rows.append(row)
    return export.table(names, rows)


@cli.command("results", context_settings=CONTEXT)
@click.argument("name")
@filter_options
@click.option("--version", "task_version", help="Only tasks of this version (default: every recorded version).")
@click.option("--columns", help="Comma-separated columns to keep, in that order (default: all).")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), help="Output format (default: table).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--plot", metavar="COLUMN|X,Y", help="Draw a histogram of COLUMN or a scatter of X,Y into -o FILE.")
@json_option
def results(
    name: str,
    filters: records.Filters,
    task_version: str | None,
    columns: str | None,
    fmt: str | None,
    output: str | None,
    plot: str | None,
    as_json: bool,
) -> None:
    """The results of the done tasks named NAME: one row per output row (or per task, for tasks without one).

    Columns: task_pk, the task's parameters, version, completed, then the output columns (for a task without an
    output model, the top-level keys of its result). Select tasks with the filters of `astra tasks list`.

    \b
      astra results EstimateSNR --format fits -o snr.fits
      astra results EstimateSNR --plot snr -o snr.png
    """
    if filters.names and set(filters.names) != {name}:
        raise click.UsageError(f"results are those of NAME ({name}); --name cannot ask for others")
    if filters.statuses and set(filters.statuses) != {"done"}:
        raise click.UsageError("only done tasks have results; leave out --status")
    if as_json:
        if fmt not in (None, "json"):
            raise click.UsageError(f"--json and --format {fmt} contradict each other")
        fmt = "json"
    fmt = fmt or "table"
    if (fmt in export.BINARY or plot) and not output:
        raise click.UsageError(f"{'--plot' if plot else f'--format {fmt}'} writes a file: give -o FILE")
    filters = dataclasses.replace(filters, names=(name,), statuses=("done",))
    found = _results_table(name, filters, task_version)
    if not len(found):
        raise (
            _nothing_matches(filters)
            if name not in records.known_names()
            else click.ClickException(f"no done {name} task has results that match")
        )
    try:
        if columns:
            found = export.keep(found, [c.strip() for c in columns.split(",") if c.strip()])
        if plot:
            wanted = [c.strip() for c in plot.split(",")]
            if len(wanted) not in (1, 2):
                raise click.UsageError("--plot takes one column (histogram) or two, X,Y (scatter plot)")
            drawn = export.plot(found, wanted, output, name)
            _say(f"drew {drawn} of {len(found)} rows into {output}")
        elif output:
            export.write(found, fmt, output)
            _say(f"wrote {len(found)} rows, {len(found.colnames)} columns to {output}")
        else:
            click.echo(export.render(found, fmt))
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``astra`` console script."""
    try:
        code = cli.main(args, prog_name="astra", standalone_mode=False)
    except DatabaseNotReady as exc:
        _say(str(exc.code))
        code = 1
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _say(f"astra: {exc.format_message()}{hint}")
        code = 2
    except click.Abort:
        # An answer piped in is not echoed, so the prompt's line is still open.
        _say(("" if sys.stdin.isatty() else "\n") + "astra: aborted, nothing changed")
        code = 1
    except click.ClickException as exc:
        _say(f"astra: {exc.format_message()}")
        code = exc.exit_code
    except (DatabaseError, peewee.PeeweeException) as exc:
        lines = str(exc).strip().splitlines()
        _say(f"astra: database error: {lines[0] if lines else type(exc).__name__}")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
