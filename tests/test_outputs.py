"""Typed outputs: output tables, ArrayField, reading, results(), batches, forget and versions, on both backends."""

from __future__ import annotations

import math
import subprocess
import sys

import luigi
import numpy as np
import peewee
import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import astra
from astra import outputs
from astra.batch import BatchError
from astra.database import Task, database, output_schema, output_tables, records
from astra.database.connection import SCHEMA_SQL, DatabaseNotReady, is_postgres
from astra.database.dialect import dialect
from astra.database.queries import transaction
from astra.identity import task_hash
from astra.targets import forget_cached
from tests.helpers import astra as astra_command
from tests.helpers import raw_execute, raw_sql, run_luigi, subprocess_env
from tests.output_tasks import (
    NARROW_CASES,
    TYPED_CASES,
    BadOutput,
    FindLines,
    Lines,
    Measure,
    Measurement,
    MeasureVisits,
    Narrow,
    NarrowFit,
    PlainResult,
    Typed,
    TypedBatch,
    TypedFit,
    Visit,
    VisitsBatch,
)

MODELS = [Measurement, Visit, Typed]


@pytest.fixture
def outputs_db(database_url):
    """An astra database whose output tables exist (``astra db init --module`` does this on PostgreSQL)."""
    if is_postgres():
        output_tables.create(MODELS)
    return database_url


def build(*tasks: luigi.Task) -> bool:
    forget_cached()
    # luigi keeps one instance per task, which keeps its identity: new ones, for tests that change a version.
    luigi.task_register.Register.clear_instance_cache()
    return luigi.build(list(tasks), local_scheduler=True, log_level="WARNING")


def record(task: luigi.Task) -> Task:
    luigi.task_register.Register.clear_instance_cache()
    return Task.get(Task.task_hash == task_hash(task))


def test_one_row_keeps_its_values(outputs_db):
    assert build(Measure(i=1), Measure(i=-1))
    row = Measure(i=1).output().read()
    assert isinstance(row, Measurement)
    assert row.snr == 11.0
    assert row.n_good == 2**62 + 3 and isinstance(row.n_good, int)
    assert row.flag is True and row.label == "x"
    assert isinstance(row.flux, np.ndarray) and row.flux.dtype == np.float64 and row.flux.shape == (2000,)
    expected = np.arange(2000, dtype=float) * 0.5
    expected[7], expected[8] = np.nan, np.inf
    np.testing.assert_array_equal(row.flux, expected)  # NaN and inf inside arrays survive on both backends
    assert row.counts.dtype == np.int64 and row.counts.shape == (2, 3)
    assert row.counts[1, 2] == 2**62 + 5
    # The rows are the result: the JSON column stays empty, and the row links to the task's record.
    assert record(Measure(i=1)).result is None and row.task_pk == record(Measure(i=1)).pk
    nan_row = Measure(i=-1).output().read()
    if is_postgres():
        assert math.isnan(nan_row.snr)  # double precision keeps NaN
    else:
        assert nan_row.snr is None  # SQLite stores a NaN REAL as NULL (documented)


def test_many_rows_per_task(outputs_db):
    assert build(MeasureVisits(star=1, visits=4), MeasureVisits(star=2, visits=1), MeasureVisits(star=3, visits=0))
    rows = MeasureVisits(star=1, visits=4).output().read()
    assert [r.visit for r in rows] == [0, 1, 2, 3]  # dicts and model instances alike, in order
    assert [r.rv for r in rows] == [1.0, 1.1, 1.2, 1.3]
    assert all(r.spectrum.dtype == np.float32 and r.spectrum.shape == (100,) for r in rows)
    assert isinstance(MeasureVisits(star=2, visits=1).output().read(), Visit)  # one row: the instance itself
    assert MeasureVisits(star=3, visits=0).output().read() == []  # done, with no rows
    assert MeasureVisits(star=4).output().read() is None  # not done
    read = astra.targets.read_many([MeasureVisits(star=2, visits=1).output(), PlainResult(i=3).output()])
    assert isinstance(read[0], Visit) and read[1] is None


