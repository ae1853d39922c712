"""The scale kit (bench/scale.py): its SQL fill writes the rows astra's own batches write, and the statements of
the ``astra`` command keep plans that start from the selective side on tables nobody has analysed."""

from __future__ import annotations

import json
import logging
import re
import uuid

import psycopg2
import pytest

from tests.helpers import REPO, astra, main, raw_sql, run_luigi

SPECTRA = 23  # several nights of 5 spectra, and one night not full
PER_NIGHT = "5"


def _rows(url: str) -> dict[str, list]:
    """Every row of the astra tables by its content: keys as hashes, times and hosts left out."""
    connection = psycopg2.connect(url)
    cursor = connection.cursor()
    queries = {
        "task": "select task_module, task_name, task_id, task_hash, version, status, attempts, astra_version, "
        "result, error, traceback, dynamic_dependencies, lease, claim_token, slurm_job_id, slurm_node, "
        "created is not null and started is not null and completed is not null and heartbeat is not null, "
        "duration is not null, host is not null, pid is not null from astra.task",
        "parameter": "select parameter_name, parameter_value, parameter_hash from astra.parameter",
        "task_parameter": "select t.task_hash, p.parameter_hash from astra.task_parameter l "
        "join astra.task t on t.pk = l.task_pk join astra.parameter p on p.pk = l.parameter_pk",
        "dependency": "select t.task_hash, r.task_hash, d.dynamic from astra.dependency d "
        "join astra.task t on t.pk = d.task_pk join astra.task r on r.pk = d.requires_pk",
        "scale_fit": "select t.task_hash, pg_typeof(f.teff)::text, pg_typeof(f.model_flux)::text, "
        "array_length(f.model_flux, 1), array_ndims(f.model_flux) from astra.scale_fit f "
        "join astra.task t on t.pk = f.task_pk",
        "indexes": "select indexname, indexdef from pg_indexes where schemaname = 'astra'",
        "triggers": "select tgname, tgrelid::regclass::text from pg_trigger where not tgisinternal",
        "sequences": "select (select last_value from astra.task_pk_seq) = (select max(pk) from astra.task), "
        "(select last_value from astra.parameter_pk_seq) = (select max(pk) from astra.parameter)",
    }
    found = {}
    for name, sql in queries.items():
        cursor.execute(sql)
        rows = [tuple(bytes(v).hex() if isinstance(v, memoryview) else v for v in row) for row in cursor.fetchall()]
        found[name] = sorted(rows, key=repr)  # keys (bytea) as hex text: a memoryview's repr is its address
    connection.close()
    return found


def test_fill_writes_what_astra_writes(postgres_database, postgres_server, monkeypatch, _drop_later):
    """The rows of bench/scale.py's SQL fill are those of astra's batches over the same spectra, key for key."""
    from bench import scale, scale_tasks

    env = {"ASTRA_DATABASE_URL": postgres_database, "SCALE_PER_NIGHT": PER_NIGHT}
    made = astra("db", "init", "--module", "bench.scale_tasks", env=env)
    assert made.returncode == 0, made.stderr
    ran = run_luigi("--module", "bench.scale_tasks", "ScaleFits", "--n", str(SPECTRA), "--local-scheduler", env=env)
    assert "ScaleFits" in ran.stdout and ":)" in ran.stdout, ran.stdout

    name = f"astra_test_{uuid.uuid4().hex[:12]}"
    scale.admin(f"create database {name}")
    try:
        monkeypatch.setattr(scale_tasks, "PER_NIGHT", int(PER_NIGHT))
        filled = f"{postgres_server}/{name}"
        scale.fill(filled, 2 * SPECTRA, say=lambda text: None)
        by_astra, by_sql = _rows(postgres_database), _rows(filled)
    finally:
        _drop_later(name)
    assert len(by_astra["task"]) == 2 * SPECTRA and len(by_astra["scale_fit"]) == SPECTRA
    assert len(by_astra["dependency"]) == SPECTRA and len(by_astra["task_parameter"]) == 6 * SPECTRA
    for table in by_astra:
        assert by_sql[table] == by_astra[table], table
    assert REPO  # the fill reads the schema from this checkout


