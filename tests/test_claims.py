"""Claims across processes: a task runs once even under two schedulers, and a silent claim is taken over."""

from __future__ import annotations

import datetime
import signal
import socket
import time

import pytest

from astra.database import Task
from astra.database.models import utcnow
from tests.claims_tasks import hold_args, row_of, runners
from tests.helpers import background, run_luigi, start_later, wait_for


@pytest.mark.slow
def test_a_second_scheduler_waits_for_the_first_and_does_not_run_again(database_url, tmp_path):
    args = hold_args(tmp_path, "shared")
    with background() as started:
        first = start_later(started, args, tmp_path / "first.out")
        wait_for(lambda: runners(tmp_path, "shared"), what="the first process to start the task")
        second = start_later(started, args, tmp_path / "second.out")
        wait_for(lambda: "waiting: " in second.text(), what="the second process to find the task claimed")

        (tmp_path / "shared.release").touch()
        assert first.wait() == 0, first.text()
        assert second.wait() == 0, second.text()

    assert runners(tmp_path, "shared") == [first.pid]  # run() was entered once, by the first process
    row = row_of("shared", tmp_path)
    assert (row.status, row.attempts, row.pid) == ("done", 1, first.pid)
    assert f"pid {first.pid} is running this task" in second.text()
    assert "was not run by this process" in second.text()


@pytest.mark.slow
def test_a_silent_claim_is_taken_over_after_the_lease(database_url, tmp_path):
    """The holder is alive but stopped (SIGSTOP): no heartbeats, so after ``lease`` seconds another takes over."""
    args = hold_args(tmp_path, "stalled", "--astra-lease", "2")
    with background() as started:
        stalled = start_later(started, args, tmp_path / "stalled.out")
        wait_for(lambda: runners(tmp_path, "stalled"), what="the first process to start the task")
        stalled.signal(signal.SIGSTOP)
        (tmp_path / "stalled.release").touch()

        successor = start_later(started, args, tmp_path / "successor.out")
        assert successor.wait() == 0, successor.text()
        # (It may or may not have waited first: its own start-up under load can take longer than the lease.)
        assert "taking over from" in successor.text() and "(its lease: 2 s)" in successor.text()

        # The stalled process wakes up, finishes run() and finds that its claim is gone: it records nothing. Its
        # heartbeat may say so first, or its record find the successor's done record (which it keeps).
        stalled.signal(signal.SIGCONT)
        stalled.wait()
        said = stalled.text()
        taken = "is no longer this worker's: the task was taken over by" in said
        assert taken or f"recorded done meanwhile by {socket.gethostname()} pid {successor.pid}" in said, said

    assert runners(tmp_path, "stalled") == [stalled.pid, successor.pid]
    row = row_of("stalled", tmp_path)
    assert (row.status, row.attempts, row.pid, row.error) == ("done", 2, successor.pid, None)


