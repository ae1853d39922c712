"""Results as an astropy Table, for ``astra results``: written as text, CSV, ECSV, strict JSON, FITS or Parquet.

One row per output row (or per task, for a task without an output model, whose JSON result's top-level keys become
the columns). Arrays of one shape become vector columns (FITS ``TFORM`` with a repeat count), 1-D arrays of
different lengths FITS variable-length arrays and Parquet lists; arrays of more dimensions whose shapes differ
(``shape=(None, 3)``) are lists of lists in JSON and Parquet, JSON arrays in ECSV and their JSON text in FITS, every
value kept. Nested JSON values, and arrays of anything but numbers, are written as JSON text where a format has no
place for them.

Each column's unit and description travel with it: FITS ``TUNITn``/``TCOMMn``, the ECSV header, Parquet field
metadata. The table's ``meta`` (the provenance: astra version, query, time, database) becomes FITS header keywords,
ECSV header entries and Parquet schema metadata. Files are written beside their destination and moved into place
once complete, so a failed export never leaves a partial file under the name asked for.
"""

from __future__ import annotations

import csv
import datetime
import errno
import functools
import importlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii as _json_text  # json.dumps of a str
from pathlib import Path
from typing import IO

import numpy as np
from astropy.table import Column, MaskedColumn, Table

try:
    import orjson  # optional (the export extra): numbers as text ~10x faster than Python (see _orjson_rows)
except ImportError:
    orjson = None

FORMATS = ("table", "csv", "ecsv", "json", "fits", "parquet")
#: Formats that are files, never printed to a terminal.
BINARY = ("fits", "parquet")


#: The provenance an export records (FITS header keywords, ECSV header, Parquet schema metadata), and what each says.
PROVENANCE = {
    "ASTRAVER": "astra version that wrote this file",
    "DATE": "when this file was written (UTC)",
    "TASKNAME": "task name (luigi family) of these results",
    "TASKVERS": "task version asked for (* is every version)",
    "QUERY": "astra results arguments that chose the rows",
    "DATABASE": "astra database of the results",
}


class ExportError(ValueError):
    """The table cannot be written as asked (a missing optional package, an unknown column...)."""


def column(name: str, values: Sequence[object]) -> Column:
    """An astropy column from Python values: None is masked, equal-shaped arrays make a vector column."""
    try:
        data = np.array(values)  # numbers, text and same-shaped arrays without a None: one step for a million
    except ValueError:  # arrays of different shapes
        data = None
    if (
        data is not None
        and data.dtype.kind in "biufU"
        and (data.ndim == 1 or data.dtype.kind != "U" or _all_text(values))
    ):
        return Column(data, name=name)
    present = [v for v in values if v is not None]
    mask = [v is None for v in values]
    if present and all(isinstance(v, (np.ndarray, list, tuple)) for v in present):
        try:
            arrays = [np.asarray(v) for v in present]
        except ValueError:
            arrays = []
        alike = arrays and len({a.shape for a in arrays}) == 1 and arrays[0].dtype != object
        if alike and (arrays[0].dtype.kind != "U" or _all_text(present)):
            fill = np.zeros_like(arrays[0])
            data = np.stack([np.asarray(v) if v is not None else fill for v in values])
            return _masked(name, data, mask)
        if arrays and all(a.ndim >= 1 and a.dtype.kind in "iuf" for a in arrays):  # of different shapes
            return _ragged(name, values, np.result_type(*arrays))
        return _masked(name, [json.dumps(_plain(v)) if v is not None else "" for v in values], mask)
    if any(isinstance(v, (dict, list, tuple, np.ndarray)) for v in present):
        return _masked(name, [json.dumps(_plain(v)) if v is not None else "" for v in values], mask)
    if any(isinstance(v, (datetime.datetime, datetime.date)) for v in present):
        values = [v.isoformat() if v is not None else None for v in values]
        present = [v for v in values if v is not None]
    if not present:
        return MaskedColumn(np.zeros(len(values)), name=name, mask=[True] * len(values))
    fill = type(present[0])() if not isinstance(present[0], np.generic) else present[0].dtype.type()
    data = np.array([v if v is not None else fill for v in values])
    return _masked(name, data, mask)


def _all_text(values: Sequence[object]) -> bool:
    """Whether ``values`` (lists, nested) hold text only: numpy makes text of every element of a list that holds
    some, and ``(1, "a")`` would be written ``["1", "a"]``."""
    return all(_all_text(v) if isinstance(v, (list, tuple)) else isinstance(v, str) for v in values)


def _ragged(name: str, values: Sequence[object], dtype: np.dtype) -> Column:
    """A column of arrays of different shapes, each as it is (NaN, infinities, the sign of zero). 1-D ones FITS
    writes as variable-length arrays, Parquet as lists, ECSV as arrays; those of more dimensions (``shape=(None,
    3)``, or arrays of one dimension and of two from two versions) Parquet as lists of lists (:func:`_arrow_lists`),
    ECSV as JSON arrays, FITS as their JSON text (:func:`_unmasked_arrays`). A missing one is masked, over an empty
    array: what FITS, which has no null for variable-length arrays, holds."""
    data = np.empty(len(values), dtype=object)
    ndims = {np.ndim(value) for value in values if value is not None}
    empty = np.zeros((0,) * (ndims.pop() if len(ndims) == 1 else 1), dtype=dtype)
    for i, value in enumerate(values):
        data[i] = empty if value is None else np.asarray(value, dtype=dtype)
    mask = [value is None for value in values]
    return MaskedColumn(data, name=name, mask=mask) if any(mask) else Column(data, name=name)


def _masked(name: str, data: object, mask: list[bool]) -> Column:
    if not any(mask):
        return Column(data, name=name)
    data = np.asarray(data)
    shaped = np.broadcast_to(np.array(mask).reshape((-1,) + (1,) * (data.ndim - 1)), data.shape)
    return MaskedColumn(data, name=name, mask=shaped)


def _nested(column: Column) -> bool:
    """Whether ``column`` holds arrays of different shapes (:func:`_ragged`) not all of one dimension, which FITS
    and Parquet cannot hold as they hold 1-D arrays of different lengths."""
    return column.dtype == object and any(isinstance(a, np.ndarray) and a.ndim != 1 for a in np.asarray(column))