def visits_of(star: int) -> list[int]:
    """The visits of ``star``'s rows in the table, done task or not."""
    return sorted(row.visit for row in Visit.select().join(Task).where(Task.task_hash == task_hash(star_task(star))))


def star_task(star: int) -> MeasureVisits:
    """A new instance, whose completeness is asked of the database again."""
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    return MeasureVisits(star=star)


@pytest.mark.parametrize("how", ["some rows", "all rows", "every row of the table"])
def test_rows_deleted_outside_astra_reopen_their_task_and_luigi_makes_them_again(outputs_db, how):
    """A task counts as done because it has its outputs: delete its rows by hand, in SQL, and it is not done any
    more; luigi runs it again and it has all its rows, once. Its neighbours, and astra's own deletes (a task
    recorded again, a forget), reopen nothing."""
    assert build(*[MeasureVisits(star=star) for star in (1, 2, 3)])
    first = {star: record(star_task(star)).pk for star in (1, 2, 3)}
    deleted = {
        "some rows": f"DELETE FROM astra.test_visit WHERE task_pk = {first[1]} AND visit = 1",
        "all rows": f"DELETE FROM astra.test_visit WHERE task_pk IN ({first[1]}, {first[2]})",
        # PostgreSQL's TRUNCATE fires no DELETE trigger: a trigger of its own; SQLite has no TRUNCATE.
        "every row of the table": "TRUNCATE astra.test_visit" if is_postgres() else "DELETE FROM test_visit",
    }[how]
    raw_execute(outputs_db, deleted)

    reopened = {1, 2, 3} if how == "every row of the table" else {1} if how == "some rows" else {1, 2}
    for star in (1, 2, 3):
        task = record(star_task(star))
        assert (task.status == "done") is (star not in reopened), (star, task.status)
        assert star_task(star).complete() is (star not in reopened)
        if star in reopened:
            assert (
                task.error.startswith("not complete any more: its rows in ") and "deleted outside astra" in task.error
            )
    shown = sorted(int(row.star) for row in astra.results(MeasureVisits))  # parameters as recorded: text
    assert shown == [star for star in (1, 2, 3) for _ in range(3) if star not in reopened]

    assert build(*[MeasureVisits(star=star) for star in (1, 2, 3)])
    for star in (1, 2, 3):
        task = record(star_task(star))
        assert task.status == "done" and task.pk == first[star], star
        assert task.attempts == (2 if star in reopened else 1), star
        assert visits_of(star) == [0, 1, 2], star  # all of them again, none twice

    # astra's own deletes: forgetting a task deletes its rows, and leaves the others done.
    forgot = astra_command("tasks", "forget", str(first[3]), "--yes", env={"ASTRA_DATABASE_URL": outputs_db})
    assert forgot.returncode == 0, forgot.stderr
    assert [record(star_task(star)).status for star in (1, 2)] == ["done", "done"]
    assert raw_sql(outputs_db, "SELECT count(*) FROM astra.test_visit")[0][0] == 6


@pytest.mark.parametrize(
    "what, message",
    [
        ("unknown-field", "Visit has no field 'colour'"),
        ("lossy", "cannot store an array of complex128 as float32"),
        ("missing", "no value for Visit.rv"),
        ("scalar", "returned int"),
    ],
)
def test_bad_rows_fail_the_task_and_write_nothing(outputs_db, what, message):
    assert not build(BadOutput(what=what))
    failed = record(BadOutput(what=what))
    assert failed.status == "failed" and message in failed.error and "BadOutput.run()" in failed.error
    assert Visit.select().count() == 0


