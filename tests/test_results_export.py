"""``astra results``: output rows (or JSON results) exported as text, CSV, strict JSON, FITS and Parquet, and drawn."""

from __future__ import annotations

import json

import luigi
import numpy as np
import pytest
from astropy.table import Table

from astra import outputs
from astra.database import output_tables
from astra.database.connection import is_postgres
from astra.targets import forget_cached
from tests.helpers import astra, astra_many, main
from tests.output_tasks import (
    Clash,
    ClashFit,
    ClashResult,
    Measure,
    Measurement,
    MeasureVisits,
    PlainResult,
    Ragged,
    RaggedFit,
    Shaped,
    ShapedFit,
    Visit,
    ragged_flux,
    shaped_counts,
    shaped_lines,
)


def strict(text: str) -> object:
    def reject(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def results_db(database_url):
    if is_postgres():
        output_tables.create([Measurement, Visit])
    forget_cached()
    tasks = [MeasureVisits(star=s, visits=2) for s in range(3)] + [Measure(i=1), Measure(i=-1)]
    tasks += [PlainResult(i=i) for i in range(3)]
    assert luigi.build(tasks, local_scheduler=True, log_level="WARNING")
    return database_url


@pytest.mark.slow
def test_fits_export_reads_back_with_vector_columns(results_db, tmp_path, capsys):
    path = tmp_path / "visits.fits"
    made = astra("results", "MeasureVisits", "--format", "fits", "-o", str(path))
    assert made.returncode == 0, made.stderr
    assert "wrote 6 rows, 8 columns" in made.stderr
    table = Table.read(path)
    assert table.colnames == ["task_pk", "star", "visits", "version", "completed", "visit", "rv", "spectrum"]
    assert len(table) == 6 and table["spectrum"].shape == (6, 100) and table["spectrum"].dtype.str[1:] == "f4"
    assert table["star"].dtype.kind == "i" and sorted(table["star"]) == [0, 0, 1, 1, 2, 2]
    assert sorted(table["rv"]) == pytest.approx([0.0, 0.1, 1.0, 1.1, 2.0, 2.1])
    assert all(row["spectrum"][0] == row["visit"] for row in table)

    filtered = main(
        capsys,
        "results",
        "MeasureVisits",
        "--where",
        "star=1",
        "--columns",
        "task_pk,rv,spectrum",
        "--format",
        "fits",
        "-o",
        str(path),
    )
    assert filtered.returncode == 0, filtered.stderr
    table = Table.read(path)
    assert table.colnames == ["task_pk", "rv", "spectrum"] and list(table["rv"]) == pytest.approx([1.0, 1.1])

    measured = main(capsys, "results", "Measure", "--format", "fits", "-o", str(path))
    assert measured.returncode == 0, measured.stderr
    table = Table.read(path)
    assert table["counts"].shape == (2, 2, 3) and table["counts"].dtype.str[1:] == "i8"
    assert table["n_good"][0] == 2**62 + 3 and table["flux"].shape == (2, 2000)
    assert "task_label" in table.colnames and "label" in table.colnames  # a parameter named like a field


@pytest.mark.slow
def test_text_csv_and_strict_json(results_db, capsys):
    shown, csv, *as_json = (
        main(capsys, "results", *args)
        for args in (
            ("MeasureVisits",),
            ("MeasureVisits", "--format", "csv"),
            ("Measure", "--json"),
            ("Measure", "--format", "json"),
        )
    )
    assert shown.returncode == 0 and shown.stdout.splitlines()[0].split()[:3] == ["task_pk", "star", "visits"]
    table = Table.read(csv.stdout, format="ascii.csv")
    assert len(table) == 6 and len(json.loads(table["spectrum"][0])) == 100  # arrays as JSON text in CSV
    for made in as_json:
        rows = strict(made.stdout)
        assert [row["snr"] for row in rows] == [11.0, None]  # NaN is null in strict JSON
        assert rows[0]["flux"][7] is None and rows[0]["flux"][9] == 4.5 and rows[0]["n_good"] == 2**62 + 3
        assert rows[0]["counts"] == [[2**62, 2**62 + 1, 2**62 + 2], [2**62 + 3, 2**62 + 4, 2**62 + 5]]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the writer does not depend on the database
def test_parquet_and_its_missing_extra(results_db, tmp_path, capsys):
    pyarrow = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "visits.parquet"
    made = main(capsys, "results", "MeasureVisits", "--format", "parquet", "-o", str(path))
    assert made.returncode == 0, made.stderr
    table = pyarrow.read_table(path)
    assert table.num_rows == 6 and table.column_names[-1] == "spectrum"
    assert len(table.column("spectrum")[0]) == 100
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pyarrow.py").write_text("raise ImportError('pyarrow is not installed here')\n")
    missing = astra(
        "results", "MeasureVisits", "--format", "parquet", "-o", str(path), env={"PYTHONPATH": str(blocked)}
    )
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        "astra: --format parquet needs pyarrow, which is not installed: pip install pyarrow"
    ]


