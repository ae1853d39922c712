"""The scale kit (bench/scale.py): its SQL fill writes the rows astra's own batches write, and the statements of
the ``astra`` command keep plans that start from the selective side on tables nobody has analysed."""

from __future__ import annotations

import uuid

import psycopg2

from tests.helpers import REPO, astra, run_luigi

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
        found[name] = sorted(cursor.fetchall(), key=repr)
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
