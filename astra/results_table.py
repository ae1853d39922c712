"""The results of done tasks as one astropy Table, the query behind ``astra results``.

One row per output row for a task class with an output model, else one row per task whose JSON result's top-level
keys become the columns; :mod:`astra.export` writes the table.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence

import luigi
from astropy.table import Table

from astra import export, outputs
from astra.database import output_tables, records
from astra.database.queries import ahead, chunked


def _parser(cls: type[luigi.Task] | None, name: str) -> Callable[[str | None], object]:
    """Recorded parameter text to its value as the parameter parses it (an int for an IntParameter), else the text
    as recorded (by another version of the class, or a value that is no plain number or string).
    """
    parameter = dict(cls.get_params()).get(name) if cls is not None else None

    @functools.lru_cache(maxsize=4096)  # many rows share a task, many tasks a value
    def typed(text: str | None) -> object:
        if parameter is None or text is None:
            return text
        try:
            value = parameter.parse(text)
        except Exception:  # recorded by another version of the class: keep the text
            return text
        return value if isinstance(value, (int, float, str, bool)) else text

    return typed


#: Tasks per chunk of :func:`results_chunks`: a chunk's rows are held as text while written (~2 MB per 1,000
#: rows of 100 numbers), and a chunk costs 4 statements.
TASKS_PER_CHUNK = 1000

#: Each task's (version, completed), by pk, where the caller has read them already.
Versions = dict[int, tuple[str, datetime.datetime | None]]


def results_table(
    cls: type[luigi.Task] | None,
    tasks: Sequence[int],
    columns: Sequence[str] | None = None,
    versions: Versions | None = None,
) -> Table:
    """The results of ``tasks`` (pks of done tasks, e.g. from :func:`astra.database.records.versions`) as one table.

    ``cls`` is their task class, None when it cannot be imported: then the recorded JSON results make the table,
    with parameters as recorded (text). ``columns`` (None: all) are the columns needed: for a class with an output
    model only those are read (a plot of two columns of a million rows reads two columns). ``versions``: the
    tasks' versions and completion times if the caller has them (else they are read).
    """
    model = outputs.output_model(cls) if cls is not None else None
    if model is not None:
        return _output_rows(cls, model, tasks, columns, versions)
    # Listing leaves results out (they can be large); here they are the table.
    found = [task for chunk in chunked(sorted(tasks)) for task in records.with_results(chunk)]
    parameters = records.parameters_of([task.pk for task in found])
    parameter_names = list(dict.fromkeys(key for task in found for key in parameters[task.pk]))
    typed = {name: _parser(cls, name) for name in parameter_names}
    values = [task.result for task in found]  # decoded by the result field (astra/values.py)
    keys = list(dict.fromkeys(k for value in values if isinstance(value, dict) for k in value))
    if any(value is not None and not isinstance(value, dict) for value in values) and "result" not in keys:
        keys.append("result")  # results that are not dicts: one column with the whole value
    task_columns = output_tables.task_columns(parameter_names)
    names = list(task_columns)
    for key in keys:
        while key in names:
            key = f"result_{key}"
        names.append(key)
    rows = []
    for task, value in zip(found, values):
        given = parameters[task.pk]
        row = [task.pk, *(typed[k](given.get(k)) for k in parameter_names), task.version, task.completed]
        for key in keys:
            if isinstance(value, dict):
                row.append(value.get(key))
            else:
                row.append(value if key == "result" else None)
        rows.append(row)
    found = export.table(names, rows)
    _describe_task_columns(found, cls, task_columns)
    return found


def results_chunks(
    cls: type[luigi.Task] | None, tasks: Iterable[Versions], columns: Sequence[str] | None = None
) -> Iterator[Table]:
    """The table of :func:`results_table`, a chunk of tasks at a time (in pk order), for writers that need not
    hold all the rows at once (:func:`astra.export.stream`). ``tasks``: the tasks' versions and completion times,
    a chunk at a time, oldest first (:func:`astra.database.records.versions`); no more than :data:`WINDOW` of
    them are held at once. Each chunk's columns are made from its own rows. Call inside
    :func:`astra.database.queries.reading`."""
    model = outputs.output_model(cls) if cls is not None else None
    if model is not None and columns is not None:  # an unknown column is an error before any query
        export.check_columns(columns, _output_names(cls, model)[0])
    for versions in _windows(tasks):
        # The next chunks are read while the caller writes this one.
        yield from ahead(
            functools.partial(results_table, cls, columns=columns, versions=versions),
            list(chunked(sorted(versions), TASKS_PER_CHUNK)),
        )


#: Tasks whose chunks :func:`results_chunks` reads ahead in one go (their versions held meanwhile).
WINDOW = 50_000


def _windows(tasks: Iterable[Versions]) -> Iterator[Versions]:
    """``tasks`` in windows of at least :data:`WINDOW` tasks (but the last): few enough pauses of the read-ahead."""
    window: Versions = {}
    for versions in tasks:
        window.update(versions)
        if len(window) >= WINDOW:
            yield window
            window = {}
    if window:
        yield window


def _output_rows(
    cls: type[luigi.Task],
    model: type[outputs.OutputModel],
    tasks: Sequence[int],
    wanted: Sequence[str] | None,
    versions: Versions | None,
) -> Table:
    """The rows of ``model`` made by ``tasks``, with the tasks' columns beside them; only the ``wanted`` ones.

    The output rows are read alone, and each task's version, completion time and parameters once per task (a
    task may have many rows).
    """
    names, task_columns, fields = _output_names(cls, model)
    if wanted is not None:
        export.check_columns(wanted, names)
        names = [name for name in names if name in wanted]
    chosen = [name for name in fields if name in names]
    pks, values = output_tables.columns_of(model, tasks, chosen)
    pk_column = next(column for column, (kind, _) in task_columns.items() if kind == "task_pk")
    values[pk_column] = pks
    needed = {column: what for column, what in task_columns.items() if column in names and column != pk_column}
    if needed:
        if versions is None:
            versions = {pk: (version, completed) for pk, version, completed in records.versions_of(tasks)}
        recorded = {}
        if any(kind == "parameter" for kind, _ in needed.values()):
            recorded = records.parameters_of(list(dict.fromkeys(pks)))
        for column, (kind, parameter) in needed.items():
            if kind == "parameter":
                typed = _parser(cls, parameter)
                by_task = {pk: typed(given.get(parameter)) for pk, given in recorded.items()}
            else:
                at = 0 if kind == "version" else 1
                by_task = {pk: versions[pk][at] for pk in tasks if pk in versions}
            values[column] = [by_task.get(pk) for pk in pks]
    found = Table([export.column(name, values[name]) for name in names])
    _describe_task_columns(found, cls, {column: task_columns[column] for column in task_columns if column in names})
    units = outputs.units(model)
    for name in chosen:
        export.annotate(found, name, units.get(name), model._meta.fields[name].help_text)
    return found


def _output_names(
    cls: type[luigi.Task], model: type[outputs.OutputModel]
) -> tuple[list[str], dict[str, str], list[str]]:
    """Every column of the results of a class with an output model; its task columns (see
    :func:`astra.database.output_tables.task_columns`); its output fields."""
    fields = [name for name in model._meta.fields if name not in ("pk", "task")]
    task_columns = output_tables.task_columns(outputs.parameter_names(cls), fields)
    return [*task_columns, *fields], task_columns, fields


#: The descriptions of the columns every results table has.
TASK_COLUMNS = {
    "task_pk": "pk of the task in astra.task that made this row",
    "version": "version of the task",
    "completed": "when the task was recorded done (UTC, ISO 8601)",
}


def _describe_task_columns(
    found: Table, cls: type[luigi.Task] | None, columns: dict[str, tuple[str, str | None]]
) -> None:
    """Describe the task columns (``columns`` maps each to what it holds, as
    :func:`astra.database.output_tables.task_columns` does): a parameter by its luigi description, else by its
    name.
    """
    parameters = dict(cls.get_params()) if cls is not None else {}
    for column, (kind, name) in columns.items():
        if kind != "parameter":
            export.annotate(found, column, description=TASK_COLUMNS[kind])
            continue
        described = getattr(parameters.get(name), "description", None)
        export.annotate(found, column, description=described or f"task parameter {name}")
