"""``astra results``: the results of done tasks as a table, a file or a plot."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import click
import luigi
import peewee
from luigi.task_register import Register, TaskClassException

from astra import export, identity, outputs
from astra.cli import formats
from astra.cli.options import CONTEXT, filter_options, import_modules, json_option, nothing_matches
from astra.database import output_tables, records
from astra.database.models import Task
from astra.results_table import matching, results_table


def _task_class(name: str, modules: Sequence[str]) -> type[luigi.Task] | None:
    """The task class named ``name``, imported from ``modules`` or where its records say; None if it cannot be."""
    try:
        import_modules(modules or records.modules_of(name))
    except click.UsageError as exc:
        formats.say(f"note: {exc.format_message()}; using the recorded JSON results")
    try:
        return Register.get_task_cls(name)
    except TaskClassException:
        return None


def _rows(cls: type[luigi.Task] | None, tasks: peewee.ModelSelect) -> int:
    """How many rows ``astra results`` would show for ``tasks``: their output rows, or one per task."""
    model = outputs.output_model(cls) if cls is not None else None
    return output_tables.count_rows(model, tasks.select(Task.pk)) if model is not None else tasks.count()


@click.command("results", context_settings=CONTEXT)
@click.argument("name")
@filter_options
@click.option("--version", "task_version", help="Only tasks of this version (default: the version the class declares).")
@click.option("--all-versions", is_flag=True, help="The tasks of every recorded version.")
@click.option("--columns", help="Comma-separated columns to keep, in that order (default: all).")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), help="Output format (default: table).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--plot", metavar="COLUMN|X,Y", help="Draw a histogram of COLUMN or a scatter of X,Y into -o FILE.")
@json_option
def results(
    name: str,
    filters: records.Filters,
    task_version: str | None,
    all_versions: bool,
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
    cls = _task_class(name, filters.modules)
    if task_version is not None and all_versions:
        raise click.UsageError("--version and --all-versions contradict each other")
    if task_version is None and not all_versions and cls is not None:
        task_version = identity.task_version(cls)
    found = results_table(cls, matching(filters, task_version))
    others = 0 if task_version is None else _rows(cls, matching(filters, None).where(Task.version != task_version))
    if not len(found):
        if name not in records.known_names():
            raise nothing_matches(filters)
        if others:
            raise click.ClickException(
                f"no done {name} task of version {task_version!r} has results that match; {others} of other "
                "versions do (--all-versions)"
            )
        raise click.ClickException(f"no done {name} task has results that match")
    if others:
        formats.say(f"note: left out {others} rows of versions other than {task_version!r} (--all-versions)")
    try:
        if columns:
            found = export.keep(found, [c.strip() for c in columns.split(",") if c.strip()])
        if plot:
            wanted = [c.strip() for c in plot.split(",")]
            if len(wanted) not in (1, 2):
                raise click.UsageError("--plot takes one column (histogram) or two, X,Y (scatter plot)")
            drawn = export.plot(found, wanted, output, name)
            formats.say(f"drew {drawn} of {len(found)} rows into {output}")
        elif output:
            export.write(found, fmt, output)
            formats.say(f"wrote {len(found)} rows, {len(found.colnames)} columns to {output}")
        else:
            click.echo(export.render(found, fmt))
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from None