@pytest.mark.slow
def test_tasks_without_output_model_export_their_result_keys(results_db, tmp_path, capsys):
    path = tmp_path / "plain.fits"
    made = main(capsys, "results", "PlainResult", "--format", "fits", "-o", str(path))
    assert made.returncode == 0, made.stderr
    table = Table.read(path)
    assert table.colnames == ["task_pk", "i", "version", "completed", "square", "values", "odd"]
    assert list(table["square"]) == [0, 1, 4] and table["values"].shape == (3, 3)
    rows = strict(main(capsys, "results", "PlainResult", "--json").stdout)
    assert [row["odd"] for row in rows] == [None, True, None]  # a key some results lack: null where missing


@pytest.mark.parametrize("kind", ["fits", "parquet"])
@pytest.mark.parametrize("backend", ["sqlite"])  # the writer does not depend on the database
def test_a_column_the_format_cannot_hold_says_how_to_write_the_rest(database_url, tmp_path, kind, capsys):
    """An integer beyond int64: the line said FITS could not hold the table, and nothing of what to do."""
    pytest.importorskip("pyarrow")
    from tests.output_tasks import HugeResult

    assert luigi.build([HugeResult(i=1)], local_scheduler=True, log_level="WARNING")
    made = main(capsys, "results", "HugeResult", "--format", kind, "-o", str(tmp_path / f"huge.{kind}"))
    assert made.returncode == 1 and "cannot hold this table" in made.stderr, made.stderr
    assert made.stderr.strip().endswith("write --format ecsv or json, or leave the column out with --columns")
    small = str(tmp_path / f"s.{kind}")
    kept = main(capsys, "results", "HugeResult", "--format", kind, "--columns", "small", "-o", small)
    assert kept.returncode == 0, kept.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # drawing does not depend on the database
