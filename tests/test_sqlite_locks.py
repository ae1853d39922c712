"""SQLite's write lock: readers never wait for it; a writer waits a bounded time and then says so in one line."""

from __future__ import annotations

import subprocess
import sys
import time

from astra.database import Task
from astra.identity import task_hash
from tests.helpers import astra, astra_many, background, run_luigi, subprocess_env, wait_for
from tests.locks_tasks import HoldsWriteLock, Records

#: Times the reading of the database in a process of its own, once astra is imported (importing luigi alone takes
#: seconds on a busy machine, which says nothing about waiting for a lock).
TIMED_READ = """
import sys, time
from astra import cli
import astra.cli.db, astra.cli.tasks  # the commands' modules, which the astra command imports when they run
started = time.monotonic()
for args in (["db", "status"], ["tasks", "list"]):
    try:
        cli.main(args)
    except SystemExit as exit:
        assert not exit.code, exit.code
print("elapsed", time.monotonic() - started, file=sys.stderr)
"""


def _holding(tmp_path, hold: float) -> list[str]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    return ["--module", "tests.locks_tasks", "HoldsWriteLock", "--label", "long", "--workdir", str(workdir),
            "--hold", str(hold), "--local-scheduler"]  # fmt: skip


def test_readers_answer_at_once_beside_a_long_completion_block(sqlite_url, tmp_path):
    work = tmp_path / "work"
    with background((_holding(tmp_path, hold=600), tmp_path / "holder.out")) as (holder,):
        wait_for((work / "holding").exists, timeout=120, what="the task to enter completion()")
        timed = subprocess.run(
            [sys.executable, "-c", TIMED_READ], env=subprocess_env(), capture_output=True, text=True, timeout=120
        )
        assert timed.returncode == 0, timed.stderr
        elapsed = float(timed.stderr.split("elapsed")[-1])
        assert elapsed < 2, f"reading took {elapsed:.1f} s beside a writer"
        assert "HoldsWriteLock  0     1 " in timed.stdout, timed.stdout  # the claim, committed before the block

        status, listing = astra_many(("db", "status"), ("tasks", "list"))  # the commands themselves, too
        assert status.returncode == 0 and listing.returncode == 0, status.stderr + listing.stderr
        assert "database      sqlite:///" in status.stdout and "running" in listing.stdout
        (work / "release").touch()
        assert holder.wait() == 0, holder.text()
    assert Task.get(Task.task_hash == task_hash(HoldsWriteLock(label="long", workdir=""))).status == "done"


def test_a_writer_waits_for_the_lock_a_bounded_time_then_fails_with_one_line(sqlite_url, tmp_path):
    work = tmp_path / "work"
    waiter = ["--module", "tests.locks_tasks", "Records", "--label", "second", "--local-scheduler"]
    with background((_holding(tmp_path, hold=600), tmp_path / "holder.out")) as (holder,):
        wait_for((work / "holding").exists, timeout=120, what="the task to enter completion()")
        started = time.monotonic()
        blocked = run_luigi(*waiter, "--astra-sqlite-lock-timeout", "3", timeout=120)
        waited = time.monotonic() - started
        config = tmp_path / "short-wait.cfg"
        config.write_text("[astra]\nsqlite_lock_timeout = 2\n")
        forget = astra("tasks", "forget", "--all", "-y", env={"LUIGI_CONFIG_PATH": str(config)})
        assert not (work / "left").exists(), "the holder let go before the waiter gave up"
        (work / "release").touch()
        assert holder.wait() == 0, holder.text()
    output = blocked.stdout
    assert waited < 60, f"waited {waited:.0f} s"
    lines = [line for line in output.splitlines() if "stayed locked" in line]
    assert lines and all("DatabaseLockedError: astra: SQLite database " in line for line in lines), output
    assert "stayed locked by another writer for 3 s ([astra] sqlite_lock_timeout)" in lines[0]
    assert "database is locked" not in output
    assert "Traceback" not in output, output  # one line, not luigi's traceback around it
    assert "1 failed" in output, output
    assert Task.get_or_none(Task.task_hash == task_hash(Records(label="second"))) is None  # nothing half-recorded
    # The astra command says the same in one line, once prefixed.
    assert forget.returncode == 1, forget.stdout + forget.stderr
    error = forget.stderr.strip().splitlines()[-1]  # after a note that a task is running
    assert error.startswith("astra: SQLite database ") and "stayed locked" in error, forget.stderr
    assert "astra: database error" not in forget.stderr and "Traceback" not in forget.stderr, forget.stderr

    again = run_luigi(*waiter)
    assert again.returncode == 0 and "1 ran successfully" in again.stdout, again.stdout
    assert Task.get(Task.task_hash == task_hash(Records(label="second"))).status == "done"
