"""Tasks interrupted as their record is written, for tests/test_interrupts.py (``--module tests.interrupt_tasks``).

``SLOW_DIR`` names a directory: each task writes ``ran-K`` there as its run() returns, and ``INTERRUPT_AT`` says
where its record is made to meet trouble: ``after-commit`` (SIGINT to this process just after the finish commits),
``beat-in-rollback`` (the finish fails after the done record; the heartbeat takes its turn as the transaction ends).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import peewee

from astra.batch import BatchTask
from astra.database import output_tables, session
from astra.database.connection import database

#: Where this process's records meet trouble (see the module).
WHERE = os.environ.get("INTERRUPT_AT", "")
#: The claim of the task this process runs (for the heartbeat of ``beat-in-rollback``).
CLAIM = []


class InterruptRow(astra.OutputModel):
    k = peewee.IntegerField()
    i = peewee.IntegerField()
    x = peewee.DoubleField()


class LongRecord(astra.BaseTask):
    """A task whose record takes a while: ``rows`` rows to check and insert after run()."""

    output_model = InterruptRow
    k = luigi.IntParameter()
    rows = luigi.IntParameter(default=10)

    def run(self) -> list[dict]:
        CLAIM[:] = [self._astra_claim]
        rows = [{"k": self.k, "i": i, "x": i * 0.5} for i in range(self.rows)]
        (Path(os.environ["SLOW_DIR"]) / f"ran-{self.k}").touch()
        return rows


class LongRecords(luigi.WrapperTask):
    n = luigi.IntParameter()
    rows = luigi.IntParameter(default=10)

    def requires(self) -> list[LongRecord]:
        return [LongRecord(k=k, rows=self.rows) for k in range(self.n)]


class Doze(astra.BaseTask):
    """An item of Dozes: writes ``doze-I`` in ``SLOW_DIR``, then dozes."""

    i = luigi.IntParameter()

    def run(self) -> dict:
        (Path(os.environ["SLOW_DIR"]) / f"doze-{self.i}").touch()
        time.sleep(0.02)
        return {"i": self.i}


class Dozes(BatchTask):
    item_class = Doze
    n = luigi.IntParameter()

    def parameter_sets(self):
        return ({"i": i} for i in range(self.n))


def _insert(model, rows, checked=False) -> None:
    _original_insert(model, rows, checked)
    if WHERE == "after-commit":
        database().after_commit(lambda: os.kill(os.getpid(), signal.SIGINT))
    elif WHERE == "beat-in-rollback":
        _trouble.set()
        raise RuntimeError("the output rows could not be written")


def _pop_transaction(db):
    popped = _original_pop(db)
    if _trouble.is_set() and not db.transaction_depth():
        # The heartbeat thread, waiting for its turn, gets it the moment the transaction gives it up.
        _trouble.clear()
        beat = threading.Thread(target=CLAIM[0].beat)
        beat.start()
        beat.join()
    return popped


_trouble = threading.Event()
_original_insert, output_tables.insert = output_tables.insert, _insert
_original_pop, session.SharedSession.pop_transaction = session.SharedSession.pop_transaction, _pop_transaction
