"""A record lands only on the row of the attempt that made it, even after ``astra tasks forget`` reused its pk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import luigi
import pytest

from astra import identity
from astra.database import Task, queries
from astra.targets import forget_cached
from tests.attempts_tasks import ForgottenMidway, Slow, slow_fields
from tests.example_tasks import Note
from tests.helpers import astra as astra_command
from tests.helpers import background, start_later, wait_for


def slow_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "--module",
        "tests.attempts_tasks",
        "Slow",
        "--name",
        name,
        "--workdir",
        str(tmp_path),
        "--local-scheduler",
        "--no-lock",
        *extra,
    ]


def row(name: str, tmp_path: Path) -> Task | None:
    return Task.get_or_none(Task.task_hash == identity.task_hash(Slow(name=name, workdir=str(tmp_path))))


@pytest.mark.slow
def test_a_forgotten_slow_worker_writes_nothing_on_the_row_that_took_its_pk(database_url, backend, tmp_path):
    """The issue's scenario with real processes: slow A is forgotten, B gets A's pk, A finishes: B's row is B's."""
    with background() as started:
        slow = start_later(started, slow_args(tmp_path, "a"), tmp_path / "a.out")
        wait_for(lambda: (tmp_path / "a.started").exists(), timeout=60, what="the slow task to start")
        pk = row("a", tmp_path).pk
        forgot = astra_command("tasks", "forget", str(pk), "--yes")
        assert forgot.returncode == 0, forgot.stderr

        other = start_later(started, slow_args(tmp_path, "b", "--fails"), tmp_path / "b.out")
        wait_for(lambda: (tmp_path / "b.started").exists(), timeout=60, what="the other task to start")
        taken = row("b", tmp_path)
        if backend == "sqlite":
            assert taken.pk == pk  # SQLite gave the forgotten pk to the next row: the scenario of the issue

        (tmp_path / "a.release").touch()
        slow.wait()
        # The slow worker's run fails, saying why; the other task's row is untouched.
        assert "its record is gone: forgotten (astra tasks forget), or lost in a crash" in slow.text(), slow.text()
        assert "1 failed:" in slow.text().split("Execution Summary")[1]
        forget_cached()
        during = row("b", tmp_path)
        assert (during.status, during.result, during.claim_token) == ("running", None, taken.claim_token)
        assert row("a", tmp_path) is None  # nothing recorded for the forgotten task: it runs again next time

        (tmp_path / "b.release").touch()
        other.wait()
    after = row("b", tmp_path)
    assert (after.status, after.result, after.error) == ("failed", None, "RuntimeError: b always fails")
    assert after.pid == other.pid


@pytest.mark.slow
def test_a_forgotten_task_run_again_keeps_the_new_attempts_result(database_url, tmp_path):
    """The same task forgotten and started again by another process: only the new attempt's record stands."""
    with background() as started:
        first = start_later(started, slow_args(tmp_path, "same"), tmp_path / "first.out")
        wait_for(lambda: (tmp_path / "same.started").exists(), timeout=60, what="the first attempt to start")
        assert astra_command("tasks", "forget", str(row("same", tmp_path).pk), "--yes").returncode == 0
        (tmp_path / "same.started").unlink()
        second = start_later(started, slow_args(tmp_path, "same"), tmp_path / "second.out")
        wait_for(lambda: (tmp_path / "same.started").exists(), timeout=60, what="the second attempt to start")
        (tmp_path / "same.release").touch()
        first.wait()
        second.wait()
    # Finished first, the first attempt finds its row forgotten, or another's; finished second, the task done by
    # the second, whose record stays.
    done_by_second = f"recorded done meanwhile by {socket.gethostname()} pid {second.pid}"
    said = ("its record is gone: forgotten", "no longer this worker's", done_by_second)
    assert any(line in first.text() for line in said), first.text()
    assert "1 ran successfully" in second.text().split("Execution Summary")[1], second.text()
    forget_cached()
    done = row("same", tmp_path)
    assert (done.status, done.pid, done.attempts) == ("done", second.pid, 1)


@pytest.mark.slow
def test_every_write_of_a_lost_attempt_misses_the_row_that_took_its_pk(database_url, backend):
    """heartbeat, finish, fail and completion(): none of them touches another attempt's row."""
    old = queries.claim(slow_fields("a"), {"name": "a"}, 60)
    Task.delete().where(Task.pk == old.pk).execute()  # as `astra tasks forget` does
    new = queries.claim(slow_fields("b"), {"name": "b"}, 60)
    if backend == "sqlite":
        assert new.pk == old.pk
    before = Task.get_by_id(new.pk)

    assert queries.heartbeat(old) is False
    assert queries.fail(old, "RuntimeError: a", "traceback", 1.0) is False
    with pytest.raises(queries.ClaimLostError, match="its record is gone: forgotten"), queries.transaction():
        queries.finish(old, '{"made by": "a"}', 1.0, [])
    after = Task.get_by_id(new.pk)
    assert after.__data__ == before.__data__
    assert queries.heartbeat(new) is True


def test_a_claim_forgotten_then_claimed_again_is_not_called_taken_over(database_url):
    """The first holder's error blamed a missing heartbeat ("taken over ... within the lease?"): it was a forget."""
    old = queries.claim(slow_fields("f"), {"name": "f"}, 60)
    Task.delete().where(Task.pk == old.pk).execute()  # as `astra tasks forget` does
    queries.claim(slow_fields("f"), {"name": "f"}, 60)
    said = queries.lost(old)
    assert said.startswith("its record was forgotten (astra tasks forget), and ") and "lease" not in said, said


def test_a_batch_that_records_a_running_task_ends_that_claim(database_url):
    """A batch wrote the row meanwhile: the claim's own result does not replace the batch's."""
    attempt = queries.claim(slow_fields("c"), {"name": "c"}, 60)
    item = {**slow_fields("c"), "parameters": {"name": "c"}, "requires": [], "result": '"from the batch"'}
    with queries.transaction():
        queries.record_items([item], queries.DONE)
    with pytest.raises(queries.ClaimLostError, match="a batch recorded the task meanwhile"), queries.transaction():
        queries.finish(attempt, '"from the claim"', 1.0, [])
    stored = Task.get_by_id(attempt.pk)
    assert (stored.status, stored.result, stored.host) == ("done", "from the batch", socket.gethostname())
    assert stored.pid == os.getpid()


@pytest.mark.slow
def test_rows_written_in_completion_are_rolled_back_when_the_record_was_forgotten(database_url, backend):
    assert luigi.build([ForgottenMidway()], local_scheduler=True, log_level="CRITICAL") is False
    assert Note.select().count() == 0  # the task's own rows went with the record they belonged to
    (other,) = Task.select()
    assert (other.task_hash, other.status, other.result) == (slow_fields("b")["task_hash"], "running", None)
