"""Text a database cannot hold (NUL on PostgreSQL, lone surrogates anywhere): a clear failure, never a running row."""

from __future__ import annotations

import logging
import os

import luigi
import pytest

import astra
from astra import identity
from astra.database import Parameter, Task, queries
from astra.targets import forget_cached
from tests.helpers import run_luigi
from tests.unstorable_text_tasks import Echo, EchoBatch, Mute, MuteBatch

#: What Python makes of the byte 0xff on a command line (or in a file name): a lone surrogate.
UNDECODABLE = os.fsdecode(b"spec-\xff.fits")


def rows() -> list[Task]:
    forget_cached()
    return list(Task.select())


def luigi_args(family: str, *extra: str) -> list[str]:
    return ["--module", "tests.unstorable_text_tasks", family, *extra, "--local-scheduler", "--no-lock"]


def test_a_nul_in_a_parameter_is_kept_on_sqlite_and_refused_clearly_on_postgresql(database_url, backend, caplog):
    task = Echo(value="a\x00b")
    with caplog.at_level(logging.INFO, logger="luigi-interface"):
        ran = luigi.build([task], local_scheduler=True, detailed_summary=True)
    if backend == "sqlite":  # SQLite stores the NUL as it is: the record says what the task was given
        assert ran.status.name == "SUCCESS", ran.summary_text
        (row,) = rows()
        assert (row.status, row.result) == ("done", {"value": "a\x00b"})
        assert Parameter.get(Parameter.parameter_name == "value").parameter_value == "a\x00b"
        return
    assert ran.status.name == "FAILED", ran.summary_text
    assert (
        "astra: parameter 'value' of Echo holds a NUL character (at position 1), which PostgreSQL cannot store; "
        "the task was not run"
    ) in caplog.text
    assert rows() == []  # nothing half-written, and nothing left running


@pytest.mark.slow
def test_a_nul_in_an_error_message_is_recorded_as_a_failure(database_url, tmp_path):
    (tmp_path / "spectra").mkdir()
    (tmp_path / "spectra" / "spec-1.fits").touch()
    result = run_luigi(*luigi_args("Complains", "--directory", str(tmp_path / "spectra"), "--nul"))
    assert "1 failed:" in result.stdout.split("Execution Summary")[1], result.stdout
    (row,) = rows()
    assert (row.status, row.error) == ("failed", "ValueError: cannot read spec-1.fits\\x00 at byte 7")
    assert "\\x00 at byte 7" in row.traceback


@pytest.mark.slow
def test_an_undecodable_byte_in_a_parameter_stops_the_task_with_one_clear_line(database_url):
    result = run_luigi(*luigi_args("Echo", "--value", UNDECODABLE))
    assert "1 failed:" in result.stdout.split("Execution Summary")[1], result.stdout
    assert (
        "astra: parameter 'value' of Echo holds '\\udcff' (at position 5), which is not valid Unicode (an "
        "undecodable byte in a file name?) and no database can store; the task was not run"
    ) in result.stdout
    assert "UnicodeEncodeError" not in result.stdout
    assert rows() == []


@pytest.mark.slow
def test_an_undecodable_byte_in_an_error_message_is_recorded_as_a_failure(database_url, tmp_path):
    (tmp_path / "spectra").mkdir()
    open(os.path.join(os.fsencode(tmp_path / "spectra"), b"spec-\xff.fits"), "w").close()
    result = run_luigi(*luigi_args("Complains", "--directory", str(tmp_path / "spectra")))
    assert "1 failed:" in result.stdout.split("Execution Summary")[1], result.stdout
    assert "could not record the failure" not in result.stdout
    (row,) = rows()
    assert row.status == "failed"
    assert row.error == "ValueError: cannot read spec-\\udcff.fits"


def test_an_exception_that_cannot_be_printed_is_still_recorded_as_a_failure(database_url):
    assert not luigi.build([Mute()], local_scheduler=True)
    (row,) = rows()
    assert (row.status, row.error) == ("failed", "UnprintableError: <str() of the exception failed>")


def test_batch_errors_with_unstorable_text_are_recorded_escaped(database_url):
    item = {
        "task_module": "tests.unstorable_text_tasks",
        "task_name": "Echo",
        "task_id": "Echo_x",
        "task_hash": "e" * 64,
        "version": "",
        "astra_version": astra.__version__,
        "parameters": {"value": "x"},
        "requires": [],
        "error": f"ValueError: \x00 in {UNDECODABLE}",
        "traceback": "Traceback ...\x00",
    }
    with queries.transaction():
        queries.record_items([item], queries.FAILED)
    (row,) = rows()
    assert (row.status, row.error, row.traceback) == (
        "failed",
        "ValueError: \\x00 in spec-\\udcff.fits",
        "Traceback ...\\x00",
    )


def test_a_batch_item_with_an_undecodable_parameter_fails_clearly(database_url):
    item = {
        "task_module": "tests.unstorable_text_tasks",
        "task_name": "Echo",
        "task_id": "Echo_y",
        "task_hash": identity.task_hash(Echo(value=UNDECODABLE)),
        "version": "",
        "astra_version": astra.__version__,
        "parameters": {"value": UNDECODABLE},
        "requires": [],
        "result": "null",
    }
    with pytest.raises(queries.text.UnstorableTextError, match="astra: parameter 'value' of Echo holds"):
        with queries.transaction():
            queries.record_items([item], queries.DONE)
    assert rows() == []


def test_a_batch_item_whose_exception_cannot_be_printed_is_recorded_as_failed(database_url):
    assert luigi.build([MuteBatch()], local_scheduler=True, log_level="CRITICAL") is False
    (row,) = rows()
    assert (row.task_name, row.status, row.error) == (
        "Mute",
        "failed",
        "UnprintableError: <str() of the exception failed>",
    )


def test_a_batch_item_whose_parameter_no_record_can_hold_fails_alone(database_url, backend, caplog):
    """One badly named file among many: the others are recorded, and the batch fails naming that one."""
    names = ["a.fits", UNDECODABLE, "b\x00.fits", "c.fits"]
    unstorable = {UNDECODABLE} | ({"b\x00.fits"} if backend == "postgresql" else set())
    batch = EchoBatch(values=names)
    for _run in (1, 2):  # the second run finds the others done, and fails again on those alone
        with caplog.at_level(logging.ERROR, logger="luigi-interface"):
            result = luigi.build([batch], local_scheduler=True, detailed_summary=True)
        assert result.status.name == "FAILED", result.summary_text
        recorded = {row.result["value"] for row in rows() if row.status == "done"}
        assert recorded == set(names) - unstorable
        assert not [row for row in rows() if row.status != "done"]
    assert "astra: parameter 'value' of Echo holds '\\udcff' (at position 5)" in caplog.text
    assert "it was run but not recorded" in caplog.text
    assert not batch.complete()
