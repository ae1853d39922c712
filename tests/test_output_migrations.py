"""Output tables that evolve with their models (issue 18, item 2), on both backends, through the real ``luigi`` and
``astra`` commands: a process whose model no longer fits its table stops before any task computes, with one line
naming the command; ``astra db migrate`` makes it fit keeping every row, and refuses what would lose values."""

from __future__ import annotations

import io
import json
import os

import luigi as luigi_package
import numpy as np
import pytest

from astra import outputs
from astra.database import output_tables
from tests.helpers import astra, luigi_error_line, raw_execute, raw_sql, run_luigi, summary

MODULE = ("--module", "tests.evolving_tasks")


def release(changes: str = "") -> dict:
    """The environment of a release of tests/evolving_tasks.py that made ``changes``."""
    return {"EVOLVING": changes}


def luigi(changes: str, *args: str):
    return run_luigi(*MODULE, *args, "--local-scheduler", env=release(changes))


def migrate(changes: str, *args: str):
    return astra("db", "migrate", *MODULE, *args, env=release(changes))


def refusal(changes: str) -> str:
    """The one line `astra db migrate` refuses with, changing nothing (exit 1, no traceback)."""
    refused = migrate(changes)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    return refused.stderr.strip()


def rows(changes: str, name: str = "FitStar") -> list[dict]:
    shown = astra("results", name, *MODULE, "--json", env=release(changes))
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.fixture
def first_release(database_url):
    """Three FitStars recorded by the first release (flux float32, no logg)."""
    # In this process, whose $EVOLVING is unset: the first release (an `astra db init --module` and a luigi process
    # per star took four more starts).
    from tests import evolving_tasks
    from tests.evolving_tasks import FitStar

    assert "EVOLVING" not in os.environ
    output_tables.create(outputs.models_in([evolving_tasks]))  # what `astra db init --module` adds to the schema
    assert luigi_package.build([FitStar(star=star) for star in range(3)], local_scheduler=True, log_level="WARNING")
    return database_url


def done_stars(url: str) -> int:
    return raw_sql(url, "select count(*) from astra.task where task_name = 'FitStar' and status = 'done'")[0][0]


