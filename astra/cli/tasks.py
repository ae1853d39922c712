"""``astra tasks``: list, show and forget recorded tasks (``why`` is in :mod:`astra.cli.why`)."""

from __future__ import annotations

import heapq
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import click

from astra import outputs, values
from astra.cli import formats
from astra.cli.lazy_group import LazyGroup
from astra.cli.options import CONTEXT, filter_options, help_if_bare, json_option, nothing_matches, task_class
from astra.database import only_existing, only_reading, output_tables, records
from astra.database.models import Task
from astra.database.queries import CHUNK, chunked

if TYPE_CHECKING:
    from astropy.table import Table

#: How many tasks ``forget`` lists before it asks; the rest are counted per task name.
SHOWN = 20
#: How many output rows ``show`` prints.
SHOWN_ROWS = 5
#: Bytes of the records ``forget --json`` keeps in memory before it spools them to a temporary file.
SPOOLED = 2**20


def _output_rows(task: Task) -> tuple[str, Table, int] | None:
    """The output table of a task whose class has an output model, its first rows there (as a table) and how
    many rows it made; None for a task without one, or whose class cannot be imported.
    """
    if task.status != "done":
        return None
    cls = task_class(task.task_name, [task.task_module])
    model = outputs.output_model(cls) if cls is not None else None
    if model is None:
        return None
    from astra import export  # only for a task with an output model: export imports astropy (~0.2 s)

    fields = [name for name in model._meta.fields if name not in ("pk", "task")]
    rows, total = output_tables.first_rows(model, task.pk, SHOWN_ROWS)
    found = export.table(fields, [[getattr(row, name) for name in fields] for row in rows])
    units = outputs.units(model)
    for name in fields:
        export.annotate(found, name, units.get(name), model._meta.fields[name].help_text)
    return output_tables.table_name(model), found, total


@click.group(
    cls=LazyGroup, lazy_commands={"why": "astra.cli.why:why"}, invoke_without_command=True, context_settings=CONTEXT
)
@click.pass_context
def tasks(ctx: click.Context) -> None:
    """Recorded tasks: list, show, explain (why) and forget them."""
    help_if_bare(ctx)


@tasks.command("list", context_settings=CONTEXT)
@filter_options
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0), help="At most this many (0: all).")
@json_option
def list_tasks(filters: records.Filters, limit: int, as_json: bool) -> None:
    """List recorded tasks, newest first. Exit code 1 when none match."""
    only_reading()  # a read-only SQLite file does, as a read replica does
    listed = records.pks(filters, limit)
    # The tasks are read a chunk at a time and only what is shown is kept: their records (peewee objects) and JSON
    # held all at once took ~8 kB per task (6 GB for --limit 0 of 770,000 tasks).
    pages = ((records.get(chunk)[::-1], records.parameters_of(chunk)) for chunk in chunked(listed))  # newest first
    if as_json:
        formats.print_json_list(
            formats.record(task, parameters[task.pk]) for found, parameters in pages for task in found
        )
    elif listed:
        rows = [row for found, parameters in pages for row in formats.task_rows(found, parameters)]
        formats.out(formats.table(formats.TASK_HEADERS, rows) + "\n")
    if not listed:
        raise nothing_matches(filters)
    if limit and len(listed) == limit:
        # Counted up to a bound: an exact count of a filter most tasks match would read them all.
        most = max(records.COUNTED, limit)
        total = records.count(filters, most)
        if total > most:
            formats.say(f"({limit} of more than {most:,} shown; --limit 0 shows all)")
        elif total > limit:
            formats.say(f"({limit} of {total} shown; --limit 0 shows all)")


def _resolve(ref: str) -> Task:
    try:
        task = records.resolve(ref)
    except records.AmbiguousReferenceError as exc:
        raise click.ClickException(f"{exc}; give the pk or a longer hash") from None
    if task is None:
        raise click.ClickException(f"no task has pk, luigi task_id or hash (prefix) {formats.given(ref)}")
    return task


