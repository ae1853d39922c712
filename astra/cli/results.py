"""``astra results``: the results of done tasks as a table, a file or a plot."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING

import click

from astra import export, identity, outputs
from astra.cli import formats
from astra.cli.options import CONTEXT, as_recorded, filter_options, json_option, nothing_matches, task_class
from astra.database import only_reading, output_tables, records
from astra.database.connection import describe, files
from astra.database.models import Task
from astra.database.queries import chunked, reading
from astra.results_table import Versions, results_chunks, results_table
from astra.version import __version__

if TYPE_CHECKING:
    from astropy.table import Table


def provenance(name: str, filters: records.Filters, task_version: str | None, asked: list[str]) -> dict[str, str]:
    """What an exported file records of where its rows come from (see export.PROVENANCE): ``task_version`` is the
    version of its rows (None: every version), ``asked`` the version options given on the command line."""
    query = [name, *(f"--module={m}" for m in filters.modules), *(f"--where={k}={v}" for k, v in filters.where)]
    if filters.since:
        query.append(f"--since={filters.since.astimezone(formats.UTC).isoformat()}")
    query += asked
    return {
        "ASTRAVER": __version__,
        "DATE": datetime.datetime.now(formats.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "TASKNAME": name,
        "TASKVERS": "*" if task_version is None else task_version,  # '' for a class that declares no version
        "QUERY": shlex.join(query),
        "DATABASE": describe(),
    }


class _Chosen:
    """The tasks ``astra results`` shows: those that match the filters, of ``task_version`` (None: every version),
    as chunks of :data:`~astra.results_table.Versions`, oldest first. Each pass reads them again, in the caller's
    snapshot (:func:`~astra.database.queries.reading`), so that what is held does not grow with the tasks; a whole
    pass counts the rows of the other versions' tasks (:attr:`others`) as it goes."""

    def __init__(self, cls: type | None, filters: records.Filters, task_version: str | None) -> None:
        self.cls, self.filters, self.task_version = cls, filters, task_version
        self.others = 0

    def __iter__(self) -> Iterator[Versions]:
        others = 0
        for versions in records.versions(self.filters):
            if self.task_version is not None:
                kept = {pk: got for pk, got in versions.items() if got[0] == self.task_version}
                others += _rows(self.cls, [pk for pk in versions if pk not in kept])
                versions = kept
            if versions:
                yield versions
        self.others = others

    def whole(self) -> tuple[list[int], Versions]:
        """Every chosen task's pk and version, held at once (a table shown, a plot, or a file whose chunks differ)."""
        every: Versions = {}
        for versions in self:
            every.update(versions)
        return sorted(every), every

    def any_result(self) -> bool:
        """Whether a chosen task recorded a JSON result (or no task is chosen): read until the first that did."""
        chosen = False
        for versions in self:
            chosen = True
            if records.any_result(list(versions)):
                return True
        return not chosen

    def say_others(self) -> None:
        if self.others:
            formats.say(
                f"note: left out {self.others} rows of versions other than {self.task_version!r} (--all-versions)"
            )


def _rows(cls: type | None, tasks: list[int]) -> int:
    """How many rows ``astra results`` would show for ``tasks`` (pks): their output rows, or one per task."""
    model = outputs.output_model(cls) if cls is not None else None
    if model is None:
        return len(tasks)
    return sum(
        output_tables.count_rows(model, Task.select(Task.pk).where(Task.pk.in_(chunk))) for chunk in chunked(tasks)
    )


def _not_the_database(output: str) -> None:
    """Refuse to write the results over the SQLite database they come from (or its journal): the file would be
    replaced, and every record in it lost."""
    target, held = os.path.realpath(output), files()
    for path in held:
        if target == os.path.realpath(path) or (
            os.path.exists(output) and os.path.exists(path) and os.path.samefile(output, path)
        ):
            what = "the astra database" if path == held[0] else f"a journal of the astra database ({path})"
            raise click.ClickException(
                f"-o {output} is {what}: writing there would destroy its records; give another file"
            )


