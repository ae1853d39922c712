"""Output tables that evolve with their models (issue 18, item 2), on both backends, through the real ``luigi`` and
``astra`` commands: a process whose model no longer fits its table stops before any task computes, with one line
naming the command; ``astra db migrate`` makes it fit keeping every row, and refuses what would lose values. Their
columns here; their tables, indexes and triggers in tests/test_output_migrations_tables.py."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time

import numpy as np
import pytest

from tests.evolving import MODULE, column_names, done_stars, luigi, migrate, refusal, release, rows
from tests.helpers import (
    ASTRA,
    REPO,
    _raw,
    astra,
    luigi_error_line,
    main,
    one_line_error,
    raw_execute,
    raw_sql,
    sessions,
    subprocess_env,
    wait_for,
)


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
    assert "logg" not in [name for (name,) in column_names(url)]

    done = migrate("logg")
    assert done.returncode == 0, done.stderr
    assert "column logg is missing" in done.stdout
    assert "logg" in [name for (name,) in column_names(url)]
    assert "nothing to do" in migrate("logg").stdout  # again: nothing left

    ran = luigi("logg", "FitStar", "--star", "5")
    assert "This progress looks :)" in ran.stdout, ran.stdout
    found = {row["star"]: row for row in rows("logg")}
    assert sorted(found) == [0, 1, 2, 5]  # the old rows are kept
    assert found[5]["logg"] == 4.5 and found[1]["logg"] is None and found[1]["teff"] == 5001.0


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
    url = first_release
    assert migrate("logg").returncode == 0
    table = "evolving_fit" if url.startswith("sqlite:///") else "astra.evolving_fit"  # psql's search path: public
    line = refusal("mass")
    assert line == (
        "astra: cannot migrate evolving_fit: column mass is missing; the rows it holds need a value: declare "
        f"Fit.mass with null=True or a default (if it is logg renamed, rename that column first: ALTER TABLE {table} "
        "RENAME COLUMN ...)"
    )
    # The advice as given works (on PostgreSQL it named the table without its schema: relation does not exist).
    advice = line.rpartition("first: ")[2].removesuffix("...)")
    raw_execute(url, f"{advice}logg TO mass")
    assert "mass" in [name for (name,) in column_names(url)]


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


def _pks(url: str) -> dict[int, int]:
    """The pk of each star's FitStar task (luigi's task_id starts with the family and the star)."""
    found = raw_sql(url, "select pk, task_id from astra.task where task_name = 'FitStar'")
    return {int(task_id.split("_")[1]): pk for pk, task_id in found}


def _fits(url: str) -> dict[int, tuple]:
    """(teff, flux as a list) of each star's row of evolving_fit, as the database holds them (read without astra)."""
    stars = {pk: star for star, pk in _pks(url).items()}
    found = {}
    for task_pk, teff, flux in raw_sql(url, "select task_pk, teff, flux from astra.evolving_fit order by task_pk"):
        found[stars[task_pk]] = (teff, np.load(io.BytesIO(flux)).tolist() if isinstance(flux, bytes) else flux)
    return dict(sorted(found.items()))


#: What a refusal to narrow a column says to do.
ADVICE = "fix or delete the rows that hold such values, or declare Fit.{} with a type that holds them"


@pytest.mark.slow
def test_a_double_narrowed_to_an_integer_is_rounded_half_to_even_or_refused(database_url):
    """`astra db migrate --allow-data-loss`, doubles made integers: SQLite truncated the arrays' values (12.7 became
    12) and made NaN and 1e10 -2147483648, saying it had migrated, and rounded a scalar 2.5 away from zero (3);
    PostgreSQL rounded half to even and stopped at 1e10 with "integer out of range", naming no table or column. Both
    now give PostgreSQL's values, and refuse, naming table, column and value, before changing anything."""
    url = database_url
    wide = "float64,halves,unfit"
    made = astra("db", "init", *MODULE, env=release(wide))
    assert made.returncode == 0, made.stderr
    assert "This progress looks :)" in luigi(wide, "CountFits", "--n", "4").stdout
    star3 = _pks(url)[3]  # teff 1e10, flux [4.5, NaN, 1e10]

    narrow = ("intteff,int32flux", "--allow-data-loss")
    assert refusal(*narrow) == (
        f"astra: cannot migrate evolving_fit: column teff holds 10000000000.0 (in a row of task {star3}), which a "
        f"peewee.IntegerField cannot hold; {ADVICE.format('teff')}"
    )
    raw_execute(url, f"update astra.evolving_fit set teff = 5003 where task_pk = {star3}")
    assert refusal(*narrow) == (
        f"astra: cannot migrate evolving_fit: column flux holds nan (in a row of task {star3}), which an "
        f"astra.ArrayField('int32') cannot hold; {ADVICE.format('flux')}"
    )
    assert _flux_dtype(url) in ("float64", "double precision[]")  # nothing changed: teff neither
    assert str(_fits(url)) == str(
        {
            **{star: (5000.5 + star, [2.5 + star, 3.5 + star, 12.7 + star, -2.5 + star]) for star in range(3)},
            3: (5003.0, [4.5, float("nan"), 1e10]),
        }
    )

    raw_execute(url, f"delete from astra.evolving_fit where task_pk = {star3}")  # as the line says
    done = migrate(*narrow)
    assert done.returncode == 0, done.stderr
    assert _flux_dtype(url) in ("int32", "integer[]")
    fits = _fits(url)
    assert fits == {
        0: (5000, [2, 4, 13, -2]),  # 5000.5, [2.5, 3.5, 12.7, -2.5]
        1: (5002, [4, 4, 14, -2]),  # 5001.5, [3.5, 4.5, 13.7, -1.5]
        2: (5002, [4, 6, 15, 0]),  # 5002.5, [4.5, 5.5, 14.7, -0.5]
    }, fits
    assert all(type(teff) is int for teff, _ in fits.values()), fits