def test_results_query_with_parameters_version_and_time(outputs_db):
    assert build(*(MeasureVisits(star=s, visits=2) for s in range(3)), Measure(i=5, label="b"))
    query = astra.results(MeasureVisits)
    rows = list(query)
    assert len(rows) == 6
    assert {(r.star, r.visits) for r in rows} == {("0", "2"), ("1", "2"), ("2", "2")}  # recorded text
    assert all(r.version == "" and r.completed is not None and r.completed.tzinfo for r in rows)
    assert [r.visit for r in astra.results(MeasureVisits, star=1)] == [0, 1]
    assert [r.rv for r in astra.results(MeasureVisits, star="2").where(Visit.visit == 1)] == [2.1]
    assert astra.results(MeasureVisits).where(Visit.rv > 1.05).count() == 3
    # A parameter an output field also has comes with a task_ prefix.
    (measured,) = astra.results(Measure, label="b")
    assert measured.task_label == "b" and measured.label == "b" and measured.i == "5"
    assert astra.results(MeasureVisits, version="2").count() == 0
    with pytest.raises(ValueError, match="has no parameter 'colour'"):
        astra.results(MeasureVisits, colour="red")
    with pytest.raises(TypeError, match="no output_model"):
        astra.results(PlainResult)
    # Only done tasks: a failed one has no rows and does not show.
    assert not build(BadOutput())
    assert astra.results(BadOutput).count() == 0


def test_forget_deletes_output_rows_with_their_tasks(outputs_db):
    assert build(MeasureVisits(star=1), MeasureVisits(star=2))
    assert Visit.select().count() == 6
    forgotten = records.forget([record(MeasureVisits(star=1)).pk])
    assert forgotten.tasks == 1
    assert Visit.select().count() == 3  # on delete cascade
    assert {r.star for r in astra.results(MeasureVisits)} == {"2"}
    assert build(MeasureVisits(star=1))  # runs again, and its rows come back
    assert Visit.select().count() == 6


def test_a_new_version_leaves_old_rows_with_the_old_task(outputs_db, monkeypatch):
    assert build(MeasureVisits(star=1, visits=1))
    old = record(MeasureVisits(star=1, visits=1))
    monkeypatch.setattr(MeasureVisits, "version", "2")
    assert build(MeasureVisits(star=1, visits=1))
    new = record(MeasureVisits(star=1, visits=1))
    assert new.pk != old.pk
    everything = astra.results(MeasureVisits, all_versions=True)
    assert sorted((r.version, r.task_pk) for r in everything) == [("", old.pk), ("2", new.pk)]
    assert [r.task_pk for r in astra.results(MeasureVisits)] == [new.pk]  # the version the class declares
    assert [r.task_pk for r in astra.results(MeasureVisits, version="")] == [old.pk]
    with pytest.raises(ValueError, match="not both"):
        astra.results(MeasureVisits, version="2", all_versions=True)


def test_a_batch_item_whose_rows_are_deleted_by_hand_is_made_again_by_the_batch(outputs_db):
    assert build(VisitsBatch(stars=60))  # two chunks
    gone = record(star_task(55)).pk
    raw_execute(outputs_db, f"DELETE FROM astra.test_visit WHERE task_pk = {gone} AND visit = 2")
    assert record(star_task(55)).status == "failed"
    forget_cached()
    assert not VisitsBatch(stars=60).complete()
    assert build(VisitsBatch(stars=60))  # the batch records the item again: its rows are deleted by astra
    again = record(star_task(55))
    assert again.status == "done" and again.pk == gone and visits_of(55) == [0, 1, 2]
    assert Visit.select().count() == 60 * 3
    assert Task.select().where(Task.status != "done").count() == 0


