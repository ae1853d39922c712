"""``astra results``: the results of done tasks as a table, a file or a plot."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import click
import luigi
from luigi.task_register import Register, TaskClassException

from astra import export
from astra.cli import formats
from astra.cli.options import CONTEXT, filter_options, import_modules, json_option, nothing_matches
from astra.database import records
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


@click.command("results", context_settings=CONTEXT)
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
    tasks = matching(filters, task_version)
    found = results_table(_task_class(name, filters.modules), tasks)
    if not len(found):
        raise (
            nothing_matches(filters)
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
            formats.say(f"drew {drawn} of {len(found)} rows into {output}")
        elif output:
            export.write(found, fmt, output)
            formats.say(f"wrote {len(found)} rows, {len(found.colnames)} columns to {output}")
        else:
            click.echo(export.render(found, fmt))
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from None
