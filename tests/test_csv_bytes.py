"""``astra results --format csv`` and ``json`` write the bytes they always wrote: astropy's ascii.csv writer (arrays
as JSON text) and ``json.dumps(records, indent=2)``, now made a column at a time (and numbers by orjson where it is
installed). Each table here is written both ways, by the code and by those references, with and without orjson."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from astropy import units
from astropy.table import Column, MaskedColumn, QTable, Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astra import export

#: Floats where writers differ: non-finite, signed zero, the edges of orjson's range (1e-4, 1e16), the smallest and
#: largest, those needing 17 digits.
SPECIAL_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1e300,
    -1e300,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    1e16,
    9999999999999998.0,
    1e-4,
    9.999999999999999e-05,
    1e-05,
    0.1,
    1 / 3,
    1234567890.0,
    2.0**53,
    0.25024914741516113,
]
SPECIAL_INTS = [0, -1, 1234567890, 2**31, -(2**63), 2**63 - 1]
#: Text the csv module quotes or astropy strips: commas, quotes, spaces and tabs at the ends, line ends, unicode.
SPECIAL_TEXT = ["", " ", "a,b", 'say "hi"', " padded\t", "\tx", "two\nlines", "cr\rhere", "é ∑ 😀", ",", '"', "\\"]

FLOATS = st.floats() | st.sampled_from(SPECIAL_FLOATS)
FLOATS32 = st.floats(width=32) | st.sampled_from([math.nan, math.inf, -0.0, 1e-4, 3.4028234663852886e38])
INTS = st.integers(-(2**63), 2**63 - 1) | st.sampled_from(SPECIAL_INTS)
TEXT = st.text(max_size=8) | st.sampled_from(SPECIAL_TEXT)
NAMES = st.text(min_size=1, max_size=6) | st.sampled_from(["a", "b c", " d ", "e,f", 'g"h', "{i}", "flux"])


@pytest.fixture(params=["orjson", "python"])
def writer(request, monkeypatch):
    """The code with orjson (when installed) and without it."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
    else:
        monkeypatch.setattr(export, "orjson", None)
    return request.param


def astropy_csv(found: Table) -> str:
    """What ``astra results --format csv`` wrote before: astropy's ascii.csv of the table, each array (and each
    value of a column of objects) as the JSON text of its ``_plain`` (today's strict JSON), missing whole: empty."""
    flat = found.copy(copy_data=False)
    for name in found.colnames:
        vectors = found[name]
        if vectors.ndim > 1 or vectors.dtype == object:
            text = [json.dumps(export._plain(row)) for row in np.asarray(vectors)]
            missing = export._missing_rows(vectors)
            flat[name] = MaskedColumn(text, mask=missing) if missing.any() else text
    buffer = io.StringIO()
    flat.write(buffer, format="ascii.csv")
    return buffer.getvalue().rstrip("\n")


def strict_json(found: Table) -> str:
    """What ``astra results --format json`` wrote before: the records, row by row, by ``json.dumps``."""
    rows = []
    for row in found:
        record = {}
        for name in found.colnames:
            value = row[name]
            if np.ma.is_masked(value) and np.ndim(value) == 0:
                value = None
            elif isinstance(value, np.ma.MaskedArray):
                value = None if value.mask.all() else value.filled(np.nan) if value.dtype.kind == "f" else value.data
            record[name] = export._plain(value)
        rows.append(record)
    return json.dumps(rows, indent=2, allow_nan=False)


def check(found: Table) -> None:
    assert outcome(export.render, found, "csv") == outcome(astropy_csv, found)
    assert outcome(export.render, found, "json") == outcome(strict_json, found)


def outcome(write, *arguments) -> str | type:
    """The text written, or the kind of error raised instead (JSON has no complex number, nor a Quantity)."""
    try:
        return write(*arguments)
    except Exception as exc:  # an error, the same either way, is what both write
        return type(exc)