# Plan shapes without statistics -------------------------------------------------------------------------------

#: A sequential scan of an astra table (not of the system catalogues, which peewee reads to find the tables).
ASTRA_SCAN = re.compile(r"Seq Scan on (task|parameter|task_parameter|dependency|scale_fit)\b")
#: A list (or array) of primary keys: the planner knows how many rows it names without statistics (the key is
#: unique), and scans a table this small for a chunk of 5,000 keys, but probes the index of a table of millions.
BY_PRIMARY_KEY = re.compile(r'WHERE \(*"t1"\."pk" (IN \(|= ANY\()')
#: Tasks of the database the plans are checked on: small, but large enough that a scan is not the best plan.
PLANNED = 40_000


@pytest.fixture
def unanalysed(postgres_server, monkeypatch, _drop_later):
    """A database filled by bench/scale.py with PLANNED tasks and never analysed; $ASTRA_DATABASE_URL points at it."""
    from astra.targets import forget_cached
    from bench import scale

    name = f"astra_test_{uuid.uuid4().hex[:12]}"
    scale.admin(f"create database {name}")
    url = f"{postgres_server}/{name}"
    try:
        scale.fill(url, PLANNED, analyze=False, say=lambda text: None)
        monkeypatch.setenv("ASTRA_DATABASE_URL", url)
        forget_cached()
        yield url
    finally:
        forget_cached()
        _drop_later(name)


def _statements(capsys, *args: str) -> list[tuple[str, object]]:
    """The SELECTs that ``astra ARGS`` sends (run in this process)."""
    sent = _sent(lambda: main(capsys, *args))
    assert sent, f"astra {' '.join(args)} sent no SELECT that was seen"
    return sent


def _sent(call) -> list[tuple[str, object]]:
    """The SELECTs sent while ``call()`` runs; it must end with code 0 or 1."""
    sent: list[tuple[str, object]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, tuple) and record.msg[0].lstrip().upper().startswith(("SELECT", "WITH")):
                sent.append(record.msg)

    logger, handler = logging.getLogger("peewee"), Keep()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # not `.level =`: that keeps the answer isEnabledFor cached when it was lower
    try:
        done = call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert done is None or done.returncode in (0, 1), done.stderr
    return sent


def _scans(url: str, statements: list[tuple[str, object]]) -> list[str]:
    """The sequential scans of astra tables in the plans of ``statements`` (EXPLAIN, no ANALYZE)."""
    connection = psycopg2.connect(url)
    cursor = connection.cursor()
    cursor.execute(
        "select count(*) from pg_statistic s join pg_class c on c.oid = s.starelid "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'astra'"
    )
    assert cursor.fetchone()[0] == 0, "the database was analysed"
    scans = []
    for sql, params in statements:
        if BY_PRIMARY_KEY.search(sql):
            continue
        cursor.execute("EXPLAIN " + sql, params or None)
        plan = "\n".join(line for (line,) in cursor.fetchall())
        scans += [f"{line.strip()} in {sql[:300]}" for line in plan.splitlines() if ASTRA_SCAN.search(line)]
    connection.close()
    return scans


