"""Helper threads (heartbeats) close their own connection as they end, and never open one to do so."""

from __future__ import annotations

from astra.claims import Claim
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