def _loose_json(column: Column) -> Column:
    """``column`` of arrays (:func:`_nested`) as their JSON text, every value kept: NaN, infinities and the sign of
    zero as Python's ``json.dumps`` writes them (``NaN``, ``Infinity``, ``-Infinity``, ``-0.0``; ``json.loads``
    reads them back). A missing array is masked (an empty text)."""
    missing = _missing_rows(column)
    text = ["" if gone else json.dumps(np.asarray(a).tolist()) for a, gone in zip(np.asarray(column), missing)]
    made = MaskedColumn(text, name=column.name, mask=missing) if missing.any() else Column(text, name=column.name)
    made.unit, made.description = column.unit, column.description
    return made


def table(names: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A Table with ``names`` as columns from ``rows`` of values in that order."""
    rows = list(rows)
    return Table([column(name, [row[i] for row in rows]) for i, name in enumerate(names)])


def check_columns(wanted: Sequence[str], names: Sequence[str]) -> None:
    """An ExportError if ``wanted`` names a column that is not among ``names``."""
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ExportError(f"no column {unknown[0]!r}; the columns are: {', '.join(names)}")


def keep(found: Table, columns: Sequence[str]) -> Table:
    """Only ``columns`` of ``found``, in that order."""
    check_columns(columns, found.colnames)
    return found[list(columns)]


def _plain(value: object) -> object:
    """``value`` as strict JSON can hold it: arrays as lists, NaN and infinities as null."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub" or (value.dtype.kind == "f" and np.isfinite(value).all()):
            return value.tolist()  # plain already: not element by element
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def records(found: Table) -> list[dict]:
    """The rows as strict-JSON dicts (masked values and NaN become null)."""
    return [{name: _record_value(row[name]) for name in found.colnames} for row in found]


def _record_value(value: object) -> object:
    """A value of a table's row as :func:`records` holds it."""
    if np.ma.is_masked(value) and np.ndim(value) == 0:
        value = None
    elif isinstance(value, np.ma.MaskedArray):
        if value.mask.all():  # a missing array: null, not an array of nulls (or of zeros) that was never there
            value = None
        else:
            value = value.filled(np.nan) if value.dtype.kind == "f" else value.data
    return _plain(value)


def _flat(found: Table) -> Table:
    """A copy whose vector columns are JSON text, for formats with one value per cell (CSV): a missing array is an
    empty cell, as a missing number is."""
    flat = found.copy(copy_data=False)
    for name in found.colnames:
        vectors = found[name]
        if vectors.ndim > 1 or vectors.dtype == object:
            data = np.asarray(vectors)
            text = _json_rows(data) if data.ndim > 1 else [json.dumps(_plain(v)) for v in data]
            missing = _missing_rows(vectors)
            flat[name] = MaskedColumn(text, mask=missing) if missing.any() else text
    return flat


def _shown(found: Table) -> Table:
    """A copy whose masked columns of arrays of different lengths are text, for the text table: a missing array
    shows as ``--``, as a missing number does (astropy shows the empty array under the mask)."""
    shown = found.copy(copy_data=False)
    for name in found.colnames:
        arrays = found[name]
        if _nested(arrays):  # on one line, each value as Python writes it (numpy's str rounds to 8 digits)
            missing = _missing_rows(arrays)
            text = [_one_line(a) for a in np.asarray(arrays)]
            shown[name] = MaskedColumn(text, mask=missing) if missing.any() else text
        elif arrays.dtype == object and isinstance(arrays, MaskedColumn):
            shown[name] = MaskedColumn([str(a) for a in np.asarray(arrays)], mask=_missing_rows(arrays))
    return shown


def _one_line(array: np.ndarray) -> str:
    """An array on one line, as numpy writes it but each value as Python does (numpy rounds, or pads to align):
    ``[[nan inf -inf] [-0.0 1.5 0.3333333333333333]]``."""
    if np.ndim(array) == 0:
        return repr(array.item()) if isinstance(array, np.generic) else repr(array)
    return "[" + " ".join(_one_line(item) for item in array) + "]"


def _missing_rows(vectors: Column) -> np.ndarray:
    """Which rows of a vector column are missing (masked whole)."""
    if not isinstance(vectors, MaskedColumn) or not len(vectors):
        return np.zeros(len(vectors), dtype=bool)
    return np.asarray(vectors.mask).reshape(len(vectors), -1).all(axis=1)


def _json_rows(data: np.ndarray) -> list[str]:
    """Each row of ``data`` as the JSON text of ``_plain``: by orjson where it writes that text (:func:`_orjson_rows`),
    a row of finite numbers straight from ``tolist`` (the JSON encoder in C), the others through ``_plain`` (which
    writes NaN and infinities as null)."""
    fast = _orjson_rows(data) if data.ndim > 1 else None
    if (fast is not None and None not in fast) or not len(data):
        return fast or []
    finite = np.isfinite(data).reshape(len(data), -1).all(axis=1) if data.dtype.kind == "f" else None
    return [
        fast[i]
        if fast is not None and fast[i] is not None
        else json.dumps(row.tolist() if finite is None or finite[i] else _plain(row))
        for i, row in enumerate(data)
    ]


def _orjson_rows(
    data: np.ndarray, comma: str = ", ", opening: str = "[", closing: str = "]"
) -> list[str | None] | None:
    """Each row of an array of numbers as ``json.dumps`` writes its ``tolist()`` (an element, for a 1-D array), by
    orjson: ~10x faster than Python's float repr, which takes ~5 s for the 10^7 numbers of 100,000 rows of
    100-element arrays. Numbers are apart by ``comma``, and ``opening`` and ``closing`` are the brackets of each
    level (:func:`_indented` lays a row out otherwise). None for a row holding a float orjson writes otherwise
    (:func:`_orjson_alike`), or for every row where orjson is not installed (it is optional) or the array is not
    one of numbers."""
    kind = data.dtype.kind
    if orjson is None or kind not in "biuf" or data.dtype.itemsize > 8 or 0 in data.shape[1:] or not len(data):
        return None
    if not _orjson_writes_as_python():
        return None
    # Native, contiguous, as tolist() gives them: a float32 is written as the double it is.
    values = np.ascontiguousarray(data, dtype={"b": np.bool_, "i": np.int64, "u": np.uint64, "f": np.float64}[kind])
    alike = None
    if kind == "f":
        alike = _orjson_alike(values).reshape(len(values), -1).all(axis=1)
        if alike.all():
            alike = None
        else:
            values = values[alike]
    # [[1.0,2.0],[3.0,4.0]]: rows apart where ], [ is (or ]], [[, one level deeper), json.dumps's comma and space.
    depth = data.ndim - 1
    try:
        text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode("ascii")[depth + 1 : -(depth + 1)]
    except orjson.JSONEncodeError:  # an array another release would not take: Python writes it
        return None
    pieces = text.replace(",", comma).split("]" * depth + comma + "[" * depth) if len(values) else []
    if depth:
        pieces = [opening * depth + piece + closing * depth for piece in pieces]
    if alike is None:
        return pieces
    rows: list[str | None] = [None] * len(data)
    for i, piece in zip(np.flatnonzero(alike).tolist(), pieces):
        rows[i] = piece
    return rows


def _orjson_alike(values: np.ndarray) -> np.ndarray:
    """Which floats orjson writes as Python's repr does: zero and magnitudes from 1e-4 to 1e16, where both write
    the shortest digits that read back (61 million random ones compared) without an exponent. Outside, Python writes
    1e+16 and 1e-05, orjson 1e16 and 0.00001; NaN and the infinities orjson writes as null."""
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        return ((magnitude >= 1e-4) & (magnitude < 1e16)) | (values == 0)


#: Floats on the edges of :func:`_orjson_alike` and others, which orjson must write as Python does to be used.
_ORJSON_CHECKS = [0.0, -0.0, 1e-4, 0.00011, 0.1, 1 / 3, 1.0, 100.0, 2.0**53, 9999999999999998.0, 1e15, -2.5e-4]


@functools.cache
def _orjson_writes_as_python() -> bool:
    """Whether the orjson installed writes :data:`_ORJSON_CHECKS` as ``json.dumps`` does (another release might
    not)."""
    values = np.array(_ORJSON_CHECKS)
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode("ascii") == json.dumps(
        _ORJSON_CHECKS, separators=(",", ":")
    )


def render(found: Table, fmt: str) -> str:
    """The table as text: ``table`` for people, ``csv`` or strict ``json``."""
    if fmt == "table":
        return "\n".join(_shown(found).pformat(max_lines=-1, max_width=-1))
    if fmt == "csv":
        return _csv(found).rstrip("\n")
    if fmt == "json":
        return "[\n" + _json_records(found) + "\n]" if len(found) else "[]"
    if fmt == "ecsv":
        import io

        buffer = io.StringIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a unit astropy does not know is written as given
            found.write(buffer, format="ascii.ecsv")
        return buffer.getvalue().rstrip("\n")
    raise ExportError(f"{fmt} is not a text format")


#: How astropy's ascii.csv writer (its fast writer, through the csv module) quotes a field: where needed, a quote
#: in it doubled.
_CSV_DIALECT = {
    "delimiter": ",",
    "quotechar": '"',
    "doublequote": True,
    "escapechar": None,
    "quoting": csv.QUOTE_MINIMAL,
    "lineterminator": os.linesep,
}

#: What can make the csv module quote a field (the delimiter, the quote, line ends, in any Python's rules): a field
#: without any is written as it is.
_CSV_SPECIAL = re.compile(r'[,"\r\n]')


def _csv(found: Table) -> str:
    """The table as astropy's ascii.csv writes :func:`_flat` of it, the same bytes, made a column at a time and
    joined: astropy formats, strips and quotes each value in turn (~5 s for 100,000 rows of 100-element arrays,
    5 MB/s of quoting in the csv module alone). A table with a column only astropy knows how to write
    (:func:`_csv_cells`) is written by astropy; tests/test_csv_bytes.py compares both on many tables."""
    columns = [_csv_cells(found[name]) for name in found.colnames]
    if not columns or any(cells is None for cells in columns):
        import io

        buffer = io.StringIO()
        _flat(found).write(buffer, format="ascii.csv")
        return buffer.getvalue()
    header = _csv_line([name.strip() for name in found.colnames])[: -len(os.linesep)]
    if len(columns) == 1:  # the csv module quotes a line that would be empty: a row of one empty field
        rows = ['""' if cell == "" else cell for cell in columns[0]]
    else:
        rows = list(map(",".join, zip(*columns)))
    return os.linesep.join([header, *rows, ""])  # one join: the text of 1,000 rows of arrays is 2 MB


def _csv_cells(column: Column) -> list[str] | None:
    """The column's cells as astropy's ascii.csv writes them (:func:`_flat` first): numbers as ``repr``/``str``
    of ``tolist()``, text stripped of spaces and tabs, quoted where the csv module would, a masked value empty.
    None for what astropy writes otherwise: a mixin column, one with a format, bytes, dates, complex numbers."""
    if not isinstance(column, Column) or column.format is not None:
        return None
    kind = column.dtype.kind
    if column.ndim > 1 or column.dtype == object:
        data = np.asarray(column)
        texts = _json_rows(data) if data.ndim > 1 else [json.dumps(_plain(v)) for v in data]
        missing = _missing_rows(column)
        if column.ndim > 1 and kind in "biuf":  # JSON of numbers: a comma, or nothing to quote
            cells = [f'"{text}"' if "," in text else text for text in texts]
        else:
            cells = [_csv_field(text.strip(" \t")) for text in texts]
        return [cell if not gone else "" for cell, gone in zip(cells, missing)] if missing.any() else cells
    values = column.tolist()  # None where masked
    if kind == "f" and column.dtype.itemsize <= 8:  # the csv module writes a float as its repr
        fast = _orjson_rows(np.asarray(column)) or [None] * len(values)
        return ["" if value is None else text or repr(value) for value, text in zip(values, fast)]
    if kind in "biu":
        return ["" if value is None else str(value) for value in values]
    if kind == "U":
        return ["" if value is None else _csv_field(value.strip(" \t")) for value in values]
    return None


def _csv_field(text: str) -> str:
    """``text`` as the csv module writes it in a line of several fields (a field alone, empty, it quotes)."""
    return _csv_line([text])[: -len(os.linesep)] if _CSV_SPECIAL.search(text) else text


def _csv_line(fields: list[str]) -> str:
    """``fields`` as the csv module writes them for astropy's ascii.csv: a line, with its end."""
    import io

    buffer = io.StringIO()
    csv.writer(buffer, **_CSV_DIALECT).writerow(fields)
    return buffer.getvalue()


#: Formats written a chunk of rows at a time (:func:`stream`): memory does not grow with the rows.
STREAMED = ("csv", "json")


class _UnlikeChunkError(Exception):
    """A chunk whose columns would be written otherwise in one table with the chunks before it."""


def _kind(column: Column) -> tuple | None:
    """What decides how CSV and JSON write a column's values (None: no value, any kind writes the same).

    Arrays of numbers are written as the lists they are, whether a chunk holds them as a vector column (arrays of
    one shape) or as arrays of different shapes (:func:`_ragged`): what tells is whether they are ints or floats
    (a table of both holds floats)."""
    if isinstance(column, MaskedColumn) and column.ndim == 1 and bool(np.all(column.mask)):
        return None
    if column.ndim > 1 and column.dtype.kind in "iuf":
        return ("arrays", column.dtype.kind)
    if column.ndim > 1:  # a vector column of text or booleans: what writes a row is its shape
        return ("vector", column.dtype.kind, column.shape[1:])
    if column.dtype == object:
        kinds = {a.dtype.kind if isinstance(a, np.ndarray) else "O" for a in np.asarray(column)}
        if len(kinds) == 1 and kinds <= set("iuf"):
            return ("arrays", kinds.pop())
    return ("scalar", column.dtype.kind)


def stream(tables: Iterable[Table], fmt: str, path: str | None, whole: Callable[[], Table]) -> tuple[int, int]:
    """Write ``tables`` (chunks of one table's rows, with the same columns) as CSV or JSON to ``path`` (None:
    stdout), one chunk at a time, in the bytes :func:`render` gives for the whole table; the number of rows and
    of columns written.

    A chunk's columns are made from its rows alone (:func:`column`), and one table's could differ: arrays of one
    shape in a chunk but not in the whole, a column of ints in one chunk and of floats in another. When a chunk
    would be written otherwise than in one table, what was written is dropped and ``whole()`` (the table) is
    written instead. Stdout, or a destination written in place, gets the text once complete (kept in a temporary
    file meanwhile).
    """
    if fmt not in STREAMED:
        raise ExportError(f"{fmt} is not written in chunks")
    with _text_destination(path) as file:
        try:
            written = _stream(tables, fmt, file)
        except _UnlikeChunkError:
            file.seek(0)
            file.truncate()
            found = whole()
            file.write(render(found, fmt) + "\n")
            written = len(found), len(found.colnames)
    return written


def _stream(tables: Iterable[Table], fmt: str, file) -> tuple[int, int]:
    names: list[str] | None = None
    kinds: dict[str, tuple | None] = {}
    rows = 0
    for found in tables:
        if not len(found):
            continue
        if names is None:
            names = found.colnames
            file.write("[\n" if fmt == "json" else "")
        elif found.colnames != names:
            raise _UnlikeChunkError()
        for name in names:
            kind, known = _kind(found[name]), kinds.get(name)
            if kind is None:  # no value here: written as nothing, whatever the column holds elsewhere
                kinds.setdefault(name, None)
            elif known is None:
                kinds[name] = kind
            elif kind != known:
                raise _UnlikeChunkError()
        if rows:  # what comes between two rows (a chunk's text, as the whole table's, ends without a line end)
            file.write(",\n" if fmt == "json" else "\n")
        if fmt == "json":
            file.write(_json_records(found))
        else:
            # The header once (a name with a line end in it is quoted: its line is longer), and render()'s text:
            # without the line ends at the end. Written as a slice, not copied again and again (220 MB of CSV).
            text = _csv(found)
            start = len(_csv_line([name.strip() for name in names])) if rows else 0
            end = len(text)
            while end > start and text[end - 1] == "\n":
                end -= 1
            file.write(text[start:end])
        rows += len(found)
    if names is not None:
        file.write("\n]\n" if fmt == "json" else "\n")
    return rows, len(names or ())


def _indented(value: object, level: int = 1) -> str:
    """``json.dumps(value, indent=2, allow_nan=False)`` as it reads ``level`` levels deep in an enclosing value.

    The same text, faster: json.dumps with an indent encodes element by element in Python, so a list of plain
    numbers (an array's row) is encoded by the C encoder and laid out one element a line here.
    """
    pad = "\n" + "  " * level
    if isinstance(value, dict) and value:
        items = (f"{json.dumps(str(key))}: {_indented(item, level + 1)}" for key, item in value.items())
        return "{" + pad + "  " + ("," + pad + "  ").join(items) + pad + "}"
    if isinstance(value, list) and value and all(type(item) in _NUMBERS for item in value):
        elements = json.dumps(value, allow_nan=False)[1:-1].split(", ")
        return "[" + pad + "  " + ("," + pad + "  ").join(elements) + pad + "]"
    if not isinstance(value, (dict, list, tuple)):  # one line: the indented encoder would work it in Python
        return json.dumps(value, allow_nan=False)
    return json.dumps(value, indent=2, allow_nan=False).replace("\n", pad)


def _json_records(found: Table) -> str:
    """The rows of ``found`` (one or more) as ``json.dumps(records(found), indent=2, allow_nan=False)`` writes them
    inside its list, the same bytes, made a column at a time and joined (:func:`_json_cells`): row by row, reading
    each value from an astropy Row and encoding an array's numbers one at a time, took ~15 s for 100,000 rows of
    100-element arrays."""
    if not found.colnames:
        return ",\n".join("  {}" for _ in range(len(found)))
    keys = [json.dumps(str(name)).replace("{", "{{").replace("}", "}}") for name in found.colnames]
    record = "  {{\n    " + ",\n    ".join(f"{key}: {{}}" for key in keys) + "\n  }}"
    return ",\n".join(map(record.format, *(_json_cells(found[name]) for name in found.colnames)))


def _json_cells(column: Column) -> list[str]:
    """The column's values as :func:`_indented` writes them in a record (two levels deep) of :func:`records`:
    numbers, text and arrays of numbers a column at a time, anything else (a mixin column, objects, arrays of
    arrays) value by value as records() does."""
    if not isinstance(column, Column):
        return [_indented(_record_value(column[i]), 2) for i in range(len(column))]
    kind = column.dtype.kind
    masked = np.ma.getmaskarray(column) if isinstance(column, MaskedColumn) and len(column) else None
    missing = None if masked is None else masked.reshape(len(column), -1).all(axis=1)
    if column.ndim == 1 and (kind == "U" or (kind in "biuf" and column.dtype.itemsize <= 8)):
        values = column.tolist()  # None where masked
        if kind == "f":
            fast = _orjson_rows(np.asarray(column)) or [None] * len(values)
            return [
                "null" if value is None or not math.isfinite(value) else text or repr(value)
                for value, text in zip(values, fast)
            ]
        if kind == "U":
            return ["null" if value is None else _json_text(value) for value in values]
        if kind == "b":
            return ["null" if value is None else "true" if value else "false" for value in values]
        return ["null" if value is None else str(value) for value in values]
    if column.ndim == 2 and column.shape[1] and (missing is None or np.array_equal(masked.any(axis=1), missing)):
        # Arrays whole or missing whole: records() holds a row's array as it is, or null.
        data = np.asarray(column)
        fast = _orjson_rows(data, ",\n      ", "[\n      ", "\n    ]") or [None] * len(data)  # an element a line
        cells = [text if text is not None else _indented(_plain(data[i]), 2) for i, text in enumerate(fast)]
        return cells if missing is None else ["null" if gone else cell for cell, gone in zip(cells, missing)]
    return [_indented(_record_value(column[i]), 2) for i in range(len(column))]


#: What JSON writes without a comma or a space inside it.
_NUMBERS = (int, float, bool, type(None))


@contextmanager
def _text_destination(path: str | None) -> Iterator:
    """A text file to write, which can seek back (:func:`stream` may start over): beside ``path``, moved into place
    once complete (see :func:`_replacing`). Stdout (None), or a destination written in place, gets the text once
    complete, from a temporary file."""
    text = {"encoding": "utf-8", "newline": ""}
    if path is not None and not _in_place(path):
        with _replacing(path, "w+", **text) as file:
            yield file
        return
    with tempfile.TemporaryFile("w+", **text) as file:
        yield file
        file.seek(0)
        if path is None:
            from astra.cli.formats import out  # not sys.stdout.write: see there

            while piece := file.read(1 << 20):
                out(piece)
        else:
            with _replacing(path, "w", **text) as destination:
                while piece := file.read(1 << 20):
                    destination.write(piece)


def _needs(package: str, what: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError:
        raise ExportError(f"{what} needs {package}, which is not installed: pip install {package}") from None


def annotate(found: Table, name: str, unit: str | None = None, description: str | None = None) -> None:
    """Give column ``name`` its unit and description. The unit is kept as the model writes it, whatever astropy
    makes of it: its FITS writer would drop a function unit such as ``dex`` or ``mag``.
    """
    column = found[name]
    if unit:
        from astropy import units

        column.unit = units.UnrecognizedUnit(unit)  # its text, as written; readers parse it
    if description:
        column.description = description


def _ascii(text: str) -> str:
    """``text`` as a FITS header can hold it: printable ASCII, anything else escaped (``\\u00e9``)."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


def _unit(column: Column) -> str | None:
    return None if column.unit is None else column.unit.to_string()


def _fits_hdu(found: Table, meta: dict | None = None):
    """The table as a FITS binary table HDU: TUNITn, TCOMMn, and ``meta`` (default: ``found.meta``) as header
    keywords."""
    from astropy.io import fits

    for name in found.colnames:
        column = found[name]
        if column.dtype.kind == "U" and not _ascii_only(column):
            for i, value in enumerate(column):
                if not np.ma.is_masked(value) and not str(value).isascii():
                    raise ExportError(
                        f"FITS holds ASCII text only, and column {name!r} holds {str(value)!r} (row {i + 1}); "
                        "write --format parquet or ecsv (UTF-8), or leave the column out with --columns"
                    )
    plain = Table([_unmasked_arrays(found[name]) for name in found.colnames], meta={}, copy=False)
    nulls = {name: null for name in plain.colnames if (null := _free_null(plain[name])) is not None}
    for name, null in nulls.items():  # written filled, with the null set below: astropy would write its own
        plain.replace_column(name, plain[name].filled(null))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a unit outside the FITS standard is written as given
            hdu = fits.table_to_hdu(plain)
        for name, null in nulls.items():
            hdu.columns[name].null = null
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"FITS cannot hold this table: {exc}; write --format ecsv or json, or leave the column out with --columns"
        ) from None
    for name in found.colnames:
        _null_logicals(hdu, found[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a comment cut short beside a long description
        for i, name in enumerate(found.colnames, start=1):
            description = found[name].description
            if description:
                hdu.header.set(f"TCOMM{i}", _ascii(description), after=f"TFORM{i}")
        for key, value in (found.meta if meta is None else meta).items():
            value = _ascii(value) if isinstance(value, str) else value
            comment = PROVENANCE.get(key, "")
            # A card holds 80 characters: a long value goes on in CONTINUE cards, without its comment.
            hdu.header[key] = (value, comment if len(str(value)) + len(comment) < 56 else "")
    return hdu


def _null_logicals(hdu, column: Column) -> None:
    """Write the missing values of a boolean ``column`` as FITS's null for a logical, a zero byte: astropy writes
    its fill value, True. Its table keeps the bytes of a logical field once they are no longer converted from
    numpy's booleans (a test checks the bytes, for a later astropy that does not)."""
    if column.dtype.kind != "b" or not isinstance(column, MaskedColumn) or not np.any(column.mask):
        return
    converted = getattr(hdu.data, "_converted", None)
    if converted is None:
        return
    hdu.data.field(column.name)  # the bytes 'T' and 'F', made from the booleans
    converted.pop(column.name, None)
    hdu.data.view(np.ndarray)[column.name][np.ma.getmaskarray(column)] = 0


def _unmasked_arrays(column: Column) -> Column:
    """``column``, but a masked column of arrays of different lengths (:func:`_ragged`) as the empty arrays under
    its mask: FITS has no null for them, and astropy would fill them with text. Arrays of more dimensions, whose
    leading length varies, no FITS column holds: their JSON text (:func:`_loose_json`), every value kept."""
    if _nested(column):
        return _loose_json(column)
    if column.dtype != object or not isinstance(column, MaskedColumn):
        return column
    return Column(np.asarray(column), name=column.name, unit=column.unit, description=column.description)


def _free_null(column: Column) -> int | None:
    """The FITS null (``TNULL``) of a masked integer ``column``: a value none of its values has. astropy writes its
    default, 999999 (also for a vector column, whatever its fill value), and a reader takes every 999999 of the
    column for a missing value. The default is kept where it is free, else the smallest integer that is; None for a
    column that needs no null."""
    if column.dtype.kind != "i" or not isinstance(column, MaskedColumn) or not np.ma.getmaskarray(column).any():
        return None
    present = np.unique(np.asarray(column)[~np.ma.getmaskarray(column)])
    null = int(np.ma.default_fill_value(column.dtype))
    if np.isin(null, present):
        null = int(np.iinfo(column.dtype).min)
        for value in present.tolist():  # sorted: the first gap from the smallest integer up
            if value != null:
                break
            null += 1
    return null


def _ascii_only(column: Column) -> bool:
    """Whether every value of a text column is ASCII, asked of all of them at once (numpy's ASCII encoder)."""
    data = column.filled("") if isinstance(column, MaskedColumn) else column
    try:
        np.asarray(data).astype(np.bytes_)
    except UnicodeEncodeError:
        return False
    return True


def _arrow(found: Table):
    """The table as a pyarrow Table: masked values are nulls, arrays (nested) fixed-size lists, and each field
    carries its description and unit as field metadata, the table's ``meta`` as schema metadata.
    """
    import pyarrow

    try:
        return _arrow_table(found)
    except (pyarrow.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise ExportError(
            f"Parquet cannot hold this table: {exc}; write --format ecsv or json, or leave the column out with "
            "--columns"
        ) from None


def _arrow_table(found: Table):
    import pyarrow

    arrays, fields = [], []
    for name in found.colnames:
        column = found[name]
        data = np.asarray(column)
        mask = None
        if isinstance(column, MaskedColumn) and len(column):
            rows = np.ma.getmaskarray(column).reshape(len(column), -1).all(axis=1)  # column() masks whole rows
            mask = rows if rows.any() else None
        if _nested(column):
            array = _arrow_lists(data, mask)
        elif data.ndim > 1 and 0 in data.shape[1:]:  # no fixed-size list has length 0: lists (of lists), empty
            kind = pyarrow.from_numpy_dtype(data.dtype)
            for _ in data.shape[1:]:
                kind = pyarrow.list_(kind)
            array = pyarrow.array(data.tolist(), type=kind, mask=mask)
        elif data.ndim > 1:
            values = pyarrow.array(data.ravel())
            for size in reversed(data.shape[2:]):
                values = pyarrow.FixedSizeListArray.from_arrays(values, size)
            array = pyarrow.FixedSizeListArray.from_arrays(values, data.shape[1], mask=_arrow_mask(mask))
        else:
            array = pyarrow.array(data.tolist() if data.dtype.kind == "U" else data, mask=mask)
        metadata = {
            key: value for key, value in (("description", column.description), ("unit", _unit(column))) if value
        }
        arrays.append(array)
        fields.append(pyarrow.field(name, array.type, metadata=metadata or None))
    metadata = {key: str(value) for key, value in found.meta.items()}
    return pyarrow.Table.from_arrays(arrays, schema=pyarrow.schema(fields, metadata=metadata or None))


def _arrow_lists(data: np.ndarray, mask: np.ndarray | None):
    """Arrays of different shapes (:func:`_nested`) as pyarrow lists of lists, one level a dimension, every value
    as it is; arrays of different dimensions, which no one list type holds, as their JSON text (:func:`_loose_json`:
    NaN and the infinities kept)."""
    import pyarrow

    ndims = {a.ndim for a in data}
    if len(ndims) > 1:
        return pyarrow.array(np.asarray(_loose_json(MaskedColumn(data, mask=mask))).tolist(), mask=mask)
    (ndim,) = ndims
    values = pyarrow.array(np.concatenate([a.ravel() for a in data]) if len(data) else np.zeros(0, data.dtype))
    for axis in reversed(range(ndim)):  # each array holds prod(shape[:axis]) lists of shape[axis] at this level
        lengths = np.concatenate([np.full(math.prod(a.shape[:axis]), a.shape[axis], np.int64) for a in data] or [[]])
        offsets = pyarrow.array(np.concatenate([[0], np.cumsum(lengths)]), type=pyarrow.int32())  # or it raises
        values = pyarrow.ListArray.from_arrays(offsets, values, mask=_arrow_mask(mask) if axis == 0 else None)
    return values


def _arrow_mask(mask: np.ndarray | None):
    import pyarrow

    return None if mask is None else pyarrow.array(mask)


@contextmanager
def _replacing(path: str, mode: str = "wb", **options: str) -> Iterator[IO]:
    """A file open to write in place of ``path``: a temporary file beside it, which becomes ``path`` (or the file a
    symlink at ``path`` names, the link kept) only once the writing is complete.

    What is written in place (:func:`_in_place`) is opened as it is: this process's stdout (``-o /dev/stdout``, a
    file the shell opened, written at its offset), a device, a pipe. An OSError (a missing folder, a full disk) is
    an ExportError naming the file.
    """
    folder = Path(path).parent
    temporary = None
    try:
        if _is_stdout(path):
            sys.stdout.flush()
            with os.fdopen(os.dup(sys.stdout.fileno()), mode, **options) as file:
                yield file
            return
        if _in_place(path):
            with open(path, mode, **options) as file:
                yield file
            return
        if not folder.is_dir():
            raise ExportError(f"cannot write {path}: {_missing_folder(folder)}")
        target = Path(os.path.realpath(path))
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        with os.fdopen(handle, mode, **options) as file:
            yield file
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BrokenPipeError:  # the reader of the pipe went away (`| head`): no failed write, the end `| head` expects
        raise
    except OSError as exc:
        # Asked before the partial file goes: once it is gone, a disk that was full is not any more.
        raise ExportError(f"cannot write {path}: {_reason(exc, folder)}") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def _is_stdout(path: str) -> bool:
    """Whether ``path`` is this process's stdout (``/dev/stdout``, ``/proc/self/fd/1``, or the file it was sent to)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file; a stdout without a descriptor (captured)
        return False


def _in_place(path: str) -> bool:
    """Whether ``path`` is written where it is, rather than replaced by a new file: a device, a pipe, this
    process's stdout, or a link to a descriptor (``/dev/stdout`` is ``/proc/self/fd/1``, which may name a file the
    shell opened: replaced, the shell's file would stay empty and /dev/stdout become a file)."""
    if _is_stdout(path):
        return True
    current = os.path.abspath(path)
    for _ in range(40):  # the links' own chain: resolved whole, /proc/self/fd/1 would name the shell's file
        if current.startswith(("/dev/", "/proc/")):
            return True
        if not os.path.islink(current):
            break
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # not there yet (or a broken link): made
        return False


def _reason(error: BaseException, folder: Path) -> str:
    """What the system said (e.g. "No space left on device"), also under a library's own OSError: astropy's FITS
    writer raises its own, from numpy's, neither of which keeps the system's error number.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    try:
        if os.statvfs(folder).f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    return str(error)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_folder(folder: Path) -> str:
    """Why ``folder`` cannot hold a new file, in words: it is missing, or it is a file."""
    if folder.exists():
        return f"{folder} is a file, not a folder"
    return f"the folder {folder} does not exist (create it first)"


def check_writable(path: str) -> None:
    """Stop early, before a long query, when ``path`` cannot be written (its folder is missing)."""
    target = Path(path)
    if not target.exists() and not target.parent.is_dir():
        raise ExportError(f"cannot write {path}: {_missing_folder(target.parent)}")


#: A FITS file is made of blocks of this many bytes.
FITS_BLOCK = 2880

#: Files written a chunk of rows at a time (:func:`write_chunks`): memory holds a chunk, not the table.
CHUNKED = ("fits", "parquet")


def write(found: Table, fmt: str, path: str) -> None:
    """Write the table to ``path`` in ``fmt`` (replacing the file, only once the new one is complete)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "parquet":
        _needs("pyarrow", "--format parquet")
    written = _prepared(found, fmt)  # everything that can fail on the table's content fails before a file is opened
    # Each writer gets a file opened here: given a name, astropy's "overwrite" deletes what is there first, which
    # for a device (/dev/stdout, /dev/full) is the device itself.
    with _replacing(path) as file:
        _write_prepared(written, fmt, file)


def _prepared(found: Table, fmt: str) -> object:
    """What :func:`_write_prepared` writes: a FITS HDU, a pyarrow Table or the text's bytes."""
    if fmt == "fits":
        return _fits_hdu(found)
    if fmt == "parquet":
        return _arrow(found)
    return (render(found, fmt) + "\n").encode("utf-8")


def _write_prepared(written: object, fmt: str, file) -> None:
    if fmt == "fits":
        from astropy.io import fits

        try:
            fits.HDUList([fits.PrimaryHDU(), written]).writeto(file)
        except AttributeError as exc:
            # astropy, failing to write a file object it did not open, looks for the free space of its folder and
            # raises this instead of the OSError (a pipe whose reader left, a full disk).
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise
    elif fmt == "parquet":
        import pyarrow.parquet

        pyarrow.parquet.write_table(written, file)
    else:
        file.write(written)


def write_chunks(
    tables: Iterable[Table], fmt: str, path: str, meta: dict, whole: Callable[[], Table]
) -> tuple[int, int]:
    """Write ``tables`` (chunks of one table's rows, with the same columns) as FITS or Parquet to ``path``, one
    chunk at a time, with ``meta`` as the file's provenance; the number of rows and of columns written.

    The file holds what :func:`write` writes for the whole table: a FITS file the same bytes, a Parquet file the
    same rows (a row group per chunk). Should a chunk's columns be written otherwise than the first's (a text
    column wider than the first chunk's, masked values where the first had none, ints then floats), what was
    written is dropped and ``whole()`` (the table) is written instead, as it is when a chunk cannot be written
    (its error is the table's only if the table has it too) and to a destination written in place (a pipe, stdout).
    """
    if fmt not in CHUNKED:
        raise ExportError(f"{fmt} is not written in chunks")
    if fmt == "parquet":
        _needs("pyarrow", "--format parquet")
    with _replacing(path) as file:
        if not _in_place(path):  # a file the shell opened may append, wherever a chunk seeks
            try:
                return (_fits_chunks if fmt == "fits" else _parquet_chunks)(tables, file, meta)
            except (_UnlikeChunkError, ExportError):  # a chunk's error may not be the table's (arrays of length 0)
                file.seek(0)
                file.truncate()
        found = whole()
        found.meta.update(meta)
        _write_prepared(_prepared(found, fmt), fmt, file)
        return len(found), len(found.colnames)


def _like_first(found: Table, first: Table) -> Table:
    """``found`` with its text columns as wide as ``first``'s where they are narrower (a chunk of shorter paths),
    as one table of both would hold them. A chunk with other columns (JSON results with other keys) is unlike."""
    if found.colnames != first.colnames:
        raise _UnlikeChunkError()
    for name in found.colnames:
        here, there = found[name], first[name]
        if here.dtype.kind == there.dtype.kind == "U" and here.dtype.itemsize < there.dtype.itemsize:
            wider = here.astype(there.dtype)
            wider.info.description, wider.unit = here.info.description, here.unit
            found.replace_column(name, wider)
    return found


def _fits_chunks(tables: Iterable[Table], file, meta: dict) -> tuple[int, int]:
    """One FITS binary table, a chunk of rows at a time: its header is written first as if it held no row, and
    again at the end with their number (NAXIS2, on a card of 80 characters: the header keeps its length)."""
    from astropy.io import fits

    first = header = layout = None
    rows = size = 0
    for found in tables:
        if not len(found):
            continue
        found = _like_first(found, first) if first is not None else found
        # The rows by numpy when laid out as the first chunk's, whose bytes astropy's made alike (checked below).
        data = _plain_rows(found, layout) if layout is not None and _layout(found) == layout else None
        if data is None:
            hdu = _fits_hdu(found, meta)
            data = _fits_rows(hdu)
            if hdu.header.get("PCOUNT", 0):  # arrays of varying length, in a heap after the rows
                raise _UnlikeChunkError()
            if first is None:
                first, header = found, hdu.header
                file.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
                start = file.tell()
                file.write(_with_rows(header, 0))
                plain = _layout(found)
                layout = plain if plain is not None and _plain_rows(found, plain) == data else None
            elif _columns(hdu.header) != _columns(header):
                raise _UnlikeChunkError()
        file.write(data)
        rows += len(found)
        size += len(data)
    if first is None:
        raise _UnlikeChunkError()  # no row: the empty table, as write() makes it
    file.write(b"\0" * (-size % FITS_BLOCK))  # the data ends on a whole block, padded with zeros
    file.seek(start)
    file.write(_with_rows(header, rows))
    return rows, len(first.colnames)


def _with_rows(header, rows: int) -> bytes:
    header = header.copy()
    header["NAXIS2"] = rows
    return header.tostring().encode("ascii")


def _columns(header) -> list[tuple]:
    """A FITS table header's cards but NAXIS2: the same for two chunks whose rows one table holds alike."""
    return [(card.keyword, card.value, card.comment) for card in header.cards if card.keyword != "NAXIS2"]


def _fits_rows(hdu) -> bytes:
    """The rows of a binary table HDU, as astropy writes them (big-endian, its fill values), without padding."""
    import io

    from astropy.io import fits

    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    offset = len(fits.PrimaryHDU().header.tostring()) + len(hdu.header.tostring())
    return buffer.getbuffer()[offset : offset + hdu.header["NAXIS1"] * hdu.header["NAXIS2"]].tobytes()


def _layout(found: Table) -> np.dtype | None:
    """The big-endian record of a row of ``found`` in a FITS binary table, for tables of plain columns only:
    numbers astropy writes as they are (no TZERO offset, no TNULL) and ASCII text; None for any other."""
    fields = []
    for name in found.colnames:
        column = found[name]
        if isinstance(column, MaskedColumn) and np.ma.getmaskarray(column).any():
            return None
        kind, size = column.dtype.kind, column.dtype.itemsize
        if kind == "U":
            if column.ndim > 1:
                return None
            form = np.dtype(f"S{size // 4}")
        elif (kind, size) in (("i", 2), ("i", 4), ("i", 8), ("f", 4), ("f", 8)):
            form = column.dtype.newbyteorder(">")
        else:
            return None
        fields.append((name, form, column.shape[1:]))
    return np.dtype(fields)


def _plain_rows(found: Table, layout: np.dtype) -> bytes | None:
    """The rows of ``found`` in ``layout`` (:func:`_layout`), as numpy makes them; None if text is not ASCII."""
    rows = np.empty(len(found), dtype=layout)
    try:
        for name in found.colnames:
            rows[name] = np.asarray(found[name])
    except UnicodeEncodeError:
        return None
    return rows.tobytes()


def _parquet_chunks(tables: Iterable[Table], file, meta: dict) -> tuple[int, int]:
    """One Parquet file, a row group per chunk of rows."""
    import pyarrow.parquet

    metadata = {key: str(value) for key, value in meta.items()} or None
    first = writer = None
    rows = 0
    try:
        for found in tables:
            if not len(found):
                continue
            found = _like_first(found, first) if first is not None else found
            arrow = _arrow(found).replace_schema_metadata(metadata)
            if writer is None:
                first, writer = found, pyarrow.parquet.ParquetWriter(file, arrow.schema)
            elif not arrow.schema.equals(writer.schema, check_metadata=True):
                raise _UnlikeChunkError()
            writer.write_table(arrow)
            rows += len(found)
    finally:
        if writer is not None:
            writer.close()
    if first is None:
        raise _UnlikeChunkError()
    return rows, len(first.colnames)


#: Above this many points a scatter plot becomes a 2-D histogram (dots would hide each other).
SCATTER_LIMIT = 5000
LOG_AXES = ("x", "y", "xy")


def label(found: Table, name: str) -> str:
    """An axis label: the column's name, its description and its unit, e.g. ``teff: effective temperature [K]``."""
    column = found[name]
    text = f"{name}: {column.description}" if column.description else name
    if len(text) > 60:
        text = text[:57] + "..."
    unit = _unit(column)
    return f"{text} [{unit}]" if unit else text


def _bins(n: int, given: int | None, most: int) -> int:
    # Rice's rule (2 n^(1/3)), within bounds: a few bins for ten rows, `most` for a million.
    return given or min(most, max(5, math.ceil(2 * n ** (1 / 3))))


def plot(
    found: Table, columns: Sequence[str], path: str, title: str, bins: int | None = None, log: str = ""
) -> tuple[int, str]:
    """A histogram of one column, or a plot of Y against X (dots, or a 2-D histogram for many rows), saved to
    ``path``. Axes are labelled with descriptions and units; ``log`` (x, y or xy) makes those axes logarithmic.
    The number of points drawn, and what was drawn (e.g. "histogram of 20 bins, log y").
    """
    _needs("matplotlib", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    if log not in ("", *LOG_AXES):
        raise ExportError(f"--log takes x, y or xy, not {log!r}")
    data = []
    for name in keep(found, columns).colnames:
        values = found[name]
        if values.ndim > 1 or values.dtype == object:
            arrays = f"arrays of {values.dtype}" if values.ndim > 1 else "arrays of different lengths"
            raise ExportError(f"--plot needs one number per row, and column {name!r} holds {arrays}")
        if values.dtype.kind not in "iuf":
            raise ExportError(f"--plot needs numbers, and column {name!r} holds {values.dtype} values")
        data.append(np.ma.filled(values.astype(float), np.nan))
    usable = np.all([np.isfinite(values) for values in data], axis=0)
    for axis, values in zip("xy", data):  # a histogram's y axis counts rows, which a log scale can show
        if axis in log:
            usable &= values > 0
    points = [values[usable] for values in data]
    n = int(usable.sum())
    figure, axes = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    if suffix not in figure.canvas.get_supported_filetypes():
        plt.close(figure)
        known = ", ".join(sorted(figure.canvas.get_supported_filetypes()))
        raise ExportError(f"--plot cannot draw a .{suffix} file; name one of: {known}")
    try:
        if len(points) == 1:
            x = points[0]
            edges = _edges(x, _bins(n, bins, 100), "x" in log)
            axes.hist(x, bins=edges, histtype="stepfilled", alpha=0.8)
            axes.set_xlabel(label(found, columns[0]))
            axes.set_ylabel("rows")
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            kind = f"histogram of {len(edges) - 1} bins"
        elif n > SCATTER_LIMIT:
            x, y = points
            count = _bins(n, bins, 200)
            drawn = axes.hist2d(
                x, y, bins=[_edges(x, count, "x" in log), _edges(y, count, "y" in log)], norm=LogNorm(), cmap="viridis"
            )
            figure.colorbar(drawn[3], ax=axes, label="rows per bin")
            kind = f"2-D histogram of {count} x {count} bins"
        else:
            axes.scatter(points[0], points[1], s=max(2, min(20, 4000 / max(n, 1))), alpha=0.8 if n > 100 else 1)
            kind = "scatter plot"
        if len(points) == 2:
            axes.set_xlabel(label(found, columns[0]))
            axes.set_ylabel(label(found, columns[1]))
        for axis in log:
            getattr(axes, f"set_{axis}scale")("log")
        if log:
            kind += f", log {log}"
        axes.set_title(f"{title}: {n} of {len(found)} rows")
        with _replacing(path) as file:
            figure.savefig(file, format=suffix)
    except ExportError:
        raise
    except (ValueError, OverflowError) as exc:  # matplotlib's axes overflow near the largest floats
        largest = max(float(np.abs(values).max()) for values in points if len(values))
        raise ExportError(
            f"--plot cannot draw values as large as {largest:g} (matplotlib: {exc}); export the rows "
            "(--format csv) and draw them otherwise"
        ) from None
    finally:
        plt.close(figure)
    return n, kind


def _edges(values: np.ndarray, count: int, logarithmic: bool) -> np.ndarray:
    """``count`` bins over ``values``, spaced evenly (in the logarithm, when ``logarithmic``)."""
    if not len(values):
        return np.linspace(0, 1, count + 1)
    low, high = float(values.min()), float(values.max())
    if logarithmic:
        low, high = math.log10(low), math.log10(high)
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, count + 1)
    return 10**edges if logarithmic else edges