def test_batch_items_get_their_rows_in_one_statement_per_chunk(outputs_db, monkeypatch):
    db = database()
    statements = []
    if is_postgres():
        cursor = db.cursor

        def counting_cursor(*args, **kwargs):
            real = cursor(*args, **kwargs)

            class Counting:
                def __getattr__(self, name):
                    return getattr(real, name)

                def __iter__(self):
                    return iter(real)

                def copy_expert(self, sql, *args, **kwargs):
                    if "test_visit" in sql:  # the task rows travel by COPY too
                        statements.append(sql)
                    return real.copy_expert(sql, *args, **kwargs)

            return Counting()

        monkeypatch.setattr(db, "cursor", counting_cursor)
    else:
        many = db.many  # SQLite's own executemany, on each thread's connection

        def counting_many(sql, rows):
            if "test_visit" in sql:
                statements.append(sql)
            return many(sql, rows)

        monkeypatch.setattr(db, "many", counting_many)
    assert build(MeasureVisits(star=7))  # done alone first: the batch leaves it and its rows as they are
    del statements[:]
    assert build(VisitsBatch(stars=120))
    assert len(statements) == 3  # 119 items to record, 50 per chunk: one insert of the rows per chunk
    assert Visit.select().count() == 360
    per_task = Visit.select(Visit.task, peewee.fn.COUNT(Visit.pk)).group_by(Visit.task).tuples()
    assert sorted(n for _, n in per_task) == [3] * 120
    row = MeasureVisits(star=42).output().read()[2]
    assert row.rv == pytest.approx(42.2) and np.all(row.spectrum == 2)


def test_a_batch_item_with_bad_rows_fails_alone(outputs_db):
    with pytest.raises(BatchError, match="1 of 20 items failed"):
        VisitsBatch(stars=20, bad=7).run()
    bad = record(MeasureVisits(star=7))
    assert bad.status == "failed" and "has no field 'colour'" in bad.error
    assert Visit.select().count() == 19 * 3
    assert {r.star for r in astra.results(MeasureVisits)} == {str(s) for s in range(20) if s != 7}


def test_sqlite_creates_output_tables_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert not database().table_exists("test_visit")
    assert astra.results(MeasureVisits).count() == 0
    assert database().table_exists("test_visit")


@pytest.mark.slow
def test_missing_postgres_table_stops_luigi_with_one_line(postgres_database, tmp_path):
    env = {"ASTRA_DATABASE_URL": postgres_database}
    subprocess.run(["psql", "-q", postgres_database], input=SCHEMA_SQL.read_text(), text=True, check=True)
    ran = run_luigi("--module", "tests.output_tasks", "MeasureVisits", "--star", "1", "--local-scheduler", env=env)
    lines = [line for line in ran.stdout.splitlines() if line.startswith("astra:")]
    assert lines == [
        f"astra: {postgres_database} has no output table astra.test_visit for Visit; create it with "
        "`astra db init --module tests.output_tasks` (or `astra db sql --module tests.output_tasks | psql`)"
    ], ran.stdout
    assert "Traceback" not in ran.stdout
    # The DDL that `astra db sql` prints, fed to psql, creates the tables; then luigi runs.
    ddl = astra_command("db", "sql", "--module", "tests.output_tasks", env=env)
    assert ddl.returncode == 0 and "ON DELETE CASCADE" in ddl.stdout and "REAL[]" in ddl.stdout
    assert 'CREATE TRIGGER astra_rows_deleted AFTER DELETE ON astra."test_visit"' in ddl.stdout, ddl.stdout
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", postgres_database], input=ddl.stdout, text=True, check=True)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", postgres_database], input=ddl.stdout, text=True, check=True)
    ran = run_luigi("--module", "tests.output_tasks", "MeasureVisits", "--star", "1", "--local-scheduler", env=env)
    assert "1 ran successfully" in ran.stdout, ran.stdout
    connection = psycopg2.connect(postgres_database)
    try:
        cursor = connection.cursor()
        cursor.execute("select count(*), min(array_length(spectrum, 1)) from astra.test_visit")
        assert cursor.fetchone() == (3, 100)
    finally:
        connection.close()


