"""The ``astra`` command, driven as a subprocess (the installed console script) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import uuid

import psycopg2
import pytest

import astra as astra_package
from tests.cli_tasks import Broken
from tests.helpers import (
    ASTRA,
    POSTGRES,
    POSTGRES_USER,
    REPO,
    SPECTRA,
    astra,
    astra_many,
    describe_schema,
    main,
    one_line_error,
    run_pipeline,
    with_password,
)
from workflows import EstimateSNR
from workflows.spectra import EXAMPLE_SPECTRA


@pytest.mark.slow
def test_help_on_every_command(capsys):
    assert ASTRA.exists(), "run `pip install -e .` so the astra console script exists"
    script = astra("--help")
    # click >= 8.5 writes "[COMMAND]" where a group may run without one; older versions "COMMAND".
    usage = script.stdout.splitlines()[0] if script.stdout else ""
    assert script.returncode == 0 and usage.startswith("Usage: astra [OPTIONS] ") and "COMMAND" in usage, usage
    commands = ["db", "db init", "db status", "tasks", "tasks list", "tasks show", "tasks forget", "tasks why"]
    helps = {}
    for command in commands:
        result = main(capsys, *command.split(), "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith(f"Usage: astra {command} "), result.stdout
        helps[command] = result.stdout
    assert all(option in helps["tasks forget"] for option in ("--cascade", "--dry-run", "--yes", "--where"))
    for option in ("--name", "--module", "--status", "--where", "--since", "--limit", "--json"):
        assert option in helps["tasks list"]
    assert main(capsys, "--version").stdout.strip() == f"astra, version {astra_package.__version__}"
    bare = main(capsys)  # no command: the help, as a usage error
    assert bare.returncode == 2 and "Commands:" in bare.stdout


@pytest.mark.slow
def test_db_init_on_postgresql_loads_the_sql_file(postgres_database):
    # trust authentication ignores the password, which lets the test check that it is never shown.
    url = with_password(postgres_database, "hunter2")
    env = {"ASTRA_DATABASE_URL": url}
    before = astra("db", "status", env=env)
    assert "no astra schema" in one_line_error(before, 1)

    first = astra("db", "init", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{POSTGRES_USER}:***@" in first.stdout and "hunter2" not in first.stdout + first.stderr
    again = astra("db", "init", env=env)  # safe to run twice
    assert again.returncode == 0, again.stderr

    reference = f"astra_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(f"{POSTGRES}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"create database {reference}")
    try:
        loaded = psycopg2.connect(f"{POSTGRES}/{reference}")
        with loaded, loaded.cursor() as cursor:
            cursor.execute((REPO / "schema" / "astradb" / "astradb.sql").read_text())
        loaded.close()
        assert describe_schema(postgres_database) == describe_schema(f"{POSTGRES}/{reference}")
        assert len(describe_schema(postgres_database)["columns"]) > 20
    finally:
        admin.cursor().execute(f"drop database if exists {reference} with (force)")
        admin.close()

    status = astra("db", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"{POSTGRES_USER}:***@" in status.stdout and "hunter2" not in status.stdout
    assert "tasks         0" in status.stdout


@pytest.mark.slow
def test_several_db_init_at_once_on_an_empty_postgresql_database_all_succeed(postgres_database):
    # Each would CREATE SCHEMA IF NOT EXISTS at the same moment; without a lock, all but one could fail on the
    # catalogue's unique keys (seen: 1 or 2 of 3 failed, 4 times in 5).
    for _ in range(3):
        inits = astra_many(*[("db", "init")] * 4, env={"ASTRA_DATABASE_URL": postgres_database})
        assert [init.returncode for init in inits] == [0] * 4, [init.stderr for init in inits]
        assert all("astra schema ready" in init.stdout for init in inits)
        with psycopg2.connect(postgres_database) as dropping, dropping.cursor() as cursor:
            cursor.execute("DROP SCHEMA astra CASCADE")  # empty again for the next round
        dropping.close()


@pytest.mark.slow
def test_db_init_on_sqlite(tmp_path):
    path = tmp_path / "new" / "astra.db"
    result = astra("db", "init", env={"ASTRA_DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    tables = {row[0] for row in sqlite3.connect(path).execute("select name from sqlite_master where type='table'")}
    assert {"task", "parameter", "task_parameter", "dependency"} <= tables


@pytest.mark.slow
def test_db_status_counts_per_status_and_name(database_url, capsys):
    run_pipeline(Broken())
    text = astra("db", "status")
    assert text.returncode == 0, text.stderr
    assert "tasks         7 (done 6, running 0, failed 1)" in text.stdout
    rows = {line.split()[0]: line.split()[1:] for line in text.stdout.splitlines()[6:]}
    assert rows["EstimateSNR"] == ["5", "0", "0", "5"]
    assert rows["SummariseSNR"] == ["1", "0", "0", "1"]
    assert rows["Broken"] == ["0", "0", "1", "1"]
    status = json.loads(main(capsys, "db", "status", "--json").stdout)
    assert status["database"] == database_url
    assert status["total"] == 7 and status["statuses"] == {"done": 6, "running": 0, "failed": 1}
    assert status["dependencies"] == 5
    assert {"task_name": "EstimateSNR", "done": 5, "running": 0, "failed": 0, "total": 5} in status["names"]


@pytest.mark.slow
def test_list_with_filters(database_url, capsys):
    run_pipeline(Broken())
    everything, table = astra_many(
        ("tasks", "list", "--json"),
        ("tasks", "list", "--module", "workflows", "--name", "SummariseSNR", "--name", "Broken"),
    )
    by_name = main(capsys, "tasks", "list", "--name", "EstimateSNR", "--json")
    failed = main(capsys, "tasks", "list", "--status", "failed", "--json")
    by_path = main(capsys, "tasks", "list", "--where", f"spectrum_path={SPECTRA[0]}", "--json")
    by_pattern = main(
        capsys, "tasks", "list", "--where", "spectrum-path=*spec-00002.fits", "--name", "EstimateSNR", "--json"
    )
    # Only * is special: brackets, ? and case are matched as they are, on both backends.
    brackets = main(capsys, "tasks", "list", "--where", "spectrum_path=*spec-0000[12].fits")
    question = main(capsys, "tasks", "list", "--where", "spectrum_path=*spec-0000?.fits")
    upper = main(capsys, "tasks", "list", "--where", "spectrum_path=*SPEC-00002.FITS")
    limited = main(capsys, "tasks", "list", "--since", "1h", "--limit", "2")
    future = main(capsys, "tasks", "list", "--since", "2999-01-01", "--json")
    nothing = main(capsys, "tasks", "list", "--status", "done", "--module", "tests.cli_tasks")
    records = json.loads(everything.stdout)
    assert everything.returncode == 0 and len(records) == 7
    assert [r["pk"] for r in records] == sorted((r["pk"] for r in records), reverse=True)  # newest first
    assert {r["task_name"] for r in json.loads(by_name.stdout)} == {"EstimateSNR"}
    assert len(json.loads(by_name.stdout)) == 5
    (broken,) = json.loads(failed.stdout)
    assert broken["task_name"] == "Broken" and broken["error"] == "ValueError: broken on purpose"
    assert broken["parameters"] == {"reason": "broken on purpose"}
    assert [r["parameters"] for r in json.loads(by_path.stdout)] == [{"spectrum_path": SPECTRA[0]}]
    assert [r["parameters"] for r in json.loads(by_pattern.stdout)] == [{"spectrum_path": SPECTRA[1]}]

    assert table.returncode == 0
    header, rule, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["pk", "name", "status"] and set(rule) <= {"-", " "}
    assert [row.split()[1] for row in rows] == ["SummariseSNR"]  # Broken lives in tests.cli_tasks

    assert limited.returncode == 0 and len(limited.stdout.splitlines()) == 4
    assert limited.stderr.strip() == "(2 of 7 shown; --limit 0 shows all)"
    assert brackets.returncode == question.returncode == upper.returncode == 1
    assert future.returncode == 1 and json.loads(future.stdout) == []
    assert one_line_error(future, 1) == "astra: no tasks match"
    assert one_line_error(nothing, 1) == "astra: no tasks match"


@pytest.mark.slow
def test_bad_filters_give_one_line(database_url, capsys):
    run_pipeline()
    where, parameter = astra_many(
        ("tasks", "list", "--where", "spectrum_path"), ("tasks", "list", "--where", "nosuch=1")
    )
    since = main(capsys, "tasks", "list", "--since", "yesterday")
    ages = [main(capsys, "tasks", "list", "--since", age) for age in ("3000000d", "999999999999999999999d")]
    status = main(capsys, "tasks", "list", "--status", "finished")
    limit = main(capsys, "tasks", "list", "--limit", "-1")
    name = main(capsys, "tasks", "list", "--name", "NoSuchTask")
    command = main(capsys, "tasks", "frobnicate")
    assert "'spectrum_path' is not key=value" in one_line_error(where, 2)
    assert "'yesterday' is neither a time" in one_line_error(since, 2)
    for age in ages:  # a traceback: OverflowError
        assert "reaches back before the year 1; give a smaller age or a time" in one_line_error(age, 2)
    assert "'finished' is not one of" in one_line_error(status, 2)
    assert "--limit" in one_line_error(limit, 2)
    assert one_line_error(parameter, 1) == "astra: no tasks match: no task has a parameter 'nosuch'"
    assert one_line_error(name, 1) == (
        "astra: no tasks match: no task is named 'NoSuchTask' (recorded: EstimateSNR, SummariseSNR)"
    )
    assert "No such command 'frobnicate'" in one_line_error(command, 2)


@pytest.mark.slow
def test_show_by_pk_hash_prefix_and_luigi_task_id(database_url, capsys):
    run_pipeline(Broken())
    first = EstimateSNR(spectrum_path=SPECTRA[0])
    listed = json.loads(main(capsys, "tasks", "list", "--json").stdout)
    summary = next(r for r in listed if r["task_name"] == "SummariseSNR")
    estimate = next(r for r in listed if r["task_id"] == first.task_id)
    broken = next(r for r in listed if r["task_name"] == "Broken")
    text, by_prefix = astra_many(
        ("tasks", "show", str(summary["pk"])), ("tasks", "show", estimate["task_hash"][:10], "--json")
    )
    by_hash = main(capsys, "tasks", "show", estimate["task_hash"], "--json")
    by_task_id = main(capsys, "tasks", "show", first.task_id, "--json")
    failed = main(capsys, "tasks", "show", str(broken["pk"]))
    traced = main(capsys, "tasks", "show", str(broken["pk"]), "--traceback")
    missing = main(capsys, "tasks", "show", "no-such-task")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"task {summary['pk']}: SummariseSNR\n  status     done\n")
    assert "requires (5)" in text.stdout and "required by (0)" in text.stdout
    assert f"spectra_dir = {EXAMPLE_SPECTRA}" in text.stdout and "pattern = *.fits" in text.stdout
    assert '"n_spectra": 5' in text.stdout  # the result

    shown = json.loads(by_prefix.stdout)
    assert shown == json.loads(by_hash.stdout) == json.loads(by_task_id.stdout)
    assert shown["pk"] == estimate["pk"] and shown["parameters"] == {"spectrum_path": SPECTRA[0]}
    assert shown["requires"] == []  # SpectrumFile is not an astra task
    assert [(t["pk"], t["task_name"], t["status"]) for t in shown["required_by"]] == [
        (summary["pk"], "SummariseSNR", "done")
    ]
    assert shown["result"] is None  # EstimateSNR's results are its row in astra.snr (`astra results EstimateSNR`)
    for key in ("created", "started", "completed", "duration", "host", "pid", "astra_version", "task_id", "status"):
        assert shown[key] is not None, key

    assert failed.returncode == 0
    assert "status     failed" in failed.stdout and "error\n  ValueError: broken on purpose" in failed.stdout
    assert f"traceback\n  astra tasks show --traceback {broken['pk']}\n" in failed.stdout  # one line: where it is
    assert "raise ValueError(self.reason)" not in failed.stdout
    assert traced.stdout.startswith(failed.stdout.split("traceback\n")[0]) and "traceback\n" in traced.stdout
    assert "raise ValueError(self.reason)" in traced.stdout
    assert one_line_error(missing, 1) == "astra: no task has pk, luigi task_id or hash (prefix) 'no-such-task'"


def test_references_that_are_no_pk_name_no_task(database_url, capsys):
    """A number beyond a bigint, or digits Python counts as such ('²'); before: an OverflowError on SQLite and a
    ValueError on both, as tracebacks."""
    run_pipeline(Broken())
    for ref in ["99999999999999999999999", "9223372036854775808", "²", "١"]:
        for args in [("tasks", "show", ref), ("tasks", "forget", ref, "--dry-run")]:
            line = one_line_error(main(capsys, *args), 1)
            assert line == f"astra: no task has pk, luigi task_id or hash (prefix) {ref!r}", line


@pytest.mark.slow
def test_unreachable_database_and_missing_schema_give_one_line(postgres_database, monkeypatch, capsys):
    refused = "postgresql://postgres:hunter2@127.0.0.1:1/astra"
    cases = [(refused, "cannot connect to"), (postgres_database, "has no astra schema"), ("mysql://x/astra", "mysql")]
    commands = [("db", "status"), ("tasks", "list"), ("tasks", "show", "1")]
    # Each case once as a subprocess, then every command in this process.
    results = [astra(*command, env={"ASTRA_DATABASE_URL": url}) for (url, _), command in zip(cases, commands)]
    for (url, expected), result in zip(cases, results):
        line = one_line_error(result, 1)
        assert expected in line and "hunter2" not in line
        monkeypatch.setenv("ASTRA_DATABASE_URL", url)
        for command in commands:
            line = one_line_error(main(capsys, *command), 1)
            assert expected in line and "hunter2" not in line
