"""Helper threads (heartbeats) close their own connection as they end, and never open one to do so."""

from __future__ import annotations

from astra.recording import Claim
from tests.example_tasks import Leaf


def test_a_heartbeat_ending_after_the_settings_changed_opens_no_other_database(database_url, tmp_path, monkeypatch):
    claim = Claim(Leaf(i=7))
    assert claim.acquire()
    # The settings change while the task runs (as between tests, or a long-lived process re-pointed at another
    # database): stopping the heartbeat must not open, let alone create, the database they now name.
    elsewhere = tmp_path / "elsewhere" / "astra.db"
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{elsewhere}")
    claim.release()
    assert not elsewhere.exists()
    assert not elsewhere.parent.exists()


def test_one_thread_beats_every_claim_of_the_process(database_url):
    import threading
    import time

    import luigi

    from astra.database import Task
    from astra.identity import task_hash

    config = luigi.configuration.get_config()
    config.set("astra", "lease", "0.4")
    try:
        claims = [Claim(Leaf(i=i)) for i in (21, 22)]
        assert all(claim.acquire() for claim in claims)
    finally:
        config.remove_option("astra", "lease")
    first = {c.task.task_id: Task.get(Task.task_hash == task_hash(c.task)).heartbeat for c in claims}
    time.sleep(0.6)  # a beat every 0.1 s
    for claim in claims:
        assert Task.get(Task.task_hash == task_hash(claim.task)).heartbeat > first[claim.task.task_id]
    assert [t.name for t in threading.enumerate()].count("astra-heartbeats") == 1
    for claim in claims:
        claim.release()
    stopped = {c.task.task_id: Task.get(Task.task_hash == task_hash(c.task)).heartbeat for c in claims}
    time.sleep(0.3)
    assert stopped == {c.task.task_id: Task.get(Task.task_hash == task_hash(c.task)).heartbeat for c in claims}