@pytest.mark.slow
def test_db_init_module_creates_output_tables(postgres_database, monkeypatch):
    env = {"ASTRA_DATABASE_URL": postgres_database}
    made = astra_command("db", "init", "--module", "tests.output_tasks", env=env)
    assert made.returncode == 0, made.stderr
    assert "output table astra.measurement ready" in made.stdout and "astra.test_visit" in made.stdout
    again = astra_command("db", "init", "--module", "tests.output_tasks", env=env)
    assert again.returncode == 0, again.stderr
    wrong = astra_command("db", "init", "--module", "no_such_module", env=env)
    assert wrong.returncode == 2 and "cannot import module 'no_such_module'" in wrong.stderr
    monkeypatch.setenv("ASTRA_DATABASE_URL", postgres_database)
    with pytest.raises(DatabaseNotReady, match="no output table"):
        output_tables._ready.clear()
        Visit._meta.table_name, saved = "never_made", Visit._meta.table_name
        try:
            output_tables.ready(Visit)
        finally:
            Visit._meta.table_name = saved


def test_nan_in_a_column_that_may_not_be_null(outputs_db):
    """PostgreSQL keeps the NaN; SQLite would store NULL, so there the item fails alone, saying why."""
    if is_postgres():
        VisitsBatch(stars=5, nan=3).run()
        assert math.isnan(MeasureVisits(star=3).output().read()[2].rv)
        return
    with pytest.raises(BatchError, match="1 of 5 items failed"):
        VisitsBatch(stars=5, nan=3).run()
    bad = record(MeasureVisits(star=3))
    assert bad.status == "failed" and "Visit.rv is NaN, which SQLite stores as NULL" in bad.error
    assert Visit.select().count() == 4 * 3


def test_arrays_of_different_shapes_in_one_insert(outputs_db):
    """One statement packs a chunk whose arrays share a shape; differing shapes (and nulls) take the general path."""
    assert build(MeasureVisits(star=1, visits=0), Measure(i=2))
    pk = record(MeasureVisits(star=1, visits=0)).pk
    rows = [{"visit": v, "rv": 0.5, "spectrum": np.arange(v + 1, dtype=np.float32)} for v in range(3)]
    with transaction():
        output_tables.insert(Visit, [(pk, row) for row in rows])
    read = [r.spectrum for r in MeasureVisits(star=1, visits=0).output().read()]
    assert [list(r) for r in read] == [[0.0], [0.0, 1.0], [0.0, 1.0, 2.0]]
    measured = Measure(i=2).output().read()  # text, a time and nulls beside the arrays
    assert measured.label == "x" and measured.when.year == 2026 and measured.counts.shape == (2, 3)


def test_the_check_of_a_table_reads_the_shapes_of_its_newest_arrays(outputs_db, monkeypatch):
    """What tells luigi that a model's declared shape changed without a version bump (see
    tests/test_output_migrations.py): the newest rows' shapes, from the arrays' headers, an empty array as none."""
    if is_postgres():
        output_tables.create([Lines])
    assert build(FindLines(n=2), FindLines(n=0))
    first, empty = record(FindLines(n=2)).pk, record(FindLines(n=0)).pk
    db = database()
    shapes = dialect(db).newest_shapes(db, "test_lines", "lines", 5)
    assert sorted(shapes, key=lambda row: row[0]) == sorted([(first, (2, 3)), (empty, None)]), shapes
    assert output_schema.changes(Lines) == []

    monkeypatch.setattr(Lines.lines, "shape", (None, 4))
    (change,) = output_schema.changes(Lines)
    assert change.apply is None and change.stops
    assert change.what == (
        "column lines holds arrays of shape (2, 3) in the rows of done FindLines tasks of version '', the model "
        "declares (None, 4)"
    )
    monkeypatch.setattr(FindLines, "version", "2")  # a version bump: the rows are the old version's, rightly
    assert output_schema.changes(Lines) == []


