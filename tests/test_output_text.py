"""Text in output rows that the database cannot store fails that task (or batch item) alone, saying why."""

from __future__ import annotations

import pytest

from astra.batch import BatchError
from astra.database import Task, output_tables
from astra.identity import task_hash
from tests.output_tasks import LABELS, Labelled, LabelledBatch, Measurement


def status(task) -> tuple[str, str | None]:
    row = Task.get(Task.task_hash == task_hash(task))
    return row.status, row.error


def test_a_batch_item_with_text_the_database_cannot_store_fails_alone(database_url, backend):
    """PostgreSQL's text holds no NUL, and no database a lone surrogate: the item whose row has one fails with an
    astra message, and the rest of its chunk is recorded (not the whole chunk lost to a database error)."""
    output_tables.create([Measurement])
    kinds = ["plain", "nul", "surrogate", "plain"]
    with pytest.raises(BatchError, match=f"{2 if backend == 'postgresql' else 1} of 4 items failed"):
        LabelledBatch(labels=kinds).run()
    assert status(Labelled(i=0, label="plain"))[0] == "done"
    assert status(Labelled(i=3, label="plain"))[0] == "done"
    state, error = status(Labelled(i=2, label="surrogate"))
    assert state == "failed" and "Measurement.label" in error, error
    state, error = status(Labelled(i=1, label="nul"))
    if backend == "postgresql":
        assert state == "failed" and "Measurement.label" in error and "NUL" in error, error
    else:  # SQLite stores it as it is
        assert state == "done" and Labelled(i=1, label="nul").output().read().label == LABELS["nul"]