@pytest.mark.slow
def test_a_row_recorded_while_a_narrowing_migration_waits_is_checked_too(first_release):
    """A worker's row of teff 1e10, inserted before `astra db migrate --allow-data-loss` (intteff) began and committed
    while it ran: PostgreSQL's check of the values did not see it, the ALTER waited for it, then stopped with
    "astra: database error: integer out of range", naming no table, column or row. Now the table is locked before the
    check, which sees it (SQLite's write lock did so already)."""
    url = first_release
    copy = "select task_pk, 1e10, flux from astra.evolving_fit where teff = 5001"
    connection, statement = _raw(url, f"insert into astra.evolving_fit (task_pk, teff, flux) {copy}")
    star1 = raw_sql(url, "select task_pk from astra.evolving_fit where teff = 5001")[0][0]
    try:
        connection.cursor().execute(statement)  # not committed yet: a worker recording
        command = [str(ASTRA), "db", "migrate", *MODULE, "--allow-data-loss"]
        env = subprocess_env(release("intteff"))
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        migration = subprocess.Popen(command, env=env, cwd=REPO, **pipes)
        if url.startswith("sqlite:///"):
            time.sleep(2)  # waiting for the write lock
        else:
            wait_for(lambda: sessions(url, "wait_event_type = 'Lock'") >= 1, what="the migration to wait for the row")
        connection.commit()
        _, stderr = migration.communicate(timeout=120)
    finally:
        connection.close()
    assert migration.returncode == 1, stderr
    assert stderr.strip() == (
        f"astra: cannot migrate evolving_fit: column teff holds 10000000000.0 (in a row of task {star1}), which a "
        f"peewee.IntegerField cannot hold; {ADVICE.format('teff')}"
    )


@pytest.mark.slow
def test_a_double_array_narrowed_to_float32_refuses_values_float32_cannot_hold(database_url, capsys):
    """float64 arrays made float32 by `astra db migrate --allow-data-loss`: on SQLite 1e300 became an infinity
    (and 1e-50 0), saying it had migrated; PostgreSQL stopped with "value out of range: overflow", naming no table
    or column. Both now refuse, naming table, column and value, before changing anything."""
    url = database_url
    wide = "float64,unfit"
    made = astra("db", "init", *MODULE, env=release(wide))
    assert made.returncode == 0, made.stderr
    assert "This progress looks :)" in luigi(wide, "CountFits", "--n", "6").stdout
    pks = _pks(url)
    unfit = {pks[4]: "1e+300", pks[5]: "1e-50"}  # the first named is that of the row written first

    # In this process, whose $EVOLVING is unset: the first release, whose flux arrays are float32.
    while unfit:
        line = one_line_error(main(capsys, "db", "migrate", *MODULE, "--allow-data-loss"), 1)
        task_pk = int(re.search(r"in a row of task (\d+)", line)[1])
        assert line == (
            f"astra: cannot migrate evolving_fit: column flux holds {unfit.pop(task_pk)} (in a row of task "
            f"{task_pk}), which an astra.ArrayField('float32') cannot hold; {ADVICE.format('flux')}"
        )
        assert _flux_dtype(url) in ("float64", "double precision[]")
        raw_execute(url, f"delete from astra.evolving_fit where task_pk = {task_pk}")

    done = main(capsys, "db", "migrate", *MODULE, "--allow-data-loss")
    assert done.returncode == 0, done.stderr
    assert _flux_dtype(url) in ("float32", "real[]")
    fits = _fits(url)
    assert sorted(fits) == [0, 1, 2, 3] and str(fits[3]) == str((1e10, [4.5, float("nan"), 1e10])), fits