@st.composite
def columns(draw, rows: int) -> Column:
    """A column of ``rows`` values of one of the kinds results hold, masked here and there or not."""
    kinds = ["f8", ">f8", "f4", "f2", "i8", ">i4", "u8", "u1", "b", "U", "vector", "matrix", "ragged"]
    kind = draw(st.sampled_from(kinds))  # big-endian too: orjson reads a numpy array's memory as native
    if kind in ("vector", "matrix"):
        dtype = draw(st.sampled_from(["f8", "f4", ">f4", "i8", ">i8", "u8", "b", "U"]))
        shape = (rows, draw(st.integers(0, 4))) + ((draw(st.integers(0, 3)),) if kind == "matrix" else ())
        values = {
            "f8": FLOATS,
            "f4": FLOATS32,
            ">f4": FLOATS32,
            "i8": INTS,
            ">i8": INTS,
            "u8": st.integers(0, 2**64 - 1),
        }
        values["b"] = st.booleans()
        size = math.prod(shape)
        data = np.array(draw(st.lists(values.get(dtype, TEXT), min_size=size, max_size=size)), dtype=dtype)
        data = data.reshape(shape)
        if draw(st.booleans()):
            return Column(data)
        if draw(st.booleans()):  # astra masks whole arrays; a table of other making may mask some elements
            rows_masked = np.array(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=bool)
            mask = np.broadcast_to(rows_masked.reshape((rows,) + (1,) * (len(shape) - 1)), shape)
        else:
            size = math.prod(shape)
            mask = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool).reshape(shape)
        return MaskedColumn(data, mask=mask)
    if kind == "ragged":  # arrays of different lengths, or none, or JSON values: export.column makes them
        value = st.lists(FLOATS, max_size=3).map(np.array) | st.none() | st.dictionaries(TEXT, INTS, max_size=2)
        return export.column("x", draw(st.lists(value, min_size=rows, max_size=rows)))
    values = {
        "f8": FLOATS,
        ">f8": FLOATS,
        "f4": FLOATS32,
        "f2": st.floats(width=16),
        "i8": INTS,
        ">i4": st.integers(-(2**31), 2**31 - 1),
        "u8": st.integers(0, 2**64 - 1),
        "u1": st.integers(0, 255),
        "b": st.booleans(),
        "U": TEXT,
    }[kind]
    drawn = draw(st.lists(values, min_size=rows, max_size=rows))
    data = np.array(drawn, dtype=kind if kind != "U" else None) if drawn else np.zeros(0, dtype=kind)
    if draw(st.booleans()):
        return Column(data)
    return MaskedColumn(data, mask=draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))


