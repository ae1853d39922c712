"""Output tables that evolve with their models, as tests/test_output_migrations.py: their tables (renamed, made
before a trigger, holding an earlier release's JSON results), indexes and versions."""

from __future__ import annotations

import json

import pytest

from tests.evolving import MODULE, done_stars, luigi, migrate, refusal, release, rows
from tests.helpers import astra, luigi_error_line, raw_execute, raw_sql, summary


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
def test_a_new_output_model_with_a_new_version_leaves_the_old_table_to_the_old_rows(first_release):
    """FitStar of version 2 writes another model's table: its tasks of version '' rightly have their rows in
    evolving_fit. astra took that table for the new one renamed: luigi stopped, and `astra db migrate` would rename
    evolving_fit (another model's table, with its rows) to evolving_abundance, or refused for the new column that may
    not be null; with the new table made by `astra db init`, it would drop it and rename evolving_fit in its place."""
    url = first_release
    new = "newmodel,version2"
    raw_execute(url, "drop table astra.evolving_abundance")  # new in this release (the fixture made every table)
    dry = migrate(new, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "table evolving_abundance is missing" in dry.stdout and "renamed" not in dry.stdout, dry.stdout
    assert astra("db", "init", *MODULE, env=release(new)).returncode == 0  # the new release's tables
    assert "nothing to do" in migrate(new).stdout
    ran = luigi(new, "FitStar", "--star", "5")
    assert "1 ran successfully" in summary(ran.stdout), ran.stdout
    assert raw_sql(url, "select count(*) from astra.evolving_fit") == [(3,)]
    assert [row["fe_h"] for row in rows(new)] == [-0.5]
    assert sorted(row["star"] for row in rows("")) == [0, 1, 2]  # the first release's rows, where they were


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


@pytest.mark.slow
def test_json_results_of_an_earlier_release_stop_a_new_version_too_until_carried(database_url):
    """FitStar gets its output table with a new version: its tasks of the old one have JSON results, carried by
    `astra db migrate` as they are without the bump. The first luigi run on SQLite, which makes the table on first
    use, went on while only the tasks of the new version were looked for; the next stopped."""
    url = database_url
    assert astra("db", "init", *MODULE, env=release("json")).returncode == 0
    raw_execute(url, "drop table astra.evolving_fit")  # the release of JSON results had none
    assert "This progress looks :)" in luigi("json", "CountFits", "--n", "2").stdout
    line = luigi_error_line(luigi("version2", "FitStar", "--star", "5"))
    assert "done FitStar tasks were recorded before it had this output table" in line, line
    assert migrate("version2").returncode == 0
    assert "1 ran successfully" in summary(luigi("version2", "FitStar", "--star", "5").stdout)
    assert sorted(row["star"] for row in rows("")) == [0, 1]  # carried, as the old version's rows


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