@pytest.mark.slow
def test_an_array_shape_changed_without_a_version_bump_stops_luigi(first_release):
    """A release that declared another shape for flux ((3,) to (5,)) and made arrays of 5 numbers, its version left
    as it was: luigi counted the first release's tasks done and skipped them, their rows of 3 numbers beside new
    rows of 5, and neither the check nor `astra db migrate` said so. Now luigi stops before anything runs, saying
    what to do; a bump of the version runs them again, and the old rows keep their shape without stopping anyone."""
    url = first_release
    assert "This progress looks :)" in luigi("shape3", "FitStar", "--star", "1").stdout  # the shape they have

    stopped = luigi("shape5", "FitStar", "--star", "1")
    line = luigi_error_line(stopped)
    assert line.startswith("astra: output table") and "evolving_fit" in line, line
    assert line.endswith(
        "does not fit tests.evolving_tasks.Fit: column flux holds arrays of shape (3,) in the rows of done FitStar "
        "tasks of version '', the model declares (5,); bump FitStar.version to run those tasks again (their rows "
        "stay, as the old version's), or declare the shape they have"
    ), line
    assert "declare the shape they have" in refusal("shape5")  # no traceback either (luigi_error_line checks)
    assert done_stars(url) == 3  # nothing ran: star 5 is not recorded

    bumped = luigi("shape5,version2", "FitStar", "--star", "1")
    assert "This progress looks :)" in bumped.stdout, bumped.stdout + bumped.stderr
    assert "This progress looks :)" in luigi("shape5,version2", "FitStar", "--star", "2").stdout  # old rows: fine
    flux = {(row["star"], row["version"]): len(row["flux"]) for row in rows("shape5,version2")}
    assert flux[(1, "2")] == 5 and flux[(2, "2")] == 5, flux
    everything = astra("results", "FitStar", *MODULE, "--all-versions", "--json", env=release("shape5,version2"))
    assert everything.returncode == 0, everything.stderr
    assert {(row["star"], row["version"]): len(row["flux"]) for row in json.loads(everything.stdout)} == {
        (0, ""): 3,
        (1, ""): 3,
        (2, ""): 3,
        (1, "2"): 5,
        (2, "2"): 5,
    }


@pytest.mark.slow
def test_a_column_the_model_lost_is_kept_unless_asked(first_release):
    url = first_release
    assert migrate("logg").returncode == 0
    ran = luigi("", "FitStar", "--star", "7")  # the model without logg: the column stays, null for new rows
    assert "This progress looks :)" in ran.stdout, ran.stdout
    assert "logg" in [name for (name,) in column_names(url)]
    kept = migrate("")
    assert kept.returncode == 0 and "nothing to do" in kept.stdout, kept.stdout + kept.stderr
    dropped = migrate("", "--allow-data-loss")
    assert dropped.returncode == 0 and "column logg is not in the model (migrated)" in dropped.stdout, dropped.stdout
    assert "logg" not in [name for (name,) in column_names(url)]
    assert len(rows("")) == 4


@pytest.mark.slow
def test_a_class_that_lost_its_output_model_stops_luigi(first_release):
    """A release left out FitStar's output_model, its version as it was: luigi counted the first release's tasks
    done, read() gave None for them, and a task that needed them failed (or took None for their values)."""
    url = first_release
    line = luigi_error_line(luigi("json", "CountFits", "--n", "3"))
    table = "evolving_fit" if url.startswith("sqlite:///") else "astra.evolving_fit"
    assert line.startswith(f"astra: done FitStar tasks of version '' wrote their results to output table {table} of ")
    assert line.endswith(
        "tests.evolving_tasks.FitStar declares no output_model now (luigi would count them done, their results "
        "unread); bump FitStar.version to run them again (their rows stay, as the old version's), or declare its "
        "output_model again"
    ), line
    assert done_stars(url) == 3  # stopped before anything ran
    assert luigi_error_line(luigi("json", "FitStars", "--n", "4")) == line  # as a batch's items: star 3 not run
    assert done_stars(url) == 3
    bumped = luigi("json,version2", "CountFits", "--n", "3")  # the way out it gives
    assert "This progress looks :)" in bumped.stdout, bumped.stdout
