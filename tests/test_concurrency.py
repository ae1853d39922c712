"""Several luigi processes on one DAG at once: each task recorded once, no duplicate parameters."""

from __future__ import annotations

import peewee
import pytest

from astra.database import Parameter, Task, TaskParameter
from tests.helpers import background, finished_cleanly
from workflows.spectra import simulate


@pytest.mark.slow
def test_four_processes_share_one_dag_on_postgres(postgres_database, monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRA_DATABASE_URL", postgres_database)
    from astra.database import create_schema, output_tables
    from workflows import SNR

    create_schema()
    output_tables.create([SNR])  # astra db init --module workflows
    simulate(tmp_path / "spectra", count=200, seed=5)
    args = ["--module", "workflows", "SummariseSNR", "--spectra-dir", str(tmp_path / "spectra")]
    args += ["--local-scheduler", "--no-lock"]  # luigi locks one command per host
    with background(*((args, tmp_path / f"{n}.out") for n in range(4))) as processes:
        finished_cleanly(processes, timeout=400)

    assert Task.select().count() == 201
    assert Task.select().where(Task.status != "done").count() == 0
    assert Task.select().where(Task.attempts != 1).count() == 0
    distinct = Parameter.select(Parameter.parameter_name, Parameter.parameter_value).distinct().count()
    assert Parameter.select().count() == distinct == 202  # 200 spectrum paths, spectra_dir, pattern
    duplicates = (
        TaskParameter.select(TaskParameter.task, TaskParameter.parameter)
        .group_by(TaskParameter.task, TaskParameter.parameter)
        .having(peewee.fn.count(TaskParameter.task) > 1)
    )
    assert duplicates.count() == 0
    assert TaskParameter.select().count() == 200 + 2