def test_the_check_of_a_shared_table_reads_the_rows_of_each_class(outputs_db, monkeypatch):
    """A subclass shares the model: its tasks, of a new version, wrote the newest rows in the new declared shape, so
    the newest rows alone hid the rows of the class whose version was left as it was, which luigi counted done."""
    from tests.output_tasks import FindWiderLines

    if is_postgres():
        output_tables.create([Lines])
    assert build(FindLines(n=2))
    monkeypatch.setattr(Lines.lines, "shape", (None, 4))  # the next release: FindWiderLines bumped, FindLines not
    monkeypatch.setattr(output_schema, "SAMPLED", 3)
    assert build(*[FindWiderLines(n=n) for n in range(1, 5)])
    (change,) = output_schema.changes(Lines)
    assert change.what == (
        "column lines holds arrays of shape (2, 3) in the rows of done FindLines tasks of version '', the model "
        "declares (None, 4)"
    )


ARRAYS_READ_AT_ONCE = {
    "one shape": ("real", [[1.5, float("nan"), -2.0], [0.0, 1e30, 3.25], [4.0, 5.0, 6.0]]),
    "two dimensions": ("double precision", [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]),
    "integers": ("bigint", [[1, 2**62], [-3, 0]]),
    "shapes that differ": ("real", [[1.0, 2.0], [3.0, 4.0, 5.0], [6.0]]),
    "a missing array": ("real", [[1.0, 2.0], None, [3.0, 4.0]]),
    "a NULL element": ("real", [[1.0, None], [2.0, 3.0]]),
    "empty arrays": ("real", [[], []]),
}


@pytest.mark.parametrize("case", list(ARRAYS_READ_AT_ONCE))
def test_a_chunk_of_arrays_read_at_once_is_each_array_read_alone(postgres_url, case):
    """``ArrayField.many_from_postgres_binary`` (a chunk of ``array_send`` values, parsed by numpy at once when
    they share their dimensions) gives what ``from_postgres_binary`` gives for each, and what the text form gives."""
    sql_type, arrays = ARRAYS_READ_AT_ONCE[case]
    dtype = {"real": "float32", "double precision": "float64", "bigint": "int64"}[sql_type]
    field = astra.ArrayField(dtype, null=True)
    sql = f"SELECT array_send(%s::{sql_type}[]), %s::{sql_type}[]"
    rows = [database().execute_sql(sql, (array, array)).fetchone() for array in arrays]
    blobs, texts = [blob for blob, _ in rows], [text for _, text in rows]
    together = field.many_from_postgres_binary(blobs)
    alone = [field.from_postgres_binary(blob) for blob in blobs]
    from_text = [field.python_value(text) for text in texts]
    assert len(together) == len(alone) == len(arrays)
    for a, b, c in zip(together, alone, from_text):
        if b is None:
            assert a is None and c is None
            continue
        assert a.dtype == b.dtype == c.dtype and a.shape == b.shape == c.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


NARROW_FAILURES = {
    "float too large": "Narrow.flux: 1e+300 does not fit in float32; declare a wider dtype",
    "int too large": "Narrow.counts: 40000 does not fit in int16; declare a wider dtype",
    "uint too large": "Narrow.counts: 9223372036854775808 does not fit in int16; declare a wider dtype",
    "masked ints": "Narrow.counts: a masked array cannot be stored as int16, which has no value for a missing element",
    "real too large": "Narrow.teff: 1e+300 does not fit in PostgreSQL's real (a float32); declare a peewee.DoubleField",
    "integer too large": "Narrow.n: 2147483648 does not fit in PostgreSQL's integer; declare a peewee.BigIntegerField",
    "smallint too large": "Narrow.small: 32768 does not fit in PostgreSQL's smallint; declare a peewee.IntegerField",
    "bigint too large": "Narrow.big: 9223372036854775808 does not fit in PostgreSQL's bigint",
    "ints a float32 array rounds": "Narrow.flux: 16777217 is a whole number that float32 holds only rounded",
    "int a real rounds": "Narrow.teff: 16777217 is a whole number that a float32 holds only rounded; declare a "
    "peewee.BigIntegerField, or give float(value) to store it rounded",
}