@pytest.mark.parametrize("listed", [None, 100])
def test_commands_plan_by_keys_without_statistics(unanalysed, capsys, monkeypatch, tmp_path, listed):
    """Every statement of the commands that select tasks finds its rows by index, on tables never analysed: no
    sequential scan of astra.task, task_parameter, parameter, dependency or an output table. With ``listed``, any
    filter of more tasks than that counts as common (checked task by task), as a night or a data release does on a
    database of millions."""
    from astra.database import records
    from bench.scale_tasks import PER_NIGHT

    if listed:
        monkeypatch.setattr(records, "LISTED", listed)
        monkeypatch.setattr(records, "LISTED_ALL", listed)
        monkeypatch.setattr(records, "SHARED", listed)
    spectra = PLANNED // 2
    night, middle = spectra // 2 // PER_NIGHT, spectra // 2
    path = f"/sdss/dr19/spec-{middle:09d}.fits"
    commands = [
        ("results", "ScaleFit", "--where", f"night={night}", "--format", "csv"),
        ("results", "ScaleFit", "--where", f"path={path}"),
        ("results", "ScaleFit", "--where", "release=dr19", "--where", f"night={night}", "--format", "json"),
        ("results", "ScaleVisit", "--where", f"path={path[:-7]}*", "--format", "csv"),
        ("results", "ScaleFit", "--where", f"path={path[:-9]}*", "--format", "fits", "-o", str(tmp_path / "f.fits")),
        ("results", "ScaleFit", "--where", f"path={path[:-9]}*", "--format", "json", "--columns", "path,model_flux"),
        ("tasks", "list", "--where", "release=dr19"),
        ("tasks", "list", "--where", "path=/sdss/*", "--where", f"night={night}"),
        ("tasks", "list", "--where", f"night={night}"),
        ("tasks", "list", "--name", "ScaleFit", "--where", f"path={path}"),
        ("tasks", "list", "--status", "failed"),
        ("tasks", "list", "--name", "ScaleVisit"),
        ("tasks", "list"),
        ("tasks", "show", str(2 * middle + 2)),
        (
            "tasks",
            "why",
            "--module",
            "bench.scale_tasks",
            "ScaleFit",
            "--release",
            "dr19",
            "--night",
            str(night),
            "--path",
            "/sdss/dr19/not-recorded.fits",
        ),  # fmt: skip
        ("tasks", "forget", "--name", "ScaleVisit", "--where", f"night={night}", "--cascade", "--dry-run"),
    ]
    for command in commands:
        assert _scans(unanalysed, _statements(capsys, *command)) == [], command
    # and they find what they should
    listed = main(capsys, "tasks", "list", "--where", f"night={night}", "--where", "release=dr19", "--json")
    assert len(json.loads(listed.stdout)) == 100 and "of more than 10,000" not in listed.stderr
    assert f"(100 of {2 * PER_NIGHT} shown" in listed.stderr
    found = main(
        capsys, "results", "ScaleFit", "--where", f"night={night}", "--where", "release=*19", "--format", "csv"
    )
    assert len(found.stdout.splitlines()) == 1 + PER_NIGHT
    assert {line.split(",")[2] for line in found.stdout.splitlines()[1:]} == {str(night)}
    common = main(capsys, "tasks", "list", "--where", "path=/sdss/*", "--where", f"night={night}", "--limit", "0")
    assert len(common.stdout.splitlines()) == 2 + 2 * PER_NIGHT
    one = main(capsys, "results", "ScaleFit", "--where", f"path={path}", "--format", "json")
    assert [row["path"] for row in json.loads(one.stdout)] == [path]


def test_the_all_done_check_reads_the_index_alone(unanalysed):
    """The all-done check asks for the status of 5,000 keys at a time; the unique index of task_hash holds the status
    (schema 12), so once the table has been vacuumed (its pages marked all visible) the plan reads the index alone;
    before that, it probes the index and reads the rows it finds, never the whole table."""
    from astra.database import queries

    keys = [row[0] for row in raw_sql(unanalysed, "select encode(task_hash, 'hex') from astra.task order by pk")]
    found = []
    sent = _sent(lambda: found.append(queries.done_hashes(keys)))
    assert len(found[0]) == len(keys) == PLANNED  # bench/scale.py records every task done
    sent = [(sql, params) for sql, params in sent if "task_hash = ANY" in sql]
    assert len(sent) == PLANNED // queries.CHUNK
    connection = psycopg2.connect(unanalysed)
    connection.autocommit = True
    cursor = connection.cursor()
    for vacuumed in (False, True):
        if vacuumed:  # as autovacuum does to a table that has had many rows written
            cursor.execute("VACUUM ANALYZE astra.task")
        for sql, params in sent:
            cursor.execute("EXPLAIN " + sql, params or None)
            plan = "\n".join(line for (line,) in cursor.fetchall())
            assert "Seq Scan" not in plan, plan  # before: probes of the index and a read of each row it finds
            assert ("Index Only Scan using task_task_hash" in plan) == vacuumed, plan
    connection.close()