@st.composite
def tables(draw) -> Table:
    rows = draw(st.integers(0, 5))
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique_by=lambda name: name.strip()))
    return Table([draw(columns(rows)) for _ in names], names=names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(found=tables())
def test_csv_and_json_are_the_bytes_astropy_and_json_dumps_write(found):
    for orjson in (export.orjson, None):  # hypothesis runs a test many times: the fixture would run once
        saved, export.orjson = export.orjson, orjson
        try:
            check(found)
        finally:
            export.orjson = saved


@pytest.mark.parametrize("dtype", ["f8", "f4"])
def test_many_floats_in_arrays_and_columns(writer, dtype):
    """Random floats of every magnitude, and the doubles of floats as the database keeps a real[] (float32): the
    digits orjson writes are Python's repr's wherever it is used."""
    rng = np.random.default_rng(21)
    bits = rng.integers(0, 2**64, size=30_000, dtype=np.uint64)
    exponents = rng.integers(1023 - 20, 1023 + 60, size=len(bits), dtype=np.uint64) << np.uint64(52)
    wide = (bits & np.uint64(0x800FFFFFFFFFFFFF) | exponents).view(np.float64)  # 1e-6 to 1e18, mostly in range
    floats = np.concatenate([wide, rng.random(len(bits)), bits.view(np.float64)]).astype(dtype)
    found = Table({"x": floats[:1000], "flux": floats.reshape(-1, 90)[:1000]})
    check(found)
    if writer == "orjson":  # most rows by orjson, some (a float outside its range) by Python
        rows = export._orjson_rows(np.asarray(found["flux"]))
        assert rows is not None and 0 < rows.count(None) < len(rows)


def test_a_results_chunk(writer):
    """What a chunk of ScaleFit rows looks like (bench/scale.py): parameters, five doubles, a real[100]."""
    rng = np.random.default_rng(5)
    found = Table()
    found["task_pk"] = np.arange(2, 402, 2)
    found["release"] = ["dr19"] * 200
    found["path"] = [f"/sdss/dr19/spec-{k:09d}.fits" for k in range(200)]
    found["version"] = export.column("version", [None] * 200)
    for name in ("teff", "logg", "fe_h"):
        found[name] = rng.random(200)
    found["model_flux"] = rng.random((200, 100)).astype(np.float32)
    found["model_flux"][3, 7] = np.nan
    found["model_flux"][4, 9] = 1e-5
    check(found)


def test_special_values(writer):
    """Every special float, integer and text, in columns and in arrays (of floats, float32s, int64s, uint64s), in
    the machine's byte order and big-endian."""
    n = len(SPECIAL_TEXT)
    floats = (SPECIAL_FLOATS * n)[: n * 4]
    found = Table(
        {
            "f": floats[:n],
            "f32": np.array(floats[:n], dtype=np.float32),
            "i": (SPECIAL_INTS * n)[:n],
            "u": np.array([2**64 - 1, 2**63] * (n // 2), dtype=np.uint64),
            "s": SPECIAL_TEXT,
            "flux": np.array(floats).reshape(n, 4),
            "flux32": np.array(floats, dtype=np.float32).reshape(n, 4),
            "counts": np.array((SPECIAL_INTS * n)[: n * 2]).reshape(n, 2),
            "big": np.array([2**64 - 1, 2**63, 1] * (n * 2 // 3), dtype=np.uint64).reshape(n, 2),
            "f>": np.array(floats[:n], dtype=">f8"),
            "flux>": np.array(floats, dtype=">f4").reshape(n, 4),
            "counts>": np.array((SPECIAL_INTS * n)[: n * 2], dtype=">i8").reshape(n, 2),
        }
    )
    check(found)


def test_masked_arrays(writer):
    """Missing whole (astra's), or some elements masked (a table of other making): CSV writes the data under a
    partial mask, JSON null in its place (floats) or the data (integers)."""
    mask = [[True, True], [False, False], [True, False], [False, False]]
    for data in ([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0], [0.5, 1e-5]], [[1, 2], [3, 4], [5, 6], [7, 8]]):
        check(Table([MaskedColumn(data, mask=mask)], names=["flux"]))
        check(Table([MaskedColumn(data, mask=[[m[0]] * 2 for m in mask]), [1, 2, 3, 4]], names=["flux", "k"]))


def test_the_column_alone(writer):
    """A table of one column: the csv module quotes an empty value alone on its line."""
    for column in (["", "a", " "], MaskedColumn([1.5, 2.5], mask=[True, False]), [[1.0, 2.0], [3.0, 4.0]]):
        check(Table([column], names=["only"]))


def test_columns_only_astropy_writes_are_left_to_it(writer):
    """Bytes, dates, complex numbers, a column with a format, a mixin: astropy's writer, as before."""
    found = Table(
        {
            "bytes": np.array([b"a", b" b,c"]),
            "when": np.array(["2026-12-07", "2026-12-08"], dtype="datetime64[D]"),
            "complex": [1 + 2j, 3j],
            "x": [1.0, 2.0],
        }
    )
    found["x"].format = ".3f"
    for name in found.colnames:
        assert export._csv_cells(found[name]) is None
    check(found)
    mixed = QTable({"speed": [1.5, np.nan] * units.km / units.s, "x": [1.0, 2.0]})  # a mixin: astropy's slower writer
    assert export._csv_cells(mixed["speed"]) is None
    check(mixed)


def test_the_plain_columns_are_written_by_the_code(writer):
    """Not by astropy: the columns of results are numbers, text and arrays of numbers."""
    found = Table(
        {
            "f": [1.5],
            "i": [1],
            "b": [True],
            "s": ["a"],
            "v": [[1.0, 2.0]],
            "r": export.column("r", [np.array([1.0])]),
            "m": MaskedColumn([1.0], mask=[True]),
        }
    )
    assert all(export._csv_cells(found[name]) is not None for name in found.colnames)


def test_orjson_writes_floats_as_python_where_it_is_used():
    orjson = pytest.importorskip("orjson")
    assert export._orjson_writes_as_python()
    values = np.array(SPECIAL_FLOATS)
    alike = export._orjson_alike(values)
    written = orjson.dumps(values[alike], option=orjson.OPT_SERIALIZE_NUMPY).decode().strip("[]").split(",")
    assert written == [repr(value) for value in values[alike].tolist()]
    assert not alike[
        [math.isnan(v) or math.isinf(v) or v in (1e16, 1e300, 5e-324, 1e-05) for v in SPECIAL_FLOATS]
    ].any()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_stream_of_chunks_is_the_whole_table(writer, fmt, tmp_path):
    rng = np.random.default_rng(8)
    found = Table({"k": np.arange(30), "s": [f" x,{k}" for k in range(30)], "flux": rng.random((30, 4))})
    chunks = [found[i : i + 7] for i in range(0, 30, 7)]
    path = tmp_path / f"out.{fmt}"
    assert export.stream(chunks, fmt, str(path), lambda: found) == (30, 3)
    reference = astropy_csv(found) if fmt == "csv" else strict_json(found)
    assert path.read_text(encoding="utf-8") == reference + "\n"


def test_a_stream_of_chunks_with_a_line_end_in_a_name(tmp_path):
    """A column named with a line end in it (a key of JSON results can be): its header is written once, whole."""
    found = Table({"a\nb": np.arange(4), "c": np.arange(4.0)})
    path = tmp_path / "out.csv"
    export.stream([found[:2], found[2:]], "csv", str(path), lambda: found)
    assert path.read_text(encoding="utf-8") == astropy_csv(found) + "\n" == '"a\nb",c\n0,0.0\n1,1.0\n2,2.0\n3,3.0\n'
