"""Every task record says when, where and by what it was made, and which recorded tasks it was made from."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import luigi
import pytest

import astra
from astra import recording
from astra.database import Dependency, Task
from astra.identity import task_hash
from tests.helpers import astra as astra_command
from tests.helpers import background
from tests.provenance_tasks import Flaky, Part, Whole


def run_luigi_process(output: Path, *args: str) -> tuple[int, str]:
    """Run the real luigi command line, its output going to the file ``output``; the pid of its main process and
    its output."""
    with background((["--module", "tests.provenance_tasks", *args, "--local-scheduler"], output)) as (process,):
        process.wait()
    assert "This progress looks :)" in process.text(), process.text()
    return process.pid, process.text()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.slow
def test_every_record_has_its_provenance(database_url, tmp_path):
    before = now()
    main_pid, _ = run_luigi_process(tmp_path / "first.out", "Whole", "--n", "2")
    middle = now()
    forked_pid, _ = run_luigi_process(tmp_path / "second.out", "Whole", "--n", "4", "--workers", "2")
    after = now()

    tasks = {(t.task_name, t.task_id): t for t in Task.select()}
    expected = [Part(i=i) for i in range(4)] + [Whole(n=2), Whole(n=4)]
    assert sorted(tasks) == sorted((t.task_family, t.task_id) for t in expected)
    for task in expected:
        row = tasks[task.task_family, task.task_id]
        assert row.status == "done" and row.attempts == 1
        assert row.task_module == "tests.provenance_tasks" and row.version == ""
        assert row.task_hash == task_hash(task)
        assert row.astra_version == astra.__version__
        assert row.host == socket.gethostname()
        assert before <= row.created <= row.started <= row.completed <= after
        assert row.heartbeat is not None and row.started <= row.heartbeat <= row.completed
        assert 0 <= row.duration <= (row.completed - row.started).total_seconds() + 0.01
        if task.task_family == "Part":
            assert row.duration >= 0.1
        # pid is the process that ran run(): luigi's own with one worker, a forked one with several.
        assert row.pid == row.result["pid"]
        first_run = row.completed <= middle
        assert (row.pid == main_pid) if first_run else (row.pid not in (main_pid, forked_pid))
    assert sum(tasks[t.task_family, t.task_id].completed <= middle for t in expected) == 3

    # Edges: each Whole -> the Parts it required when it ran (task_pk -> requires_pk).
    pk = {(t.task_name, t.task_id): t.pk for t in tasks.values()}
    edges = set(Dependency.select(Dependency.task, Dependency.requires).tuples())
    assert edges == {
        (pk["Whole", whole.task_id], pk["Part", part.task_id])
        for whole in (Whole(n=2), Whole(n=4))
        for part in whole.requires()
    }

    # The same record through the command line.
    shown = json.loads(astra_command("tasks", "show", Whole(n=4).task_id, "--json").stdout)
    assert shown["parameters"] == {"n": "4"}
    assert sorted(t["task_id"] for t in shown["requires"]) == sorted(Part(i=i).task_id for i in range(4))
    row = tasks["Whole", Whole(n=4).task_id]
    for key in ("duration", "host", "pid", "astra_version", "status", "task_hash", "attempts"):
        assert shown[key] == getattr(row, key), key
    for key in ("created", "started", "completed"):
        assert datetime.datetime.fromisoformat(shown[key]) == getattr(row, key), key


def test_failed_then_retried_task_keeps_its_history(database_url, tmp_path, monkeypatch):
    ready = tmp_path / "ready"
    task = Flaky(ready=str(ready))
    with monkeypatch.context() as older:
        # the failed attempt ran under an older astra (the version astra.recording writes in each record)
        older.setattr(recording, "__version__", "0.0.1")
        assert luigi.build([task], local_scheduler=True, log_level="CRITICAL") is False
    failed = Task.get(Task.task_hash == task_hash(task))
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error == f"RuntimeError: {ready} is not there yet"
    assert "raise RuntimeError" in failed.traceback
    assert failed.completed is None and failed.started is not None and failed.duration >= 0
    assert failed.pid == os.getpid() and failed.host == socket.gethostname()
    assert failed.astra_version == "0.0.1"

    ready.touch()
    assert luigi.build([task], local_scheduler=True, log_level="CRITICAL") is True
    done = Task.get(Task.task_hash == task_hash(task))
    assert done.pk == failed.pk and done.created == failed.created  # one record per task, across attempts
    assert done.status == "done" and done.attempts == 2
    assert done.error is None and done.traceback is None
    assert done.astra_version == astra.__version__  # the astra that made the result
    assert done.started >= failed.started and done.completed >= done.started