@tasks.command(context_settings=CONTEXT)
@click.argument("ref")
@click.option("--traceback", "with_traceback", is_flag=True, help="Also the traceback of a failed task.")
@json_option
def show(ref: str, with_traceback: bool, as_json: bool) -> None:
    """Everything recorded about one task: REF is its pk, its hash (or a unique prefix) or its luigi task_id."""
    only_reading()  # a read-only SQLite file does, as a read replica does
    task = records.whole(_resolve(ref).pk)  # the only task whose result is loaded
    if task is None:
        raise click.ClickException(f"task {formats.given(ref)} was forgotten meanwhile")
    parameters = records.parameters_of([task.pk])[task.pk]
    upstream, downstream = records.requires(task.pk), records.required_by(task.pk)
    try:
        output = _output_rows(task)
    except TypeError as exc:  # the class's output model is wrong, e.g. its Meta.units names no field
        raise click.ClickException(str(exc)) from None
    if as_json:
        record = formats.record(task, parameters)
        record["result"] = values.plain(task.result)  # strict JSON: NaN is {"$float": "NaN"}
        if output is not None:
            table, found, total = output
            # The rows are the result of a task with an output model (strict JSON: NaN is null, as in `results`).
            from astra import export  # imported already, by _output_rows

            record["output"] = {"table": table, "rows": total, "first_rows": export.records(found)}
        record["traceback"] = task.traceback
        record["requires"] = [formats.edge(t) for t in upstream]
        record["required_by"] = [formats.edge(t) for t in downstream]
        formats.print_json(record)
        return
    fields = [
        ("status", formats.status(task).replace("waiting", "waiting (for the tasks its run() yielded)")),
        ("module", task.task_module),
        ("luigi id", task.task_id),
        ("hash", task.task_hash),
        ("version", task.version or "(none)"),
        ("created", formats.time(task.created)),
        ("started", formats.time(task.started)),
        ("heartbeat", formats.time(task.heartbeat)),
        ("completed", formats.time(task.completed)),
        ("duration", formats.duration(task.duration)),
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
        for other in linked[:SHOWN]:  # a summary of a batch's million items links to each (--json lists them all)
            dynamic = " (dynamic)" if other.dynamic else ""
            click.echo(f"  {other.pk:<6} {other.task_name:<20} {other.status:<8} {other.task_id}{dynamic}")
        if len(linked) > SHOWN:
            click.echo(f"  ... and {len(linked) - SHOWN} more")
    if task.result is not None:
        click.echo(f"result\n  {formats.short(json.dumps(values.plain(task.result)), 2000)}")
    if output is not None:
        table, found, total = output
        more = f", the first {len(found)} shown; all: astra results {task.task_name}" if total > len(found) else ""
        click.echo(f"output rows ({total} in {table}{more})")
        if len(found):
            click.echo("\n".join("  " + line for line in found.pformat(max_lines=-1, max_width=-1)))
    if task.error:
        click.echo(f"error\n  {task.error}")
    if task.traceback and with_traceback:
        click.echo("traceback\n" + "\n".join("  " + line for line in task.traceback.rstrip().splitlines()))
    elif task.traceback:
        click.echo(f"traceback\n  astra tasks show --traceback {task.pk}")


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
    only_existing()  # a mistyped SQLite path is said so, not made a new database with nothing to forget
    # Only the pks are held (ints): the records of 770,000 tasks took 1.75 GB, and 10^7 could not be. In the order
    # --dry-run --json lists them: as given, or newest first; then what is downstream, oldest first.
    if refs:
        listed = list(dict.fromkeys(_resolve(ref).pk for ref in refs))
    else:
        listed = records.pks(filters) if filters else records.every_pk()[::-1]
    if not listed:
        raise nothing_matches(filters)
    chosen = set(listed)
    below = sorted(records.downstream(chosen)) if cascade else []
    chosen.update(below)
    counted = records.per_name_and_status(chosen)
    total = sum(counted.values())
    running = sum(n for (_, status), n in counted.items() if status == "running")
    if not as_json:
        _describe_plan(chosen, counted, cascade)
        if running:
            formats.say(f"note: {running} of them are running; their workers will not be able to record them")
    if dry_run:
        if as_json:
            found = _in_order(itertools.chain(listed, below))
            _print_json(True, formats.json_list((formats.record(task) for task in found), depth=1))
        else:
            formats.say("dry run: nothing forgotten")
        return
    if not yes:
        click.confirm(f"Forget these {total} tasks?", abort=True, err=True)
    if not as_json:
        forgotten = records.forget(chosen, cascade=cascade)
        click.echo(
            f"forgot {forgotten.tasks} tasks; "
            f"removed {forgotten.parameters} parameter values that no task uses any more"
        )
        return
    # The records are read just before they are deleted and printed once the transaction has committed: until
    # then they wait in a temporary file (in memory while small), one JSON line each.
    with tempfile.SpooledTemporaryFile(max_size=SPOOLED, mode="w+", encoding="utf-8") as spool:

        def keep(tasks: list[Task]) -> None:
            spool.writelines(json.dumps(formats.record(task), default=str) + "\n" for task in tasks)

        forgotten = records.forget(chosen, cascade=cascade, each=keep)
        spool.seek(0)
        listed = formats.json_list((json.loads(line) for line in spool), depth=1)
        _print_json(False, listed, forgotten.parameters)


def _in_order(pks: Iterator[int]) -> Iterator[Task]:
    """The records of those of the tasks ``pks`` that exist, in that order, read a chunk at a time."""
    while chunk := list(itertools.islice(pks, CHUNK)):
        found = {task.pk: task for task in records.get(chunk)}
        yield from (found[pk] for pk in chunk if pk in found)


def _print_json(dry_run: bool, listed: Iterable[str], removed: int | None = None) -> None:
    """The text of :func:`formats.print_json` of ``{"dry_run": ..., "tasks": [...], "parameters_removed": ...}``
    (without the last unless ``removed``), the tasks' list given as text in pieces (see formats.json_list)."""
    formats.out(f'{{\n  "dry_run": {json.dumps(dry_run)},\n  "tasks": ')
    for text in listed:
        formats.out(text)
    formats.out(("" if removed is None else f',\n  "parameters_removed": {removed}') + "\n}\n")


def _describe_plan(chosen: set[int], counted: dict[tuple[str, str], int], cascade: bool) -> None:
    per_name: Counter[str] = Counter()
    for (name, _), n in counted.items():
        per_name[name] += n
    total = sum(per_name.values())
    summary = ", ".join(f"{n} {name}" for name, n in sorted(per_name.items()))
    click.echo(f"{total} tasks to forget ({summary}){' with everything downstream' if cascade else ''}:")
    shown = records.get(heapq.nsmallest(SHOWN, chosen))
    parameters = records.parameters_of([t.pk for t in shown])
    formats.out(formats.table(formats.TASK_HEADERS, formats.task_rows(shown, parameters)) + "\n")
    if total > SHOWN:
        click.echo(f"... and {total - SHOWN} more")
