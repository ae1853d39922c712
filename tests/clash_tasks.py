"""Output models whose fields take the place of astra's own columns, for tests/test_outputs.py (each one stops the
process that would use it; ``luigi --module tests.clash_tasks``)."""

from __future__ import annotations

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import peewee


class NamedTaskPk(astra.OutputModel):
    task_pk = peewee.IntegerField(null=True)


class NamedTask(astra.OutputModel):
    task = peewee.IntegerField(null=True)


class NamedPk(astra.OutputModel):
    pk = peewee.IntegerField(null=True)


class InColumnPk(astra.OutputModel):
    other = peewee.IntegerField(null=True, column_name="pk")


class TakesTaskPk(astra.BaseTask):
    output_model = NamedTaskPk
    star = luigi.IntParameter()

    def run(self) -> dict:
        return {"task_pk": 5}
