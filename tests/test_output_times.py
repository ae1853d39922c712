"""Times in output rows: a bulk write stores what PostgreSQL itself makes of the value, whatever the session's zone."""

from __future__ import annotations

import datetime

import pytest

import astra
from astra.database import output_tables, queries
from astra.database.connection import reset
from tests.output_tasks import Measurement

PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))


@pytest.mark.parametrize(
    "when",
    [datetime.datetime(2026, 11, 25, 12, 0, tzinfo=PLUS_TWO), datetime.datetime(2026, 11, 25, 12, 0)],
    ids=["aware", "naive"],
)
def test_a_time_is_stored_as_a_plain_insert_stores_it_in_a_session_not_in_utc(postgres_url, monkeypatch, when):
    """``Measurement.when`` is a ``timestamp`` (without time zone): PostgreSQL converts an aware time into the
    session's zone (PGTZ here; ``timezone`` in postgresql.conf on a server). The binary COPY of output rows wrote
    an aware time's UTC wall clock instead, so the same result was stored 7 hours apart depending on the path."""
    monkeypatch.setenv("PGTZ", "America/Denver")
    reset()  # a new connection, in that zone
    output_tables.create([Measurement])
    claimed = queries.claim(
        {
            "task_module": "tests.output_times",
            "task_name": "Timed",
            "task_id": "Timed_1",
            "task_hash": "7" * 64,
            "version": "",
            "astra_version": astra.__version__,
        },
        {},
        60,
    )
    row = {"snr": 1.0, "n_good": 1, "flag": True, "label": "bulk", "when": when, "flux": None, "counts": None}
    with queries.transaction():
        output_tables.insert(Measurement, [(claimed.pk, row)])
    Measurement.insert(task=claimed.pk, n_good=2, flag=True, label="plain", when=when).execute()
    stored = {m.label: m.when for m in Measurement.select()}
    assert stored["bulk"] == stored["plain"]