@pytest.mark.slow
def test_a_dead_claim_from_another_host_is_taken_over_after_the_lease(database_url, tmp_path):
    """A holder on another machine cannot be checked by pid: only its silence for ``[astra] lease`` frees the task."""
    (tmp_path / "luigi.cfg").write_text("[astra]\nlease = 2\n")
    env = {"LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}
    with background((hold_args(tmp_path, "remote"), tmp_path / "remote.out", env)) as (remote,):
        wait_for(lambda: runners(tmp_path, "remote"), what="the task to start")
        remote.signal(signal.SIGKILL)
        remote.wait()
    # As if that process ran on another machine: it goes on heartbeating until the successor sees its claim, then
    # dies (heartbeats written here, so that the luigi start-up of the successor cannot outlast the lease).
    pk = row_of("remote", tmp_path).pk
    Task.update(host="another-host", heartbeat=utcnow()).where(Task.pk == pk).execute()

    (tmp_path / "remote.release").touch()
    with background((hold_args(tmp_path, "remote"), tmp_path / "successor.out", env)) as (successor,):
        while "waiting: " not in successor.text() and successor.process.poll() is None:
            Task.update(heartbeat=utcnow()).where(Task.pk == pk).execute()
            time.sleep(0.2)
        assert successor.wait(timeout=60) == 0, successor.text()
    output = successor.text()
    assert f"waiting: another-host pid {remote.pid} is running this task" in output
    assert "taken over after 2 s of silence" in output
    assert f"taking over from another-host pid {remote.pid} (no heartbeat for" in output
    row = row_of("remote", tmp_path)
    assert (row.status, row.attempts, row.host) == ("done", 2, socket.gethostname())
    assert runners(tmp_path, "remote") == [remote.pid, row.pid]


@pytest.mark.slow
def test_a_live_holder_with_a_long_lease_is_not_taken_over_by_a_worker_with_a_short_one(database_url, tmp_path):
    """The holder heartbeats every lease/4 of ITS lease (8 s: every 2 s); a waiter with lease 1 must wait anyway."""
    with background() as started:
        holder = start_later(started, hold_args(tmp_path, "leases", "--astra-lease", "8"), tmp_path / "holder.out")
        wait_for(lambda: runners(tmp_path, "leases"), what="the holder to start the task")
        waiter = start_later(started, hold_args(tmp_path, "leases", "--astra-lease", "1"), tmp_path / "waiter.out")
        wait_for(lambda: "waiting: " in waiter.text(), timeout=60, what="the waiter to find the task claimed")
        time.sleep(5)  # several of the waiter's leases, and more than one of the holder's heartbeat intervals
        (tmp_path / "leases.release").touch()
        assert holder.wait() == 0, holder.text()
        assert waiter.wait() == 0, waiter.text()

    assert runners(tmp_path, "leases") == [holder.pid], waiter.text()  # run() was entered once
    assert "taken over after 8 s of silence" in waiter.text()  # the holder's lease, not the waiter's
    assert "taking over" not in waiter.text()
    row = row_of("leases", tmp_path)
    assert (row.status, row.attempts, row.pid, row.lease) == ("done", 1, holder.pid, 8.0)


@pytest.mark.slow
def test_a_silent_holder_is_taken_over_after_its_own_lease_even_by_a_worker_with_a_long_one(database_url, tmp_path):
    """A stopped holder with lease 2 is taken over after 2 s, although the successor's own lease is 600 s."""
    with background() as started:
        stalled = start_later(started, hold_args(tmp_path, "short", "--astra-lease", "2"), tmp_path / "stalled.out")
        wait_for(lambda: runners(tmp_path, "short"), what="the first process to start the task")
        stalled.signal(signal.SIGSTOP)
        (tmp_path / "short.release").touch()
        successor = start_later(started, hold_args(tmp_path, "short", "--astra-lease", "600"), tmp_path / "next.out")
        assert successor.wait(timeout=60) == 0, successor.text()
    assert "taking over from" in successor.text() and "(its lease: 2 s)" in successor.text(), successor.text()
    row = row_of("short", tmp_path)
    assert (row.status, row.attempts, row.pid, row.lease) == ("done", 2, successor.pid, 600.0)


@pytest.mark.slow
@pytest.mark.parametrize("lease", ["0", "nan"])
def test_a_lease_no_one_could_keep_is_refused_in_one_line(database_url, tmp_path, lease):
    (tmp_path / "odd.release").touch()
    result = run_luigi(*hold_args(tmp_path, "odd", "--astra-lease", lease), timeout=60)
    assert f"astra: --astra-lease {lease!r} must be more than 0 (seconds), and finite" in result.stdout, result.stdout
    assert result.returncode == 1, result.stdout  # stopped before anything ran, as any setting that cannot be used
    assert runners(tmp_path, "odd") == [] and row_of("odd", tmp_path) is None


def test_a_heartbeat_that_waits_for_the_tasks_own_long_record_says_nothing(database_url):
    """A summary of 10,000 items writes 10,000 links with its record; a beat due meanwhile waits for that write, then
    finds the row done. Before: `WARNING: astra: ... is no longer this worker's: this run's own record of it, done,
    was committed before`, in every run of a summary of a large batch."""
    args = ["--module", "tests.batch_tasks", "SummariseStars", "--stars", "10000", "--local-scheduler"]
    ran = run_luigi(*args, "--astra-lease", "0.4")  # a beat every 0.1 s
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert "no longer this worker's" not in ran.stdout, ran.stdout[-3000:]


def test_a_silent_claim_is_taken_over_only_once_watched_silent_for_its_lease(database_url, tmp_path):
    """A database server that stops answering (frozen, or down for a restart) stops every heartbeat, and the first
    question after it finds every running task silent, its holder perhaps alive. Found by trying: a 12 s freeze of
    the server let a waiting worker take over a live task of lease 4 s, whose run() then ran twice. A claim silent
    for its lease is now taken over only once this process has watched it that long, the server answering."""
    from astra.database import queries
    from astra.identity import task_hash, task_version
    from astra.recording import fields
    from tests.claims_tasks import hold

    task = hold(tmp_path, "watched")
    row = fields(type(task), task.task_id, task_hash(task), task_version(task))
    holder = queries.claim(row, {"name": "watched"}, lease=1.0)
    # Another host's claim, silent for 10 s: as the first answer after a server's pause finds it.
    Task.update(host="another-host", heartbeat=utcnow() - datetime.timedelta(seconds=10)).where(
        Task.pk == holder.pk
    ).execute()

    watch = queries.Watch(every=0.1)
    seen = queries.claim(row, {"name": "watched"}, lease=5.0, watch=watch)
    assert isinstance(seen, queries.Holder) and seen.silence > 9  # silent, but not watched: not taken over
    time.sleep(1.2)  # a pause of this process (or the server's) longer than 2 x 0.1 + 1 / 4 s: the watch starts again
    assert isinstance(queries.claim(row, {"name": "watched"}, lease=5.0, watch=watch), queries.Holder)

    started = time.monotonic()
    while isinstance(got := queries.claim(row, {"name": "watched"}, lease=5.0, watch=watch), queries.Holder):
        assert time.monotonic() - started < 30
        time.sleep(0.1)
    assert time.monotonic() - started >= 0.9  # watched for the holder's lease, 1 s
    assert (got.attempts, got.previous.host) == (2, "another-host")

    # Without a watch (as before), the first look takes a silent claim over.
    Task.update(host="another-host", heartbeat=utcnow() - datetime.timedelta(seconds=10), lease=1.0).where(
        Task.pk == holder.pk
    ).execute()
    assert isinstance(queries.claim(row, {"name": "watched"}, lease=5.0), queries.Attempt)