def test_the_check_before_a_run_of_an_output_model_probes_an_index(unanalysed):
    """Before tasks of an output model run, astra asks whether any done task of the class holds a JSON result (one
    recorded before the class had its table). That is a probe of the partial index task_json_result, not a walk over
    every done task of the class (1.3 s per process at 10^7 tasks before schema 10)."""
    from astra.database import output_schema
    from bench.scale_tasks import ScaleFitRow

    found = []
    sent = _sent(lambda: found.append(output_schema.problem(ScaleFitRow)))
    assert found == [None]  # the table fits
    json_results = [statement for statement in sent if '"result" IS NOT NULL' in statement[0]]
    assert json_results, sent
    assert _scans(unanalysed, sent) == []
    connection = psycopg2.connect(unanalysed)
    connection.autocommit = True
    cursor = connection.cursor()
    for analysed in (False, True):  # statistics say half the tasks hold a JSON result: the plan stays a probe
        if analysed:
            cursor.execute("ANALYZE astra.task")
        for sql, params in json_results:
            cursor.execute("EXPLAIN " + sql, params or None)
            plan = "\n".join(line for (line,) in cursor.fetchall())
            assert "Index Scan using task_json_result" in plan and "Seq Scan" not in plan, (analysed, plan)
    connection.close()


def test_db_status_estimates_a_large_database(unanalysed, capsys, monkeypatch):
    """On a large database (here: above a lowered threshold) `astra db status` counts what is rare, estimates the
    rest without reading it, and says so."""
    from astra.database import records

    monkeypatch.setattr(records, "ESTIMATED", 1000)
    assert _scans(unanalysed, _statements(capsys, "db", "status")) == []
    status = main(capsys, "db", "status", "--json")
    found = json.loads(status.stdout)
    assert found["estimated"] is True
    assert found["statuses"]["failed"] == found["statuses"]["running"] == 0  # counted: none
    assert [name["task_name"] for name in found["names"]] == ["ScaleFit", "ScaleVisit"]
    text = main(capsys, "db", "status").stdout
    assert "planner's estimates" in text


def test_forget_cascade_deletes_by_keys(unanalysed, capsys):
    """A forget with everything downstream deletes what it should, in a transaction planned by keys."""
    from bench.scale_tasks import PER_NIGHT

    forgotten = main(capsys, "tasks", "forget", "--name", "ScaleVisit", "--where", "night=1", "--cascade", "-y")
    assert forgotten.returncode == 0, forgotten.stderr
    assert f"forgot {2 * PER_NIGHT} tasks" in forgotten.stdout
    connection = psycopg2.connect(unanalysed)
    cursor = connection.cursor()
    cursor.execute("select count(*), count(distinct task_name) from astra.task")
    assert cursor.fetchone() == (PLANNED - 2 * PER_NIGHT, 2)
    cursor.execute(
        "select (select count(*) from astra.task_parameter), (select count(*) from astra.dependency), "
        "(select count(*) from astra.scale_fit), (select count(*) from astra.parameter where parameter_name = 'path')"
    )
    left = PLANNED - 2 * PER_NIGHT
    assert cursor.fetchone() == (3 * left, left // 2, left // 2, left // 2)
    connection.close()