@pytest.mark.parametrize("case", list(NARROW_CASES))
def test_values_are_stored_as_given_or_refused(database_url, case):
    """A value too large for its field (an array's dtype, where float32 would make it an infinity and int16 wrap it
    round; a column of PostgreSQL's, which SQLite alone would have taken) fails the task on both databases rather
    than being stored as another number; the masked elements of a masked array are NaN, never the data under them."""
    if is_postgres():
        output_tables.create([Narrow])
    done = build(NarrowFit(case=case))
    if case in NARROW_FAILURES:
        assert not done
        failed = record(NarrowFit(case=case))
        assert failed.status == "failed" and NARROW_FAILURES[case] in failed.error, failed.error
        assert Narrow.select().count() == 0
        return
    assert done
    row = NarrowFit(case=case).output().read()
    given = NARROW_CASES[case]
    # A FloatField is PostgreSQL's real: the float32, which PostgreSQL prints as its shortest decimal. SQLite,
    # whose REAL is a double, holds that same number, not the digits the task gave.
    real = given.get("teff")
    assert row.teff == (real if real is None else float(str(np.float32(real))))
    for name in ("n", "small", "big"):
        assert getattr(row, name) == given.get(name), name
    for name in ("flux", "counts"):
        stored = getattr(row, name)
        if name not in given:
            assert stored is None
            continue
        expected = np.ma.filled(np.ma.asarray(given[name]).astype(float), np.nan) if name == "flux" else given[name]
        assert stored.dtype == Narrow._meta.fields[name].dtype
        np.testing.assert_array_equal(stored, np.asarray(expected).astype(stored.dtype))


@given(st.floats(width=64, allow_nan=False, min_value=-3.4028234663852886e38, max_value=3.4028234663852886e38))
def test_a_real_is_the_float32_as_its_shortest_decimal(value):
    """What SQLite is given for a FloatField is what PostgreSQL's real gives back (numpy's shortest float32 text)."""
    assert outputs.as_real(value) == float(str(np.float32(value)))


@pytest.mark.parametrize(
    "model, field", [("NamedTaskPk", "task_pk"), ("NamedTask", "task"), ("NamedPk", "pk"), ("InColumnPk", "other")]
)
def test_a_field_in_the_place_of_astras_columns_stops_with_one_line(database_url, model, field):
    """A field named (or in a column named) pk, task or task_pk would replace the row's link to its task, or clash
    with it in the table (a traceback while luigi scheduled): every way to use the model stops, naming the field."""
    from tests import clash_tasks

    wanted = f"astra: output model tests.clash_tasks.{model} has a field {field!r} in the place of astra's own"
    for use in (output_tables.create, output_tables.ddl, lambda models: output_tables.ready(models[0])):
        with pytest.raises(DatabaseNotReady) as stopped:
            use([getattr(clash_tasks, model)])
        assert str(stopped.value.code).startswith(wanted)
    if model == "NamedTaskPk":  # the commands that take a module: migrate would have made task_pk nullable
        for command in (("db", "migrate"), ("db", "migrate", "--dry-run"), ("db", "init"), ("db", "sql")):
            refused = astra_command(*command, "--module", "tests.clash_tasks")
            assert refused.returncode == 1 and refused.stderr.startswith("astra: output model tests.clash_tasks."), (
                command,
                refused.stderr,
            )
            assert "in the place of astra's own columns" in refused.stderr and "Traceback" not in refused.stderr
        ran = run_luigi("--module", "tests.clash_tasks", "TakesTaskPk", "--star", "1", "--local-scheduler")
        assert ran.returncode == 1 and wanted in ran.stdout and "Traceback" not in ran.stdout, ran.stdout[-2000:]
        assert Task.select().count() == 0