@pytest.mark.slow
def test_a_new_nullable_column(first_release):
    url = first_release
    stopped = luigi("logg", "FitStar", "--star", "5")
    line = luigi_error_line(stopped)
    assert "output table" in line and "evolving_fit" in line and "column logg is missing" in line, line
    assert line.endswith("run `astra db migrate --module tests.evolving_tasks` (--dry-run prints the SQL)"), line
    assert done_stars(url) == 3  # stopped before anything ran
    shown = astra("results", "FitStar", *MODULE, env=release("logg"))
    assert shown.returncode == 1 and "column logg is missing" in shown.stderr and "Traceback" not in shown.stderr

    dry = migrate("logg", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "column logg is missing" in dry.stdout and "ADD COLUMN" in dry.stdout and "logg" in dry.stdout, dry.stdout
    assert "logg" not in [name for (name,) in _columns(url)]

    done = migrate("logg")
    assert done.returncode == 0, done.stderr
    assert "column logg is missing" in done.stdout
    assert "logg" in [name for (name,) in _columns(url)]
    assert "nothing to do" in migrate("logg").stdout  # again: nothing left

    ran = luigi("logg", "FitStar", "--star", "5")
    assert "This progress looks :)" in ran.stdout, ran.stdout
    found = {row["star"]: row for row in rows("logg")}
    assert sorted(found) == [0, 1, 2, 5]  # the old rows are kept
    assert found[5]["logg"] == 4.5 and found[1]["logg"] is None and found[1]["teff"] == 5001.0


def _columns(url: str) -> list[tuple]:
    if url.startswith("sqlite:///"):
        return [(row[1],) for row in raw_sql(url, "pragma table_info(evolving_fit)")]
    return raw_sql(url, "select column_name from information_schema.columns where table_name = 'evolving_fit'")


@pytest.mark.slow
def test_a_column_that_may_not_be_null_is_refused(first_release):
    line = luigi_error_line(luigi("mass", "FitStar", "--star", "5"))
    assert "column mass is missing" in line, line
    assert refusal("mass") == (
        "astra: cannot migrate evolving_fit: column mass is missing; the rows it holds need a value: declare "
        "Fit.mass with null=True or a default"
    )


@pytest.mark.slow
def test_a_column_missing_beside_one_the_model_lost_may_be_a_rename(first_release):
    """A renamed field looked like a column lost and one gained: following the advice (null=True) left the old
    values in the old column and the new one empty. The line now says to rename the column first."""
    assert migrate("logg").returncode == 0
    assert refusal("mass") == (
        "astra: cannot migrate evolving_fit: column mass is missing; the rows it holds need a value: declare "
        "Fit.mass with null=True or a default (if it is logg renamed, rename that column first: ALTER TABLE "
        "evolving_fit RENAME COLUMN ...)"
    )


def _flux_dtype(url: str) -> str:
    if url.startswith("sqlite:///"):
        (blob,) = raw_sql(url, "select flux from evolving_fit limit 1")[0]
        return str(np.load(io.BytesIO(blob)).dtype)
    (kind,) = raw_sql(
        url,
        "select format_type(atttypid, atttypmod) from pg_attribute "
        "where attrelid = 'astra.evolving_fit'::regclass and attname = 'flux'",
    )[0]
    return kind


@pytest.mark.slow
def test_an_array_dtype_widened_then_narrowed(first_release):
    url = first_release
    assert _flux_dtype(url) in ("float32", "real[]")
    line = luigi_error_line(luigi("float64", "FitStar", "--star", "5"))
    assert (
        "column flux is real[], the model says double precision[]" in line
        or "column flux holds float32 arrays, the model says float64" in line
    ), line
    done = migrate("float64")
    assert done.returncode == 0, done.stderr
    assert _flux_dtype(url) in ("float64", "double precision[]")
    assert "This progress looks :)" in luigi("float64", "FitStar", "--star", "5").stdout
    flux = {row["star"]: row["flux"] for row in rows("float64")}
    assert flux[1] == [np.float32(0.1), np.float32(0.2), np.float32(0.3)]  # the float32 values, exactly
    assert flux[5] == [0.5, 1.0, 1.5]

    # Back to float32: values would change, so it is refused unless asked for.
    line = luigi_error_line(luigi("", "FitStar", "--star", "6"))
    assert "flux" in line and "float32" in line or "real[]" in line, line
    refused = migrate("")
    assert refused.returncode == 1 and "--allow-data-loss" in refused.stderr and "flux" in refused.stderr
    assert _flux_dtype(url) in ("float64", "double precision[]")
    forced = migrate("", "--allow-data-loss")
    assert forced.returncode == 0, forced.stderr
    assert _flux_dtype(url) in ("float32", "real[]")
    assert "This progress looks :)" in luigi("", "FitStar", "--star", "6").stdout


@pytest.mark.slow
def test_a_real_widened_to_a_double_keeps_the_values_it_gave(database_url):
    """PostgreSQL's cast of a real to a double gives the float32's every digit: 5001.1 became 5001.10009765625,
    a value no task gave (a FloatField holds the float32's shortest decimal, on SQLite as on PostgreSQL)."""
    made = astra("db", "init", *MODULE, env=release("realteff"))
    assert made.returncode == 0, made.stderr
    assert "This progress looks :)" in luigi("realteff", "FitStar", "--star", "1").stdout
    assert [row["teff"] for row in rows("realteff")] == [5001.1]
    done = migrate("")
    assert done.returncode == 0, done.stderr
    assert [row["teff"] for row in rows("")] == [5001.1]


@pytest.mark.slow
def test_a_double_narrowed_to_an_integer_and_widened_back(first_release):
    """On SQLite every change of a column's type failed ("table evolving_fit__tmp__ has no column named teff": peewee
    4.5 wrote the name twice), and an integer made a double was refused as lossy (SQLite's INTEGER may hold 64 bits;
    these values fit a double exactly)."""
    line = luigi_error_line(luigi("intteff", "FitStar", "--star", "5"))
    assert (
        "column teff is double precision, the model says integer" in line
        or "teff is real, the model says integer" in line
    ), line
    assert "its values would be cast" in refusal("intteff")
    narrowed = migrate("intteff", "--allow-data-loss")
    assert narrowed.returncode == 0, narrowed.stderr
    assert "This progress looks :)" in luigi("intteff", "FitStar", "--star", "5").stdout
    teffs = {row["star"]: row["teff"] for row in rows("intteff")}
    assert teffs == {0: 5000, 1: 5001, 2: 5002, 5: 5005} and all(type(t) is int for t in teffs.values()), teffs

    widened = migrate("")  # the next release: a double again, which holds every integer here exactly
    assert widened.returncode == 0, widened.stderr
    assert "This progress looks :)" in luigi("", "FitStar", "--star", "6").stdout
    teffs = {row["star"]: row["teff"] for row in rows("")}
    assert teffs == {0: 5000.0, 1: 5001.0, 2: 5002.0, 5: 5005.0, 6: 5006.0}, teffs
    assert all(type(t) is float for t in teffs.values()), teffs


@pytest.mark.slow
def test_a_renamed_table_keeps_its_rows_and_downstream_counts_them(first_release):
    url = first_release
    line = luigi_error_line(luigi("renamed", "CountFits", "--n", "3"))
    assert "evolving_fit_v2 is missing and evolving_fit holds the rows of FitStar" in line, line
    assert raw_sql(url, "select count(*) from astra.task where task_name = 'CountFits'") == [(0,)]
    done = migrate("renamed")
    assert done.returncode == 0, done.stderr
    ran = luigi("renamed", "CountFits", "--n", "3")
    assert "This progress looks :)" in ran.stdout and "3 complete ones" in summary(ran.stdout), ran.stdout
    assert rows("renamed", "CountFits")[0]["n_rows"] == 3
    assert len(rows("renamed")) == 3


@pytest.mark.slow
def test_results_show_the_declared_version_by_default(first_release):
    """After a version bump, `astra results` shows the new version's rows and says how many it left out."""
    assert "This progress looks :)" in luigi("version2", "CountFits", "--n", "2").stdout
    shown = astra("results", "FitStar", *MODULE, "--json", env=release("version2"))
    assert shown.returncode == 0, shown.stderr
    assert sorted((row["star"], row["version"]) for row in json.loads(shown.stdout)) == [(0, "2"), (1, "2")]
    assert shown.stderr.strip() == "note: left out 3 rows of versions other than '2' (--all-versions)"
    every = astra("results", "FitStar", *MODULE, "--json", "--all-versions", env=release("version2"))
    assert len(json.loads(every.stdout)) == 5 and every.stderr == ""
    old = astra("results", "FitStar", *MODULE, "--json", "--version", "", env=release("version2"))
    assert sorted(row["star"] for row in json.loads(old.stdout)) == [0, 1, 2]
    assert "left out 2 rows" in old.stderr
    none = astra("results", "FitStar", *MODULE, "--version", "3", env=release("version2"))
    assert none.returncode == 1
    assert none.stderr.strip() == (
        "astra: no done FitStar task of version '3' has results that match; 5 of other versions do (--all-versions)"
    )


@pytest.mark.slow
def test_a_column_the_model_lost_is_kept_unless_asked(first_release):
    url = first_release
    assert migrate("logg").returncode == 0
    ran = luigi("", "FitStar", "--star", "7")  # the model without logg: the column stays, null for new rows
    assert "This progress looks :)" in ran.stdout, ran.stdout
    assert "logg" in [name for (name,) in _columns(url)]
    kept = migrate("")
    assert kept.returncode == 0 and "nothing to do" in kept.stdout, kept.stdout + kept.stderr
    dropped = migrate("", "--allow-data-loss")
    assert dropped.returncode == 0 and "column logg is not in the model (migrated)" in dropped.stdout, dropped.stdout
    assert "logg" not in [name for (name,) in _columns(url)]
    assert len(rows("")) == 4


@pytest.mark.slow
def test_json_results_of_an_earlier_release_are_carried_or_run_again(database_url):
    url = database_url
    assert astra("db", "init", *MODULE, env=release("json")).returncode == 0
    assert "This progress looks :)" in luigi("json", "CountFits", "--n", "3").stdout
    line = luigi_error_line(luigi("", "CountFits", "--n", "4"))
    assert "done FitStar tasks were recorded before it had this output table" in line, line
    migrated = migrate("")
    assert migrated.returncode == 0, migrated.stderr
    failed = raw_sql(url, "select error from astra.task where task_name = 'FitStar' and status = 'failed'")
    assert len(failed) == 1 and "has no field 'note'" in failed[0][0], failed
    assert sorted(row["star"] for row in rows("")) == [0, 1]  # carried, with their values
    ran = luigi("", "CountFits", "--n", "4")
    assert "This progress looks :)" in ran.stdout, ran.stdout
    assert "3 ran successfully" in summary(ran.stdout), ran.stdout  # FitStar 2 again, FitStar 3, CountFits
    assert {row["star"]: row["teff"] for row in rows("")} == {0: 5000.0, 1: 5001.0, 2: 5002.0, 3: 5003.0}


def _teff_indexes(url: str) -> list[tuple]:
    """(name, unique) of the indexes of evolving_fit on teff alone."""
    if url.startswith("sqlite:///"):
        found = [(name, bool(unique)) for _, name, unique, *_ in raw_sql(url, "pragma index_list(evolving_fit)")]
        return [(name, unique) for name, unique in found
                if [row[2] for row in raw_sql(url, f"pragma index_info({name})")] == ["teff"]]  # fmt: skip
    return raw_sql(url, "select c.relname, i.indisunique from pg_index i join pg_class c on c.oid = i.indexrelid "
                   "where i.indrelid = 'astra.evolving_fit'::regclass and i.indkey::text = "
                   "(select attnum::text from pg_attribute where attrelid = 'astra.evolving_fit'::regclass "
                   "and attname = 'teff')")  # fmt: skip


@pytest.mark.slow
def test_an_index_the_model_gains_is_added_and_a_unique_one_enforced(first_release):
    url = first_release
    # index=True: nothing stops (the rows are as right without it), and migrate adds it.
    assert "This progress looks :)" in luigi("indexed", "FitStar", "--star", "5").stdout
    added = migrate("indexed")
    assert added.returncode == 0 and "an index on teff is missing (migrated)" in added.stdout, added.stdout
    assert _teff_indexes(url) == [("evolving_fit_teff", False)]

    # unique=True: luigi stops until the table refuses what the model refuses.
    line = luigi_error_line(luigi("unique", "FitStar", "--star", "6"))
    assert "a unique index on teff is missing" in line and "astra db migrate" in line, line
    # A row that shares its teff with another: migrate refuses in one line and changes nothing.
    raw_execute(url, "insert into astra.evolving_fit (task_pk, teff, flux) "
             "select task_pk, teff, flux from astra.evolving_fit where teff = 5001")  # fmt: skip
    assert refusal("unique") == (
        "astra: cannot migrate evolving_fit: a unique index on teff is missing; 2 rows share their values with "
        "another row: delete the extra rows, or declare Fit.teff without unique=True"
    )
    assert _teff_indexes(url) == [("evolving_fit_teff", False)]
    # Deleting the extra row by hand reopens its task (which row astra wrote, the trigger cannot tell): it runs again.
    raw_execute(url, "delete from astra.evolving_fit where pk = (select max(pk) from astra.evolving_fit)")

    dry = migrate("unique", "--dry-run")
    assert dry.returncode == 0 and "CREATE UNIQUE INDEX" in dry.stdout, dry.stdout
    assert _teff_indexes(url) == [("evolving_fit_teff", False)]
    done = migrate("unique")
    assert done.returncode == 0 and "a unique index on teff is missing (migrated)" in done.stdout, done.stdout
    assert _teff_indexes(url) == [("evolving_fit_teff", True)]  # the plain index of the same name replaced
    assert "nothing to do" in migrate("unique").stdout
    assert "This progress looks :)" in luigi("unique", "FitStar", "--star", "6").stdout
    assert "1 ran successfully" in luigi("unique", "FitStar", "--star", "1").stdout  # its one row again, unique
    with pytest.raises(Exception, match="(?i)unique"):  # as a new database would, the table refuses a second 5001
        raw_execute(url, "insert into astra.evolving_fit (task_pk, teff, flux) "
                 "select task_pk, teff, flux from astra.evolving_fit where teff = 5001")  # fmt: skip
    assert sorted(row["star"] for row in rows("unique")) == [0, 1, 2, 5, 6]


def _rows_triggers(url: str) -> int:
    """How many of astra's triggers for rows deleted outside astra evolving_fit has (PostgreSQL: 2, SQLite: 1)."""
    if url.startswith("sqlite"):
        found = "select count(*) from sqlite_master where type = 'trigger' and tbl_name = 'evolving_fit'"
    else:
        found = "select count(*) from pg_trigger where tgrelid = 'astra.evolving_fit'::regclass and not tgisinternal"
    return raw_sql(url, found)[0][0]


@pytest.mark.slow
def test_a_table_made_before_the_trigger_for_rows_deleted_by_hand_gets_it(first_release):
    """A table of an earlier release has no trigger: its tasks stay done when their rows are deleted by hand, as
    they did then, and luigi does not stop. `astra db migrate` adds it (SQLite: the next process that uses it)."""
    url = first_release
    wanted = _rows_triggers(url)
    assert wanted in (1, 2)
    if url.startswith("sqlite"):
        raw_execute(url, "drop trigger astra_rows_deleted_evolving_fit")
    else:
        raw_execute(url, "drop trigger astra_rows_deleted on astra.evolving_fit; "
                    "drop trigger astra_rows_deleted_truncate on astra.evolving_fit")  # fmt: skip
    assert _rows_triggers(url) == 0
    assert "This progress looks :)" in luigi("", "FitStar", "--star", "3").stdout  # nothing stops
    if not url.startswith("sqlite"):
        dry = migrate("", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "the trigger that reopens a task whose rows are deleted outside astra is missing" in dry.stdout
        assert "CREATE TRIGGER astra_rows_deleted AFTER DELETE" in dry.stdout, dry.stdout
        assert _rows_triggers(url) == 0
        done = migrate("")
        assert done.returncode == 0 and "is missing (migrated)" in done.stdout, done.stdout
        assert "nothing to do" in migrate("").stdout
    assert _rows_triggers(url) == wanted
    raw_execute(url, "delete from astra.evolving_fit where teff = 5002")
    assert done_stars(url) == 3
    assert "1 ran successfully" in luigi("", "FitStar", "--star", "2").stdout
    assert sorted(row["star"] for row in rows("")) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_table_rebuilt_by_a_migration_keeps_its_trigger_for_rows_deleted_by_hand(database_url):
    """SQLite rebuilds a table to let a column be null (here: one the model no longer has), which drops its
    triggers: migrate gives it the trigger again, and deleting a row by hand still reopens its task."""
    made = astra("db", "init", *MODULE, env=release("mass"))
    assert made.returncode == 0, made.stderr
    assert "This progress looks :)" in luigi("mass", "FitStar", "--star", "0").stdout
    done = migrate("")
    assert done.returncode == 0 and "column mass is not in the model and may not be null (migrated)" in done.stdout
    assert _rows_triggers(database_url) == (1 if database_url.startswith("sqlite") else 2)
    assert done_stars(database_url) == 1  # the rebuild moved the rows: no task reopened
    raw_execute(database_url, "delete from astra.evolving_fit")
    assert done_stars(database_url) == 0


def _empty_copy(url: str, table: str, copy: str) -> None:
    """Make ``copy``, an empty table like ``table`` (as `astra db sql | psql` of a new release would make it)."""
    if url.startswith("sqlite"):
        (made,) = raw_sql(url, f"select sql from sqlite_master where type = 'table' and name = '{table}'")[0]
        raw_execute(url, made.replace(f'"{table}"', f'"{copy}"', 1))
    else:
        raw_execute(url, f"create table astra.{copy} (like astra.{table} including all)")


@pytest.mark.slow
def test_a_new_table_name_whose_table_exists_empty_takes_the_old_rows(first_release):
    """A model's new table_name names a table that exists already, empty (made by hand, or by `astra db sql |
    psql` of the new release), beside the old one that holds the tasks' rows. luigi stops (the tasks would be done
    without their rows), and migrate gives the name to the old table. Had the new table rows of its own (another
    model's), migrate refuses: only the user can merge them."""
    url = first_release
    _empty_copy(url, "evolving_fit", "evolving_fit_v2")
    line = luigi_error_line(luigi("renamed", "FitStar", "--star", "5"))
    assert "table evolving_fit_v2 exists, but evolving_fit holds the rows of FitStar" in line, line
    dry = migrate("renamed", "--dry-run")
    assert dry.returncode == 0 and "the empty evolving_fit_v2 is dropped and evolving_fit renamed" in dry.stdout
    done = migrate("renamed")
    assert done.returncode == 0 and "(migrated)" in done.stdout, done.stdout + done.stderr
    assert "This progress looks :)" in luigi("renamed", "FitStar", "--star", "5").stdout
    assert sorted(row["star"] for row in rows("renamed")) == [0, 1, 2, 5]
    assert "1 ran successfully" not in luigi("renamed", "FitStar", "--star", "1").stdout  # still done, with its row

    # Back to the first release's name, whose table now exists with a row of its own.
    _empty_copy(url, "evolving_fit_v2", "evolving_fit")
    raw_execute(url, "insert into astra.evolving_fit (task_pk, teff, flux) select task_pk, teff, flux "
                "from astra.evolving_fit_v2 where teff = 5005")  # fmt: skip
    assert refusal("") == (
        "astra: cannot migrate evolving_fit: table evolving_fit exists, but evolving_fit_v2 holds the rows of "
        "FitStar; move them into evolving_fit (INSERT INTO ... SELECT), or give Fit back table_name evolving_fit_v2"
    )
