"""``astra results --format csv|json`` is written a chunk of tasks at a time, in the very bytes of the whole table,
and its memory does not grow with the rows."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tracemalloc
import uuid

import luigi
import numpy as np
import pytest

from astra import export, results_table
from astra.database import output_tables, queries, records
from astra.database.connection import is_postgres
from astra.database.queries import reading
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
@pytest.mark.parametrize("fmt", ["csv", "json", "fits", "parquet"])
def test_streamed_memory_does_not_grow_with_the_rows(many_rows, tmp_path, fmt):
    """Twice the rows (20,000 against 10,000: +20 MB of CSV, +50 MB of JSON, +4.5 MB of FITS) cost a whole process
    less than 15 MB more at its peak: what grows is a few numbers per task, not the rows (held whole, 10,000 rows
    took 50 MB or more). Both sizes are well past the chunks read ahead of the writer, which cost the same for both.
    """
    output = str(tmp_path / f"out.{fmt}")
    few = _peak_mb(
        many_rows, "results", "ScaleFit", "--where", "path=/sdss/dr19/spec-00000*", "--format", fmt, "-o", output
    )
    size = os.path.getsize(output)
    many = _peak_mb(
        many_rows, "results", "ScaleFit", "--where", "path=/sdss/dr19/spec-0000*", "--format", fmt, "-o", output
    )
    assert os.path.getsize(output) > 1.9 * size
    assert many - few < 15, (few, many)


def _traced_peak(filters: records.Filters) -> tuple[int, int]:
    """How many tasks one pass of ``records.versions`` over ``filters`` gives, and the most memory it held (bytes
    allocated by Python meanwhile, connection included)."""
    tracemalloc.start()
    try:
        with reading():
            tasks = sum(len(chunk) for chunk in records.versions(filters))
        return tasks, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_the_matching_tasks_are_held_a_window_at_a_time(many_rows, monkeypatch):
    """`astra results` reads the tasks it shows a chunk at a time, holding what it read of each (pk, version,
    completion time; ~0.6 kB a task) only while its rows are written: at 10^7 tasks it held ~6 GB before any row.
    Walking the table (no filter rare enough to list its tasks), twice the tasks cost no more; a listed filter
    holds its tasks' pks only (8 bytes each, at most LISTED_ALL of them) beside a chunk."""
    monkeypatch.setenv("ASTRA_DATABASE_URL", many_rows)
    every = records.Filters(names=("ScaleFit",), statuses=("done",))
    half = dataclasses.replace(every, where=(("path", "/sdss/dr19/spec-00000*"),))
    # Statements of 500 tasks: what is read ahead of the caller (a few statements' rows) is then small beside them.
    monkeypatch.setattr(records, "chunked", lambda items, size=500: queries.chunked(items, size))
    listed, listed_peak = _traced_peak(every)
    assert listed == SPECTRA and listed_peak < 200 * SPECTRA, listed_peak
    monkeypatch.setattr(records, "LISTED_ALL", 10)  # every filter is too common to list: the table is walked
    monkeypatch.setattr(records, "WINDOW", 1000)
    (few, few_peak), (many, many_peak) = _traced_peak(half), _traced_peak(every)
    assert (few, many) == (SPECTRA // 2, SPECTRA)
    assert many_peak < few_peak + 100_000, (few_peak, many_peak)


def _without_date(path) -> bytes:
    """A FITS file's bytes with its DATE card (the time it was written) blanked."""
    data = path.read_bytes()
    at = data.find(b"DATE    = ")
    return data if at < 0 else data[:at] + b" " * 80 + data[at + 80 :]


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_chunked_files_are_the_whole_tables(varied_db, capsys, monkeypatch, tmp_path, chunk):
    """FITS and Parquet files written a chunk of tasks at a time hold what the whole table gives: the same FITS
    bytes (but the time written), the same Parquet rows, columns, units and provenance; the same errors."""
    import pyarrow.parquet

    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", chunk)
    for name in ("MeasureVisits", "Measure", "PlainResult", "FindLines"):
        for fmt in ("fits", "parquet"):
            chunked, whole = tmp_path / f"chunked.{fmt}", tmp_path / f"whole.{fmt}"
            for path in (chunked, whole):
                path.unlink(missing_ok=True)
            written = main(capsys, "results", name, "--format", fmt, "-o", str(chunked))
            monkeypatch.setattr(export, "CHUNKED", ())  # the whole table, as astra wrote it before
            expected = main(capsys, "results", name, "--format", fmt, "-o", str(whole))
            monkeypatch.setattr(export, "CHUNKED", ("fits", "parquet"))
            assert written.returncode == expected.returncode, (name, fmt, written.stderr, expected.stderr)
            assert written.stderr == expected.stderr.replace("whole.", "chunked."), (name, fmt)
            if expected.returncode:
                assert not chunked.exists()
            elif fmt == "fits":
                assert _without_date(chunked) == _without_date(whole), (name, chunk)
            else:
                made, wanted = pyarrow.parquet.read_table(chunked), pyarrow.parquet.read_table(whole)
                assert repr(made.to_pylist()) == repr(wanted.to_pylist()), (name, chunk)  # repr: NaN is NaN
                assert made.schema.remove_metadata() == wanted.schema.remove_metadata()
                assert [made.schema.field(i).metadata for i in range(len(made.schema))] == [
                    wanted.schema.field(i).metadata for i in range(len(wanted.schema))
                ]
                meta, wanted_meta = dict(made.schema.metadata), dict(wanted.schema.metadata)
                assert meta.pop(b"DATE") and wanted_meta.pop(b"DATE") and meta == wanted_meta
    assert export.CHUNKED == ("fits", "parquet")


def _chunks(*columns: dict) -> list:
    from astropy.table import Table

    return [Table(chunk) for chunk in columns]


UNLIKE_CHUNKS = {
    "alike": _chunks({"n": [1, 2], "s": ["ab", "cd"]}, {"n": [3], "s": ["ef"]}),
    "narrower text later": _chunks({"n": [1, 2], "s": ["abcd", "cd"]}, {"n": [3], "s": ["e"]}),
    "wider text later": _chunks({"n": [1, 2], "s": ["ab", "cd"]}, {"n": [3], "s": ["efghij"]}),
    "floats after ints": _chunks({"n": [1, 2], "s": ["ab", "cd"]}, {"n": [3.5], "s": ["ef"]}),
    "vectors": _chunks({"v": [[1.0, 2.0], [3.0, 4.0]]}, {"v": [[5.0, 6.0]]}),
    "longer vectors later": _chunks({"v": [[1.0, 2.0], [3.0, 4.0]]}, {"v": [[5.0, 6.0, 7.0]]}),
}


@pytest.mark.parametrize("case", list(UNLIKE_CHUNKS))
@pytest.mark.parametrize("fmt", ["fits", "parquet"])
def test_chunks_unlike_the_first_give_the_whole_table(tmp_path, case, fmt):
    """Each case written in chunks holds what the whole table gives, whether or not a later chunk fits the first
    one's columns (when it does not, astra starts over with the whole table); masked values likewise."""
    import pyarrow.parquet
    from astropy.table import MaskedColumn, Table, vstack

    chunks = UNLIKE_CHUNKS[case]
    if case == "alike":  # and the same with a masked value in the second chunk only
        masked = chunks[1].copy()
        masked["n"] = MaskedColumn([3], mask=[True])
        cases = [chunks, [chunks[0], masked]]
    else:
        cases = [chunks]
    for tables in cases:
        if case == "longer vectors later":  # one table holds them as JSON text, as astra's results table does
            whole = Table([export.column("v", [list(v) for table in tables for v in table["v"]])])
        else:
            whole = vstack([table.copy() for table in tables])
        meta = {"TASKNAME": "Case"}
        path = tmp_path / f"chunked.{fmt}"
        rows, columns = export.write_chunks(iter([t.copy() for t in tables]), fmt, str(path), meta, whole.copy)
        assert (rows, columns) == (len(whole), len(whole.colnames))
        whole.meta.update(meta)
        export.write(whole, fmt, str(tmp_path / f"whole.{fmt}"))
        if fmt == "fits":
            assert path.read_bytes() == (tmp_path / "whole.fits").read_bytes(), case
        else:
            made, wanted = pyarrow.parquet.read_table(path), pyarrow.parquet.read_table(tmp_path / "whole.parquet")
            assert repr(made.to_pylist()) == repr(wanted.to_pylist()) and made.schema == wanted.schema, case


def test_plain_chunks_are_written_by_numpy(tmp_path, monkeypatch):
    """Chunks laid out as the first one are written from numpy's bytes, checked against astropy's on the first:
    astropy makes one table HDU for the whole file, not one per chunk."""
    from astropy.table import Table, vstack

    made = []
    real = export._fits_hdu
    monkeypatch.setattr(export, "_fits_hdu", lambda *args: made.append(1) or real(*args))
    chunks = [Table({"n": [i, i + 1], "x": [0.5 * i, 1.5], "s": ["a" * (3 - i % 2), "bb"], "v": [[1.0, 2.0]] * 2})
              for i in range(5)]  # fmt: skip
    whole = vstack(chunks)
    export.write_chunks(iter(chunks), "fits", str(tmp_path / "chunked.fits"), {}, None)
    assert len(made) == 1
    export.write(whole, "fits", str(tmp_path / "whole.fits"))
    assert (tmp_path / "chunked.fits").read_bytes() == (tmp_path / "whole.fits").read_bytes()


def test_chunked_files_to_a_pipe_are_the_whole_table(tmp_path):
    """A destination that cannot seek back (a FIFO, /dev/stdout) gets the whole table, written once."""
    import threading

    from astropy.table import Table

    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()))
    reader.start()
    chunks = [Table({"n": [1, 2]}), Table({"n": [3]})]
    export.write_chunks(iter(chunks), "fits", str(fifo), {}, lambda: Table({"n": [1, 2, 3]}))
    reader.join(timeout=30)
    export.write(Table({"n": [1, 2, 3]}), "fits", str(tmp_path / "whole.fits"))
    assert read == [(tmp_path / "whole.fits").read_bytes()]


