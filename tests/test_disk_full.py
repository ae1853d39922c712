"""A database whose disk fills up: the error is one line that says so, and what was recorded stays as it was."""

from __future__ import annotations

import logging

import luigi
import pytest

from astra.database import Task, database
from astra.database.connection import DiskFullError, LockWaitingSqliteDatabase
from astra.targets import forget_cached
from tests.batch_tasks import MeasureStars
from tests.helpers import run_luigi


def _failures(caplog) -> list[BaseException]:
    return [record.exc_info[1] for record in caplog.records if record.exc_info and record.exc_info[1] is not None]


def test_a_full_sqlite_disk_stops_the_batch_in_one_line_and_keeps_the_records(sqlite_url, caplog):
    """SQLite's "database or disk is full" (here its page limit, as a full disk gives it) is one line naming the file,
    and what was recorded before stays whole: the next run, with room again, records the rest once."""
    assert luigi.build([MeasureStars(stars=400)], local_scheduler=True, log_level="WARNING")
    db = database()
    assert isinstance(db, LockWaitingSqliteDatabase)
    (pages,) = db.execute_sql("PRAGMA page_count").fetchone()
    full = [("max_page_count", pages + 2)]
    db._pragmas = [*db._pragmas, *full]  # every connection opened from now on (the batch's writer thread's)
    db.execute_sql(f"PRAGMA max_page_count = {pages + 2}")  # and this thread's
    forget_cached()
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        assert not luigi.build([MeasureStars(stars=4000)], local_scheduler=True, log_level="WARNING")
    errors = [error for error in _failures(caplog) if isinstance(error, DiskFullError)]
    assert errors, [str(error) for error in _failures(caplog)]
    assert str(errors[0]).startswith(f"astra: SQLite database {db.database} could not grow: its disk is full")
    assert "\n" not in str(errors[0])

    db._pragmas = [pragma for pragma in db._pragmas if pragma not in full]
    db.execute_sql("PRAGMA max_page_count = 1073741823")
    assert db.execute_sql("PRAGMA integrity_check").fetchone() == ("ok",)
    done = Task.select().where(Task.status == "done").count()
    assert 400 <= done < 4000  # the first run's items, and any whole chunk of the second before the disk filled
    forget_cached()
    assert luigi.build([MeasureStars(stars=4000)], local_scheduler=True, log_level="WARNING")
    assert Task.select().count() == Task.select().where(Task.status == "done").count() == 4000


def test_a_rollback_after_a_commit_that_ended_the_transaction_keeps_quiet(sqlite_url):
    """A COMMIT that fails for want of space ends SQLite's transaction: the ROLLBACK that follows must not raise
    "cannot rollback - no transaction is active" in place of the error that says why."""
    db = database()
    assert not db.connection().in_transaction
    db.rollback()  # raised before: its error replaced the disk-full one
    with pytest.raises(ValueError, match="the cause"):
        with db.atomic():
            Task.select().count()
            db.connection().commit()  # what a failed COMMIT leaves: no transaction
            raise ValueError("the cause")


def test_a_full_postgresql_disk_stops_the_batch_in_one_line_and_keeps_the_records(postgres_url, caplog):
    """The server's "could not extend file ...: No space left on device" (SQLSTATE 53100, raised here by a trigger
    as the server raises it when its disk fills) is one line, and nothing of the transaction is recorded."""
    db = database()
    db.execute_sql(
        "CREATE FUNCTION astra.disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION USING "
        "ERRCODE = 'disk_full', MESSAGE = 'could not extend file \"base/1/2\": No space left on device'; END $$"
    )
    db.execute_sql(
        "CREATE TRIGGER disk_full BEFORE INSERT ON astra.task FOR EACH STATEMENT EXECUTE FUNCTION astra.disk_full()"
    )
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        assert not luigi.build([MeasureStars(stars=40)], local_scheduler=True, log_level="WARNING")
    errors = [error for error in _failures(caplog) if isinstance(error, DiskFullError)]
    assert errors, [str(error) for error in _failures(caplog)]
    assert str(errors[0]).startswith(f"astra: {postgres_url} could not write: the server's disk is full (could not")
    assert "\n" not in str(errors[0])
    assert Task.select().count() == 0
    ran = run_luigi("--module", "tests.batch_tasks", "MeasureStars", "--stars", "40", "--local-scheduler")
    assert ran.returncode == 30 and "Traceback" not in ran.stdout, ran.stdout[-3000:]
    assert "failed    MeasureStars(stars=40, fail_on=-1): DiskFullError: astra: " in ran.stdout
    assert "MeasureStars(stars=40, fail_on=-1) is not done: it failed (the error is above)" in ran.stdout

    db.execute_sql("DROP TRIGGER disk_full ON astra.task")
    forget_cached()
    assert luigi.build([MeasureStars(stars=40)], local_scheduler=True, log_level="WARNING")
    assert Task.select().where(Task.status == "done").count() == 40
