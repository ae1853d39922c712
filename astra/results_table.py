"""The results of done tasks as one astropy Table, the query behind ``astra results``.

One row per output row for a task class with an output model, else one row per task whose JSON result's top-level
keys become the columns; :mod:`astra.export` writes the table.
"""

from __future__ import annotations

import luigi
import peewee
from astropy.table import Table

from astra import export, outputs
from astra.database import output_tables, records
from astra.database.models import Task


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


def matching(filters: records.Filters, version: str | None) -> peewee.ModelSelect:
    """The tasks that match ``filters`` and, unless None, ``version``."""
    tasks = records.select(filters)
    return tasks if version is None else tasks.where(Task.version == version)


def results_table(cls: type[luigi.Task] | None, tasks: peewee.ModelSelect) -> Table:
    """The results of ``tasks`` (done tasks, from :func:`matching`) as one table.

    ``cls`` is their task class, None when it cannot be imported: then the recorded JSON results make the table,
    with parameters as recorded (text).
    """
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
