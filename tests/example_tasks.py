"""Small tasks for the tests (importable by the luigi command line as ``--module tests.example_tasks``)."""

from __future__ import annotations

import luigi
from luigi.parameter import ParameterVisibility
from peewee import IntegerField, Model, TextField

import astra
from astra.database.models import proxy


class Leaf(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        return {"square": self.i * self.i}


class Versioned(Leaf):
    """A Leaf at version 2."""

    version = "2"


class Node(astra.BaseTask):
    n = luigi.IntParameter(default=10)
    start = luigi.IntParameter(default=0)

    def requires(self) -> list[Leaf]:
        return [Leaf(i=i) for i in range(self.start, self.start + self.n)]

    def run(self) -> dict:
        return {"total": sum(result["square"] for result in astra.targets.read_many(self.input()))}


class WithOptions(astra.BaseTask):
    options = luigi.DictParameter()
    label = luigi.Parameter(default="")
    hidden = luigi.Parameter(default="h", visibility=ParameterVisibility.HIDDEN)
    private = luigi.Parameter(default="p", visibility=ParameterVisibility.PRIVATE)
    note = luigi.Parameter(default="", significant=False)

    def run(self) -> None:
        pass


class Failing(astra.BaseTask):
    message = luigi.Parameter(default="boom")

    def run(self) -> None:
        raise ValueError(self.message)


class Note(Model):
    """A result table of a task's own, in the astra database."""

    task_name = TextField()
    value = IntegerField()

    class Meta:
        database = proxy
        table_name = "test_note"


class WritesNotes(astra.BaseTask):
    """Writes its own rows inside ``completion()``, then fails at the end if asked to."""

    count = luigi.IntParameter(default=3)
    fail_inside = luigi.BoolParameter(default=False)

    def run(self) -> None:
        Note.create_table(safe=True)
        with self.completion(result={"notes": self.count}):
            Note.insert_many([{"task_name": self.task_id, "value": i} for i in range(self.count)]).execute()
            if self.fail_inside:
                raise RuntimeError("failed after writing notes")