@click.command("results", context_settings=CONTEXT)
@click.argument("name")
@filter_options
@click.option("--version", "task_version", help="Only tasks of this version (default: the version the class declares).")
@click.option("--all-versions", is_flag=True, help="The tasks of every recorded version.")
@click.option("--columns", help="Comma-separated columns to keep, in that order (default: all).")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), help="Output format (default: table).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (- or none: stdout).")
@click.option("--plot", metavar="COLUMN|X,Y", help="Draw a histogram of COLUMN, or Y against X, into -o FILE.")
@click.option(
    "--bins", type=click.IntRange(1, 1000), help="--plot: bins of the histogram (per axis for X,Y; at most 1000)."
)
@click.option("--log", type=click.Choice(export.LOG_AXES), help="--plot: logarithmic x axis, y axis or both.")
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
    bins: int | None,
    log: str | None,
    as_json: bool,
) -> None:
    """The results of the done tasks named NAME: one row per output row (or per task, for tasks without one).

    Columns: task_pk, the task's parameters, version, completed, then the output columns (for a task without an
    output model, the top-level keys of its result). Select tasks with the filters of `astra tasks list`. FITS,
    ECSV and Parquet files carry each column's unit and description, and where the rows come from.

    \b
      astra results EstimateSNR --format fits -o snr.fits
      astra results EstimateSNR --plot snr -o snr.png
      astra results EstimateSNR --plot wavelength_min,snr --log y --bins 50 -o snr.png
    """
    only_reading()  # a read-only SQLite file does, as a read replica does
    if filters.names and set(filters.names) != {name}:
        raise click.UsageError(f"results are those of NAME ({name}); --name cannot ask for others")
    if filters.statuses and set(filters.statuses) != {"done"}:
        raise click.UsageError("only done tasks have results; leave out --status")
    if plot and (fmt or as_json or columns is not None):  # else left unused, and a figure drawn instead
        given = "--json" if as_json else f"--format {fmt}" if fmt else "--columns"
        raise click.UsageError(f"--plot draws a figure of the columns it names; {given} has no place beside it")
    if as_json:
        if fmt not in (None, "json"):
            raise click.UsageError(f"--json and --format {fmt} contradict each other")
        fmt = "json"
    fmt = fmt or "table"
    if output == "-":  # stdout, as for most Unix tools (a file of that name is -o ./-)
        output = "/dev/stdout" if fmt in export.BINARY or plot else None
    if (fmt in export.BINARY or plot) and not output:
        raise click.UsageError(f"{'--plot' if plot else f'--format {fmt}'} writes a file: give -o FILE")
    if (bins or log) and not plot:
        raise click.UsageError(f"{'--bins' if bins else '--log'} shapes a plot: give --plot too")
    kept = [c.strip() for c in columns.split(",") if c.strip()] if columns is not None else None
    if kept == []:
        raise click.UsageError(f"--columns {formats.given(columns)} names no column")
    twice = sorted({c for c in kept or () if kept.count(c) > 1})
    if twice:
        raise click.UsageError(f"--columns names {', '.join(map(repr, twice))} more than once")
    drawn = [c.strip() for c in plot.split(",")] if plot else None
    if drawn is not None and (len(drawn) not in (1, 2) or not all(drawn)):
        raise click.UsageError("--plot takes one column (histogram) or two, X,Y (Y against X)")
    filters = dataclasses.replace(filters, names=(name,), statuses=("done",))
    if task_version is not None and all_versions:
        raise click.UsageError("--version and --all-versions contradict each other")
    try:
        if output:
            export.check_writable(output)  # before a query that may take a while
            _not_the_database(output)
        cls = task_class(name, filters.modules)
        if cls is not None:
            filters = dataclasses.replace(filters, where=as_recorded(cls, filters.where))
        asked = (
            [f"--version={task_version}"] if task_version is not None else ["--all-versions"] if all_versions else []
        )
        if task_version is None and not all_versions and cls is not None:
            task_version = identity.class_version(cls)  # None: each task works its own out (every version)
        with reading():  # one snapshot for every statement, the rows written included
            chosen = _Chosen(cls, filters, task_version)
            if cls is None and not chosen.any_result():
                # Their results are the rows of an output table, which only its model (in the class's module) reads.
                raise click.ClickException(
                    f"the done {name} tasks recorded no JSON result, and an output table is read through the task "
                    "class (see the note above); run from the directory that holds its module, or add that to "
                    "PYTHONPATH"
                )
            streamed = (fmt in export.STREAMED or (fmt in export.CHUNKED and output)) and not drawn
            try:
                if streamed:  # a chunk of tasks at a time: the first with rows now, to know there is one
                    chunks = results_chunks(cls, chosen, kept)
                    found = next((table for table in chunks if len(table)), None)
                else:
                    pks, versions = chosen.whole()
                    found = results_table(cls, pks, drawn or kept, versions)
            except TypeError as exc:  # the class's output model is wrong, e.g. its Meta.units names no field
                raise click.ClickException(str(exc)) from None
            if found is None or not len(found):
                if name not in records.known_names() or records.unknown_parameter_names(k for k, _ in filters.where):
                    raise nothing_matches(filters)
                if chosen.others:
                    raise click.ClickException(
                        f"no done {name} task of version {task_version!r} has results that match; {chosen.others} "
                        "of other versions do (--all-versions)"
                    )
                elsewhere = sorted(set(records.modules_of(name)) - set(filters.modules)) if filters.modules else []
                if elsewhere:  # --module chose the class, and kept the tasks of that module only
                    raise click.ClickException(
                        f"no done {name} task of module {', '.join(filters.modules)} has results that match; "
                        f"{name} tasks were recorded from {', '.join(elsewhere)} (--module {elsewhere[0]})"
                    )
                raise click.ClickException(f"no done {name} task has results that match")
            if streamed:

                def whole() -> Table:  # should a chunk's columns differ from the whole table's
                    pks, versions = chosen.whole()
                    table = results_table(cls, pks, kept, versions)
                    return export.keep(table, kept) if kept else table

                kept_chunks = (export.keep(table, kept) if kept else table for table in chain([found], chunks))
                if fmt in export.CHUNKED:
                    meta = provenance(name, filters, task_version, asked)
                    rows, written = export.write_chunks(kept_chunks, fmt, output, meta, whole)
                else:
                    rows, written = export.stream(kept_chunks, fmt, output, whole)
                if output:
                    formats.say(f"wrote {rows} rows, {written} columns to {output}")
                chosen.say_others()
                return
            chosen.say_others()
            found.meta.update(provenance(name, filters, task_version, asked))
            if kept and not drawn:
                found = export.keep(found, kept)
            if drawn:
                points, kind = export.plot(found, drawn, output, name, bins=bins, log=log or "")
                formats.say(f"drew {points} of {len(found)} rows into {output} ({kind})")
            elif output:
                export.write(found, fmt, output)
                formats.say(f"wrote {len(found)} rows, {len(found.colnames)} columns to {output}")
            else:
                formats.out(export.render(found, fmt) + "\n")
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from None