def test_plots(results_db, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    histogram, scatter = tmp_path / "rv.png", tmp_path / "scatter.png"
    made = astra("results", "MeasureVisits", "--plot", "rv", "-o", str(histogram))
    assert made.returncode == 0 and "drew 6 of 6 rows" in made.stderr, made.stderr
    assert histogram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    made = main(capsys, "results", "MeasureVisits", "--plot", "star,rv", "-o", str(scatter))
    assert made.returncode == 0 and scatter.read_bytes()[:4] == b"\x89PNG"
    wrong = main(capsys, "results", "MeasureVisits", "--plot", "spectrum", "-o", str(scatter))
    assert wrong.returncode == 1, wrong.stderr
    assert "--plot needs one number per row, and column 'spectrum' holds arrays of float32" in wrong.stderr


@pytest.mark.parametrize("values", [[1e308], [1.7e308, 0.0], [9e307, -9e307]])
def test_values_matplotlib_cannot_draw_are_one_line(tmp_path, values):
    """Values near the largest float overflow matplotlib's axes; before: its ValueError's traceback."""
    pytest.importorskip("matplotlib")
    from astra import export

    found = Table({"v": values, "w": [1.0] * len(values)})
    for drawn in (["v"], ["v", "w"], ["w", "v"]):
        with pytest.raises(export.ExportError, match=r"^--plot cannot draw values as large as .*\(matplotlib: "):
            export.plot(found, drawn, str(tmp_path / "p.png"), "Big")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.slow
def test_usage_errors_are_one_line(results_db, tmp_path, capsys):
    cases = [
        (["MeasureVisits", "--format", "fits"], 2, "--format fits writes a file: give -o FILE"),
        (["MeasureVisits", "--columns", "rv,colour"], 1, "no column 'colour'"),
        (["MeasureVisits", "--status", "failed"], 2, "only done tasks have results"),
        (["Nothing"], 1, "no task is named 'Nothing'"),
        (["MeasureVisits", "--where", "star=99"], 1, "no done MeasureVisits task has results that match"),
        (["MeasureVisits", "--where", "colour=red"], 1, "no tasks match: no task has a parameter 'colour'"),
        (["MeasureVisits", "--columns", "rv,star,rv"], 2, "--columns names 'rv' more than once"),
    ]
    for args, code, message in cases:
        made = main(capsys, "results", *args)
        assert made.returncode == code and message in made.stderr, (args, made.stderr)
        assert len(made.stderr.strip().splitlines()) == 1 and "Traceback" not in made.stderr


@pytest.mark.parametrize("backend", ["sqlite"])  # importing does not depend on the database
def test_results_whose_class_cannot_be_imported(results_db):
    """Without its task class (its module moved), astra shows the JSON results it recorded, and says so; results kept
    in an output table need the model, so an output-model task stops in one line instead of a table without them."""
    from astra.database import Task

    Task.update(task_module="moved_away.tasks").where(Task.task_name.in_(["MeasureVisits", "PlainResult"])).execute()
    rows, plain = astra_many(("results", "MeasureVisits", "--format", "csv"), ("results", "PlainResult", "--json"))
    assert rows.returncode == 1 and rows.stdout == "", rows.stdout
    note, line = rows.stderr.strip().splitlines()
    assert note.startswith("note: cannot import module 'moved_away.tasks'")
    assert line.startswith("astra: the done MeasureVisits tasks recorded no JSON result, and an output table is read")
    assert plain.returncode == 0 and plain.stderr.startswith("note: cannot import module 'moved_away.tasks'")
    assert len(json.loads(plain.stdout)) == 3


def _same(got: object, wanted: np.ndarray | None) -> bool:
    """Whether an array read back is ``wanted`` to the bit (NaN, infinities and the sign of zero)."""
    if wanted is None:
        return got is None
    got = np.asarray(got, dtype=wanted.dtype)
    return got.shape == wanted.shape and got.tobytes() == wanted.tobytes()


@pytest.mark.slow
def test_arrays_of_different_lengths_keep_every_value(database_url, tmp_path, capsys):
    """Spectra of different lengths become FITS variable-length arrays, Parquet lists and ECSV arrays, keeping NaN,
    infinities and -0.0 (they were JSON text, where NaN became null); CSV and JSON still write JSON text."""
    pyarrow = pytest.importorskip("pyarrow.parquet")
    if is_postgres():
        output_tables.create([Ragged])
    forget_cached()
    stars = range(5)
    assert luigi.build([RaggedFit(star=s) for s in stars], local_scheduler=True, log_level="WARNING")
    made = {fmt: tmp_path / f"ragged.{fmt}" for fmt in ("fits", "parquet", "ecsv")}
    for fmt, path in made.items():
        written = main(capsys, "results", "RaggedFit", "--format", fmt, "-o", str(path))
        assert written.returncode == 0, written.stderr

    fits = Table.read(made["fits"])
    parquet = pyarrow.read_table(made["parquet"]).to_pydict()
    ecsv = Table.read(made["ecsv"], format="ascii.ecsv")
    assert sorted(fits["star"]) == sorted(parquet["star"]) == sorted(ecsv["star"]) == list(stars)
    for i, star in enumerate(fits["star"]):  # a star without a spectrum: an empty array in FITS, which has no null
        flux = ragged_flux(int(star))
        assert _same(fits["flux"][i], flux if flux is not None else np.zeros(0, dtype=np.float32)), star
        assert _same(fits["counts"][i], np.arange(star, dtype=np.int64) - 2**40), star
    for i, star in enumerate(parquet["star"]):
        assert _same(parquet["flux"][i], ragged_flux(star)), star
        assert _same(parquet["counts"][i], np.arange(star, dtype=np.int64) - 2**40), star
    for i, star in enumerate(ecsv["star"]):
        missing = np.ma.is_masked(ecsv["flux"][i]) or (hasattr(ecsv["flux"], "mask") and ecsv["flux"].mask[i])
        assert _same(None if missing else ecsv["flux"][i], ragged_flux(int(star))), star

    rows = strict(main(capsys, "results", "RaggedFit", "--json").stdout)  # strict JSON: NaN and infinities are null
    by_star = {row["star"]: row for row in rows}
    assert by_star[0]["flux"] is None and by_star[1]["flux"] == [None, 0.0, None]
    assert by_star[2]["counts"] == [-(2**40), 1 - 2**40]
    csv = Table.read(main(capsys, "results", "RaggedFit", "--format", "csv").stdout, format="ascii.csv")
    by_star = {row["star"]: row for row in csv}
    assert np.ma.is_masked(by_star[0]["flux"]) and by_star[0]["counts"] == "[]"  # missing, and empty
    assert by_star[2]["flux"] == "[null, -0.0, 2.25, null]"
    shown = main(capsys, "results", "RaggedFit").stdout
    assert "[ nan -0. 2.25 -inf]" in " ".join(shown.split())
    assert [line.split()[3] for line in shown.splitlines()[2:4]] == ["--", "[nan"]  # star 0 has no flux (no version)


def _strict(wanted: np.ndarray | None) -> str:
    """``wanted`` as strict JSON writes it (NaN and infinities null), -0.0 and ints as they are."""
    if wanted is None:
        return "null"
    text = json.dumps(wanted.tolist())
    return text.replace("-Infinity", "null").replace("Infinity", "null").replace("NaN", "null")


def _back(value: object, wanted: np.ndarray | None) -> np.ndarray | None:
    """An array read back (lists, or JSON text with NaN and infinities) as ``wanted``'s dtype; an empty one takes
    ``wanted``'s shape, which lists of none do not tell."""
    if value is None or np.ma.is_masked(value):
        return None
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    got = np.asarray(value, dtype=wanted.dtype if wanted is not None else None)
    return got.reshape(wanted.shape) if wanted is not None and got.size == wanted.size == 0 else got


@pytest.mark.parametrize("chunk", [1, 1000])
def test_arrays_of_varying_shapes_keep_every_value(database_url, tmp_path, capsys, monkeypatch, chunk):
    """Arrays of two dimensions whose leading length varies (``shape=(None, 3)``), and arrays of one dimension and of
    two from two versions (--all-versions), keep every value, written a task at a time or whole: lists of lists in
    JSON (strict: NaN and infinities null) and Parquet, JSON arrays in ECSV, JSON text with NaN and infinities in
    FITS, JSON text in CSV, numpy's text in the table. They were JSON text everywhere, NaN and infinities null."""
    import pyarrow
    import pyarrow.parquet

    from astra import export, results_table

    if is_postgres():
        output_tables.create([Shaped])

    def build(*stars: int) -> bool:
        forget_cached()
        luigi.task_register.Register.clear_instance_cache()  # new tasks: an instance keeps its identity (version)
        return luigi.build([ShapedFit(star=s) for s in stars], local_scheduler=True, log_level="WARNING")

    assert build(*range(5))
    monkeypatch.setattr(ShapedFit, "version", "2")
    assert build(1, 2)
    luigi.task_register.Register.clear_instance_cache()
    wanted = {(s, "1"): (shaped_lines(s), shaped_counts(s, "1")) for s in range(5)}
    wanted |= {(s, "2"): (shaped_lines(s), shaped_counts(s, "2")) for s in (1, 2)}
    read = {(int(r.star), r.version): r for r in outputs.results(ShapedFit, all_versions=True)}  # astra.results
    assert read.keys() == wanted.keys()
    assert all(
        _same(read[key].lines, lines) and _same(read[key].counts, counts) for key, (lines, counts) in wanted.items()
    )
    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", chunk)
    asked = ("results", "ShapedFit", "--all-versions", "--columns", "star,version,lines,counts")

    rows = {(r["star"], r["version"]): r for r in strict(main(capsys, *asked, "--json").stdout)}
    assert rows.keys() == wanted.keys()
    for key, (lines, counts) in wanted.items():
        assert json.dumps(rows[key]["lines"]) == _strict(lines), key
        assert json.dumps(rows[key]["counts"]) == _strict(counts), key
    csv = main(capsys, *asked, "--format", "csv").stdout
    cells = {(int(r["star"]), r["version"]): r for r in __import__("csv").DictReader(csv.splitlines())}
    assert cells.keys() == wanted.keys()
    for key, (lines, counts) in wanted.items():
        assert (cells[key]["lines"], cells[key]["counts"]) == tuple(
            "" if a is None else _strict(a) for a in (lines, counts)
        ), key
    for fmt in ("csv", "json"):  # streamed a task at a time, the bytes of the whole table
        streamed = main(capsys, *asked, "--format", fmt).stdout
        monkeypatch.setattr(export, "STREAMED", ())
        assert streamed == main(capsys, *asked, "--format", fmt).stdout, fmt
        monkeypatch.setattr(export, "STREAMED", ("csv", "json"))

    made = {fmt: tmp_path / f"shaped.{fmt}" for fmt in ("fits", "ecsv", "parquet")}
    for fmt, path in made.items():
        written = main(capsys, *asked, "--format", fmt, "-o", str(path))
        assert written.returncode == 0, written.stderr
    parquet = pyarrow.parquet.read_table(made["parquet"])
    lists = parquet.schema.field("lines").type  # of lists of doubles
    assert pyarrow.types.is_list(lists) and pyarrow.types.is_list(lists.value_type)
    assert lists.value_type.value_type == pyarrow.float64()
    for fmt, found in (
        ("fits", Table.read(made["fits"])),
        ("ecsv", Table.read(made["ecsv"], format="ascii.ecsv")),
        ("parquet", Table(parquet.to_pydict())),
    ):
        assert len(found) == len(wanted), fmt
        for row in found:
            version = row["version"].decode() if isinstance(row["version"], bytes) else str(row["version"])
            lines, counts = wanted[int(row["star"]), version]
            assert _same(_back(row["lines"], lines), lines), (fmt, row["star"], version)
            assert _same(_back(row["counts"], counts), counts), (fmt, row["star"], version)
    shown = " ".join(main(capsys, *asked).stdout.split())  # on one line, each value as it is
    assert " [[nan inf -inf] [-0.0 4.25 0.3333333333333333]] [[-1099511627776 -1099511627775] [" in shown
    assert " [[nan inf -inf] [3.25 4.25 5.25] [-0.0 7.25 0.3333333333333333]] [-1099511627776 " in shown

    # One version: its counts, of two dimensions, are lists of lists of ints in Parquet.
    assert main(capsys, "results", "ShapedFit", "--format", "parquet", "-o", str(made["parquet"])).returncode == 0
    version2 = pyarrow.parquet.read_table(made["parquet"]).to_pydict()
    assert sorted(zip(version2["star"], version2["counts"])) == [(s, shaped_counts(s, "2").tolist()) for s in (1, 2)]


def test_columns_named_alike_keep_every_value(database_url, capsys):
    """A parameter named `completed` or `task_pk`, fields named `version` and `task_version`: astropy stopped with
    "Duplicate column names" (a traceback), or one value silently replaced another. Fields and parameters keep
    their names; astra's own columns get task_ before them, as often as it takes."""
    if is_postgres():
        output_tables.create([Clash])
    forget_cached()
    assert luigi.build([ClashFit(completed="yes"), ClashResult(completed="dict"), ClashResult(completed="plain")],
                       local_scheduler=True, log_level="WARNING")  # fmt: skip
    (row,) = strict(main(capsys, "results", "ClashFit", "--json").stdout)
    assert list(row) == ["task_pk", "completed", "task_task_pk", "task_task_version", "task_completed", "version",
                         "task_version"]  # fmt: skip
    assert (row["completed"], row["task_task_pk"], row["task_task_version"]) == ("yes", 7, "3")
    assert (row["version"], row["task_version"]) == ("a", "b") and row["task_completed"].startswith("20")
    (model_row,) = outputs.results(ClashFit)  # astra.results
    assert (model_row.completed, model_row.task_task_pk, model_row.task_task_version) == ("yes", "7", "3")
    assert (model_row.version, model_row.task_version) == ("a", "b") and model_row.task_completed is not None

    rows = strict(main(capsys, "results", "ClashResult", "--json").stdout)
    assert sorted((r["completed"], r["task_task_pk"], r["result"]) for r in rows) == [("dict", 7, 1), ("plain", 7, 5)]
    assert all(r["task_completed"] for r in rows)