@pytest.mark.parametrize("case", list(TYPED_CASES))
def test_a_value_is_stored_as_its_column_holds_it_or_refused_naming_the_field(outputs_db, case):
    """peewee and the databases would convert it each their own way (1.5 in an integer column was 1, "false" in a
    bool True, a list in a text its repr; SQLite kept "abc" in a double, which PostgreSQL refused)."""
    given, stored = TYPED_CASES[case]
    done = build(TypedFit(case=case))
    if stored is None:
        assert not done
        failed = record(TypedFit(case=case))
        field = next(iter(given))
        assert failed.status == "failed" and f"TypedFit.run(): Typed.{field}" in failed.error, failed.error
        assert Typed.select().count() == 0
        return
    assert done
    row = TypedFit(case=case).output().read()
    for name, value in stored.items():
        assert getattr(row, name) == value and type(getattr(row, name)) is type(value), (name, getattr(row, name))


def test_a_batch_item_whose_value_its_column_cannot_hold_fails_alone(outputs_db):
    """The conversion failed in the chunk's insert, after every item's rows were checked: the whole chunk lost."""
    cases = list(TYPED_CASES)
    refused = [case for case in cases if TYPED_CASES[case][1] is None]
    with pytest.raises(BatchError, match=f"{len(refused)} of {len(cases)} items failed"):
        TypedBatch(cases=cases).run()
    forget_cached()
    for case in cases:
        assert record(TypedFit(case=case)).status == ("failed" if case in refused else "done"), case
    assert Typed.select().count() == len(cases) - len(refused)


def test_an_output_model_that_is_a_property_is_not_taken_for_a_lost_one(outputs_db):
    """MeasureSome's output_model is None for odd i only: a done odd task must not stop luigi as if the class had
    lost the model its even tasks wrote rows with (the look of DatabaseTarget._found_done)."""
    first = run_luigi("--module", "tests.output_tasks", "MeasureSomeOf", "--n", "2", "--local-scheduler")
    assert "This progress looks :)" in first.stdout, first.stdout
    again = run_luigi("--module", "tests.output_tasks", "MeasureSomeOf", "--n", "3", "--local-scheduler")
    assert "This progress looks :)" in again.stdout and "astra:" not in again.stdout, again.stdout
    assert [row.n_good for row in Measurement.select()] == [0, 2]
    assert Task.get(Task.task_name == "MeasureSomeOf", Task.result["n"] == 3).status == "done"


FIT_SCRIPT = """
import luigi
import peewee

import astra


class ScriptFit(astra.OutputModel):
    teff = peewee.DoubleField()


class FitInScript(astra.BaseTask):
    output_model = ScriptFit
    star = luigi.IntParameter()

    def run(self):
        return {"teff": 5000.0 + self.star}


if __name__ == "__main__":
    print(luigi.build([FitInScript(star=3)], local_scheduler=True))
"""


@pytest.mark.slow
def test_a_missing_table_of_a_script_names_the_module_that_makes_it(postgres_database, tmp_path):
    """The output model of a script run as ``__main__``: the line used to say `astra db init --module __main__`,
    which finds no model there (astra's own __main__ is imported); it names the script's module, which works."""
    (tmp_path / "fitscript.py").write_text(FIT_SCRIPT)
    env = {"ASTRA_DATABASE_URL": postgres_database, "PYTHONPATH": str(tmp_path)}
    assert astra_command("db", "init", env=env).returncode == 0

    def script() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "fitscript.py"], cwd=tmp_path, env=subprocess_env(env), capture_output=True, text=True
        )

    ran = script()
    lines = [line for line in ran.stderr.splitlines() if line.startswith("astra:")]
    assert lines == [
        f"astra: {postgres_database} has no output table astra.script_fit for ScriptFit; create it with "
        "`astra db init --module fitscript` (or `astra db sql --module fitscript | psql`)"
    ], ran.stderr
    made = astra_command("db", "init", "--module", "fitscript", env=env)
    assert "output table astra.script_fit ready" in made.stdout, made.stdout + made.stderr
    ran = script()
    assert ran.stdout.strip() == "True", ran.stdout + ran.stderr
