"""Few connections: one per process (its heartbeat shares it), opened late, closed when idle and on exit."""

from __future__ import annotations

import pytest

from astra.database import Task
from astra.database.connection import reset
from tests.helpers import ServerConnections, background, wait_for

pytestmark = pytest.mark.slow


def test_each_luigi_process_holds_one_connection_which_its_heartbeats_share(postgres_url, tmp_path):
    """Four worker processes, each napping with a heartbeat every 0.25 s, and the luigi process: five at most (a
    thread per heartbeat, each with its connection, made that nine)."""
    args = ["--module", "tests.pooler_tasks", "Naps", "--n", "8", "--seconds", "1.5", "--workers", "4"]
    args += ["--astra-lease", "1", "--local-scheduler"]
    reset()  # this process's own
    with ServerConnections(postgres_url) as connections, background((args, tmp_path / "naps.out")) as (naps,):
        assert naps.wait(timeout=120) == 0, naps.text()
        wait_for(lambda: connections.now == 0, timeout=5, what="no connection left once luigi has exited")
    assert "This progress looks :)" in naps.text(), naps.text()
    assert Task.select().where(Task.status == "done").count() == 9
    assert 2 <= connections.most <= 5


def test_an_idle_process_closes_its_connection(postgres_url, tmp_path):
    """While a task naps, neither its worker process nor the luigi process holds a connection after idle_close."""
    args = ["--module", "tests.pooler_tasks", "Nap", "--i", "0", "--seconds", "6", "--workers", "2"]
    args += ["--astra-idle-close", "0.5", "--local-scheduler"]
    running = "select count(*) from astra.task where status = 'running'"
    reset()  # this process's own
    with ServerConnections(postgres_url) as connections, background((args, tmp_path / "nap.out")) as (nap,):
        wait_for(lambda: connections.scalar(running), timeout=60, what="the nap claimed")
        wait_for(lambda: connections.now == 0, timeout=3, what="both processes idle, their connections closed")
        assert nap.process.poll() is None and connections.scalar(running) == 1  # still napping
        assert nap.wait(timeout=60) == 0, nap.text()
    assert Task.select().where(Task.status == "done").count() == 1
