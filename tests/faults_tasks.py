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


class Crash(luigi.Task):
    """What a server crash does in the middle of a run: the record of Pause(i), not yet on disk, is gone, and so is
    every connection (this process's own notices only at its next statement)."""

    i = luigi.IntParameter()
    marker = luigi.Parameter()

    def requires(self) -> Pause:
        return Pause(i=self.i)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.marker)

    def run(self) -> None:
        import psycopg2

        from astra.config import database_url

        admin = psycopg2.connect(database_url())
        with admin, admin.cursor() as cursor:
            cursor.execute("delete from astra.task where task_id = %s", (Pause(i=self.i).task_id,))
            cursor.execute("select pg_terminate_backend(%s)", (database().connection().get_backend_pid(),))
        admin.close()
        with self.output().open("w"):
            pass


class After(astra.BaseTask):
    """Needs Pause(i) done (and Crash, which loses it), and never reads it: only its record says it was there."""

    i = luigi.IntParameter()
    marker = luigi.Parameter()

    def requires(self) -> list:
        return [Pause(i=self.i), Crash(i=self.i, marker=self.marker)]

    def run(self) -> dict:
        return {"after": self.i}


class ForgetsItsInput(astra.BaseTask):
    """Needs Pause(i), which someone forgets while this task runs (``astra tasks forget --cascade``, which finds no
    edge to this task yet): this task must not be recorded done without it."""

    i = luigi.IntParameter()
    forget = luigi.BoolParameter(default=True, significant=False)  # not part of its identity

    def requires(self) -> Pause:
        return Pause(i=self.i)

    def run(self) -> dict:
        from tests.helpers import astra as astra_command

        if not self.forget:
            return {"i": self.i}
        forgot = astra_command("tasks", "forget", "--name", "Pause", "--where", f"i={self.i}", "--cascade", "--yes")
        assert forgot.returncode == 0 and "1 tasks to forget (1 Pause)" in forgot.stdout, forgot
        return {"i": self.i}


class LosesItsInputAndItself(astra.BaseTask):
    """Needs Pause(i); while it runs, both that record and its own claim go (as a server crash may lose both): its
    failure cannot be recorded, and luigi shows the error alone."""

    i = luigi.IntParameter()

    def requires(self) -> Pause:
        return Pause(i=self.i)

    def run(self) -> dict:
        from astra.database import Task
        from astra.identity import task_hash

        Task.delete().where(Task.task_hash.in_([task_hash(self), task_hash(self.requires())])).execute()
        return {"i": self.i}


class Sluggard(astra.BaseTask):
    """Notes that it started (a file in $SLOW_DIR), then takes ``seconds``."""

    i = luigi.IntParameter()
    seconds = luigi.FloatParameter(default=1.0)

    def run(self) -> dict:
        with open(os.path.join(os.environ["SLOW_DIR"], f"started-{self.i}"), "w"):
            pass
        time.sleep(self.seconds)
        return {"i": self.i}


class Sluggards(astra.BaseTask):
    n = luigi.IntParameter()
    seconds = luigi.FloatParameter(default=1.0)

    def requires(self) -> list[Sluggard]:
        return [Sluggard(i=i, seconds=self.seconds) for i in range(self.n)]


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


class WaitsToFinish(astra.BaseTask):
    """Needs Pause(i); once started (a file ``started-I`` in $SLOW_DIR), finishes when the file ``go-I`` is there."""

    i = luigi.IntParameter()

    def requires(self) -> Pause:
        return Pause(i=self.i)

    def run(self) -> dict:
        slow_dir = os.environ["SLOW_DIR"]
        with open(os.path.join(slow_dir, f"started-{self.i}"), "w"):
            pass
        while not os.path.exists(os.path.join(slow_dir, f"go-{self.i}")):
            time.sleep(0.05)
        return {"i": self.i}


class AskedWhenGone(astra.BaseTask):
    """Its complete() meets the database gone for good (as a batch's all-done check did when the server went)."""

    def complete(self) -> bool:
        from astra.database.connection import DatabaseGoneError

        raise DatabaseGoneError("astra: lost the connection to postgresql://x@db/astra and could not reconnect again")
