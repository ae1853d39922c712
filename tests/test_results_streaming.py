"""``astra results --format csv|json`` is written a chunk of tasks at a time, in the very bytes of the whole table,
and its memory does not grow with the rows."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import luigi
import pytest

from astra import export, results_table
from astra.database import output_tables
from astra.database.connection import is_postgres
from astra.targets import forget_cached
from tests.helpers import main, subprocess_env
from tests.output_tasks import FindLines, Lines, Measure, Measurement, MeasureVisits, PlainResult, Visit


@pytest.fixture
def varied_db(database_url):
    """Rows whose columns a chunk of one task can make otherwise than the whole table: arrays whose shape changes
    from task to task, arrays missing in some tasks, JSON results whose keys differ, NaN and strings to quote."""
    if is_postgres():
        output_tables.create([Measurement, Visit, Lines])
    forget_cached()
    tasks = [MeasureVisits(star=s, visits=v) for s, v in ((0, 2), (1, 3), (2, 1), (3, 0))]
    tasks += [Measure(i=1), Measure(i=-1), Measure(i=2, label='a,"quoted"\nlabel')]
    tasks += [PlainResult(i=i) for i in range(5)]
    tasks += [FindLines(n=n, undeclared=bool(n % 2)) for n in (2, 0, 2, 1, 3)]
    assert luigi.build(tasks, local_scheduler=True, log_level="WARNING")
    return database_url


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_streamed_text_is_the_whole_tables(varied_db, capsys, monkeypatch, tmp_path, chunk):
    """Chunks of 1 and 2 tasks (and one chunk) give the bytes that the whole table gives, on stdout and in a file."""
    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", chunk)
    for name in ("MeasureVisits", "Measure", "PlainResult", "FindLines"):
        for fmt in ("csv", "json"):
            for columns in ([], ["--columns", "task_pk,visit,spectrum"] if name == "MeasureVisits" else []):
                asked = ("results", name, "--format", fmt, *columns)
                streamed = main(capsys, *asked)
                to_file = main(capsys, *asked, "-o", str(tmp_path / f"streamed.{fmt}"))
                monkeypatch.setattr(export, "STREAMED", ())  # the whole table, as astra wrote it before
                whole = main(capsys, *asked)
                whole_file = main(capsys, *asked, "-o", str(tmp_path / f"whole.{fmt}"))
                monkeypatch.setattr(export, "STREAMED", ("csv", "json"))
                assert streamed.returncode == whole.returncode == 0, (asked, streamed.stderr)
                assert streamed.stdout == whole.stdout, asked
                assert to_file.stderr == whole_file.stderr.replace("whole.", "streamed.")
                assert (tmp_path / f"streamed.{fmt}").read_bytes() == (tmp_path / f"whole.{fmt}").read_bytes()
    assert export.STREAMED == ("csv", "json")


@pytest.mark.slow
def test_streamed_errors_are_those_of_the_whole_table(varied_db, capsys, tmp_path):
    """Nothing is written when no row matches or a column is unknown, and the lines say what they said."""
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "none.csv"
    none = main(capsys, "results", "MeasureVisits", "--where", "star=3", "--format", "csv", "-o", str(path))
    assert none.returncode == 1 and "no done MeasureVisits task has results that match" in none.stderr
    assert list(path.parent.iterdir()) == []
    unknown = main(capsys, "results", "Measure", "--columns", "snr,nope", "--format", "json")
    assert unknown.returncode == 1 and unknown.stdout == "" and "no column 'nope'" in unknown.stderr


#: Spectra of the database the memory is measured on (two tasks each; each fit a row with 100 floats).
SPECTRA = 20_000


@pytest.fixture
def many_rows(postgres_server, _drop_later):
    """A PostgreSQL database of SPECTRA fits (bench/scale.py's fill), never analysed."""
    from bench import scale

    name = f"astra_test_{uuid.uuid4().hex[:12]}"
    scale.admin(f"create database {name}")
    try:
        scale.fill(f"{postgres_server}/{name}", 2 * SPECTRA, analyze=False, say=lambda text: None)
        yield f"{postgres_server}/{name}"
    finally:
        _drop_later(name)


def _peak_mb(url: str, *args: str) -> float:
    """Peak resident memory of a whole ``astra`` process, in MB."""
    env = subprocess_env({"ASTRA_DATABASE_URL": url})
    process = subprocess.Popen([sys.executable, "-m", "astra.cli", *args], env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    return usage.ru_maxrss / 1024


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_streamed_memory_does_not_grow_with_the_rows(many_rows, tmp_path, fmt):
    """Twenty times the rows (20,000 against 1,000: ~40 MB of CSV, ~100 MB of JSON) cost a whole process less than
    25 MB more at its peak: what grows is a few numbers per task, not the rows (held whole, they took 10x more)."""
    output = str(tmp_path / f"out.{fmt}")
    few = _peak_mb(
        many_rows, "results", "ScaleFit", "--where", "path=/sdss/dr19/spec-000000*", "--format", fmt, "-o", output
    )
    size = os.path.getsize(output)
    many = _peak_mb(
        many_rows, "results", "ScaleFit", "--where", "path=/sdss/dr19/spec-0000*", "--format", fmt, "-o", output
    )
    assert os.path.getsize(output) > 9 * size
    assert many - few < 25, (few, many)
