"""Tasks for the fault tests: a DAG of short pauses, and a task whose connection may be cut mid-transaction
(``luigi --module tests.faults_tasks``).
"""

from __future__ import annotations

import os
import time

import luigi
from peewee import IntegerField, Model, TextField

import astra
from astra.database import database
from astra.database.models import proxy


class Pause(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        time.sleep(0.3)
        return {"i": self.i}


class Pauses(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[Pause]:
        return [Pause(i=i) for i in range(self.n)]

    def run(self) -> dict:
        return {"n": len(astra.targets.read_many(self.input()))}


class Tally(Model):
    """A table of a task's own, written in one transaction with the task's completion record."""

    label = TextField()
    value = IntegerField()

    class Meta:
        database = proxy
        table_name = "test_tally"


class WritesTally(astra.BaseTask):
    """Writes three rows; with $DROP_CONNECTION set, its connection is cut after the second one."""

    label = luigi.Parameter()

    def run(self) -> None:
        Tally.create_table(safe=True)
        with self.completion(result={"rows": 3}):
            Tally.insert_many([{"label": self.label, "value": i} for i in range(2)]).execute()
            if os.environ.get("DROP_CONNECTION"):
                database().execute_sql("select pg_terminate_backend(pg_backend_pid())")
            Tally.insert(label=self.label, value=2).execute()