def test_lists_of_numbers_and_text_keep_their_values():
    """numpy made text of every element of a list that holds some: a result's (1, "a") was written ["1", "a"]. Such
    lists are JSON text now, as other nested values are; lists of text alone are still vector columns."""
    mixed = export.column("pair", [[1, "a"], [2.5, "b"], None])
    assert [json.loads(v) if v else None for v in mixed.filled("")] == [[1, "a"], [2.5, "b"], None]
    assert export.column("names", [["x", "y"], ["z", "w"]]).shape == (2, 2)
    assert export.column("numbers", [[1, 2], [3, 4]]).dtype.kind == "i"


@pytest.mark.parametrize("chunked", [False, True])
def test_missing_ints_in_fits_leave_999999_a_value(tmp_path, chunked):
    """astropy writes a missing integer as 999999 (FITS TNULL), and reads every 999999 of the column back as
    missing: a task's 999999 was lost. The null is now a value the column does not hold."""
    from astropy.table import Table, vstack

    chunks = [
        Table([export.column("n", [1, None]), export.column("v", [[1, 2], None])]),
        Table([export.column("n", [999999, None]), export.column("v", [[999999, -(2**63)], None])]),
    ]
    path = str(tmp_path / "ints.fits")
    whole = vstack([chunk.copy() for chunk in chunks])
    if chunked:
        export.write_chunks(iter(chunks), "fits", path, {}, whole.copy)
    else:
        export.write(whole, "fits", path)
    read = Table.read(path)
    assert read["n"].tolist() == [1, None, 999999, None]
    assert [None if np.ma.getmaskarray(v).all() else v.tolist() for v in read["v"]] == [
        [1, 2],
        None,
        [999999, -(2**63)],
        None,
    ]
