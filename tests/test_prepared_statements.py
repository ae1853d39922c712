"""PostgreSQL claims and finishes are prepared statements (dialect.Prepared): a failure must not break the next ones."""

from __future__ import annotations

import hashlib

import psycopg2
import pytest

import astra
from astra.database import dialect, queries
from astra.database.connection import DatabaseCancelledError, database, reset


def fields(name: str) -> dict:
    return {
        "task_module": "tests.prepared",
        "task_name": "Made",
        "task_id": f"Made_{name}",
        "task_hash": hashlib.sha256(name.encode()).hexdigest(),
        "version": "",
        "astra_version": astra.__version__,
    }


def test_a_claim_that_failed_on_the_server_leaves_the_next_claims_working(postgres_url):
    """The first claim on a connection sends PREPARE and EXECUTE together. When the EXECUTE fails on the server
    (here a statement timeout while another session inserts the same task and has not committed yet; in production
    a cancel, a deadlock, a lock timeout...), the server keeps the prepared statement: the next claim must not
    prepare it again (42P05 "prepared statement ... already exists", on every claim of that connection)."""
    db = database()
    blocker = psycopg2.connect(postgres_url)
    try:
        blocker.cursor().execute(
            "INSERT INTO astra.task (task_module, task_name, task_id, task_hash, version, status, created, attempts, "
            "astra_version) VALUES ('m', 'Made', 'Made_a', decode(%s, 'hex'), '', 'failed', now(), 1, '')",
            (fields("a")["task_hash"],),
        )
        db.execute_sql("SET statement_timeout = 300")
        with pytest.raises(DatabaseCancelledError, match="statement timeout"):
            queries.claim(fields("a"), {"name": "a"}, 60)
    finally:
        blocker.rollback()
        blocker.close()
    db.execute_sql("SET statement_timeout = 0")
    attempt = queries.claim(fields("b"), {"name": "b"}, 60)
    assert isinstance(attempt, queries.Attempt)
    queries.finish(attempt, {"ok": 1}, 0.1, [])
    assert queries.done_hashes([fields("b")["task_hash"]]) == {fields("b")["task_hash"]}


def test_a_finish_that_failed_on_the_server_leaves_the_next_finishes_working_in_a_transaction(postgres_url):
    """As above for the finish, whose next call may come inside a transaction (``with self.completion()``), where
    a second PREPARE would abort the transaction and lose the task's own rows and its done record."""
    db = database()
    first = queries.claim(fields("a"), {"name": "a"}, 60)
    second = queries.claim(fields("b"), {"name": "b"}, 60)
    blocker = psycopg2.connect(postgres_url)
    try:
        blocker.cursor().execute("SELECT 1 FROM astra.task WHERE pk = %s FOR UPDATE", (first.pk,))
        db.execute_sql("SET statement_timeout = 300")
        with pytest.raises(DatabaseCancelledError, match="statement timeout"):
            queries.finish(first, {"ok": 1}, 0.1, [])
    finally:
        blocker.rollback()
        blocker.close()
    db.execute_sql("SET statement_timeout = 0")
    with queries.transaction():
        queries.finish(second, {"ok": 2}, 0.1, [])
    queries.finish(first, {"ok": 1}, 0.1, [])
    assert queries.done_hashes([fields("a")["task_hash"], fields("b")["task_hash"]]) == {
        fields("a")["task_hash"],
        fields("b")["task_hash"],
    }


def test_a_session_that_has_the_statement_already_runs_it(postgres_url):
    """A connection pooler may hand astra a server session where another client prepared the claim already: the
    first claim on that connection runs it instead of failing on PREPARE (42P05)."""
    queries.claim(fields("a"), {"name": "a"}, 60)
    statements = list(dialect._prepared.values())
    reset()  # a new connection, which astra has not prepared anything on
    for statement in statements:  # ... but whose session has them, as a pooler's may
        database().execute_sql(statement.prepare)
    assert isinstance(queries.claim(fields("b"), {"name": "b"}, 60), queries.Attempt)


def test_a_finish_in_a_transaction_needs_nothing_prepared_in_the_session(postgres_url):
    """Inside a transaction (a task's own rows with its record) a missing statement would abort the transaction:
    there the finish is sent as a plain statement, whatever the session holds (a pooler's may hold nothing)."""
    first = queries.claim(fields("a"), {"name": "a"}, 60)
    second = queries.claim(fields("b"), {"name": "b"}, 60)
    queries.finish(first, {"ok": 1}, 0.1, [])  # the finish is prepared on this connection now
    database().execute_sql("DISCARD ALL")  # ... and gone from the session, without astra knowing
    with queries.transaction():
        queries.finish(second, {"ok": 2}, 0.1, [])
    assert queries.done_hashes([fields("b")["task_hash"]]) == {fields("b")["task_hash"]}
    assert database().execute_sql("select count(*) from pg_prepared_statements").fetchone()[0] == 0
