"""Results as an astropy Table, for ``astra results``: written as text, CSV, strict JSON, FITS or Parquet, or drawn.

One row per output row (or per task, for a task without an output model, whose JSON result's top-level keys become
the columns). Arrays of one shape become vector columns (FITS ``TFORM`` with a repeat count); ragged ones, and
nested JSON values, are written as JSON text where a format has no place for them.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Column, MaskedColumn, Table

FORMATS = ("table", "csv", "json", "fits", "parquet")
#: Formats that are files, never printed to a terminal.
BINARY = ("fits", "parquet")


class ExportError(ValueError):
    """The table cannot be written as asked (a missing optional package, an unknown column...)."""


def column(name: str, values: Sequence[object]) -> Column:
    """An astropy column from Python values: None is masked, equal-shaped arrays make a vector column."""
    present = [v for v in values if v is not None]
    mask = [v is None for v in values]
    if present and all(isinstance(v, (np.ndarray, list, tuple)) for v in present):
        try:
            arrays = [np.asarray(v) for v in present]
        except ValueError:
            arrays = []
        if arrays and len({a.shape for a in arrays}) == 1 and arrays[0].dtype != object:
            fill = np.zeros_like(arrays[0])
            data = np.stack([np.asarray(v) if v is not None else fill for v in values])
            return _masked(name, data, mask)
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


def _masked(name: str, data: object, mask: list[bool]) -> Column:
    if not any(mask):
        return Column(data, name=name)
    data = np.asarray(data)
    shaped = np.broadcast_to(np.array(mask).reshape((-1,) + (1,) * (data.ndim - 1)), data.shape)
    return MaskedColumn(data, name=name, mask=shaped)


def table(names: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A Table with ``names`` as columns from ``rows`` of values in that order."""
    rows = list(rows)
    return Table([column(name, [row[i] for row in rows]) for i, name in enumerate(names)])


def keep(found: Table, columns: Sequence[str]) -> Table:
    """Only ``columns`` of ``found``, in that order."""
    unknown = [name for name in columns if name not in found.colnames]
    if unknown:
        raise ExportError(f"no column {unknown[0]!r}; the columns are: {', '.join(found.colnames)}")
    return found[list(columns)]


def _plain(value: object) -> object:
    """``value`` as strict JSON can hold it: arrays as lists, NaN and infinities as null."""
    if isinstance(value, np.ndarray):
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
    out = []
    for row in found:
        record = {}
        for name in found.colnames:
            value = row[name]
            if np.ma.is_masked(value) and np.ndim(value) == 0:
                value = None
            elif isinstance(value, np.ma.MaskedArray):
                value = value.filled(np.nan) if value.dtype.kind == "f" else value.data
            record[name] = _plain(value)
        out.append(record)
    return out


def _flat(found: Table) -> Table:
    """A copy whose vector columns are JSON text, for formats with one value per cell (CSV)."""
    flat = found.copy(copy_data=False)
    for name in found.colnames:
        if found[name].ndim > 1:
            flat[name] = [json.dumps(_plain(np.asarray(v))) for v in found[name]]
    return flat


def render(found: Table, fmt: str) -> str:
    """The table as text: ``table`` for people, ``csv`` or strict ``json``."""
    if fmt == "table":
        return "\n".join(found.pformat(max_lines=-1, max_width=-1))
    if fmt == "csv":
        import io

        buffer = io.StringIO()
        _flat(found).write(buffer, format="ascii.csv")
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps(records(found), indent=2, allow_nan=False)
    raise ExportError(f"{fmt} is not a text format")


def _needs(package: str, what: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError:
        raise ExportError(f"{what} needs {package}, which is not installed: pip install {package}") from None


def write(found: Table, fmt: str, path: str) -> None:
    """Write the table to ``path`` in ``fmt`` (replacing the file)."""
    if fmt in ("table", "csv", "json"):
        Path(path).write_text(render(found, fmt) + "\n")
        return
    if fmt == "fits":
        found.write(path, format="fits", overwrite=True)
        return
    if fmt == "parquet":
        _needs("pyarrow", "--format parquet")
        found.write(path, format="parquet", overwrite=True)
        return
    raise ExportError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def plot(found: Table, columns: Sequence[str], path: str, title: str) -> int:
    """A histogram of one column, or a scatter plot of two, saved to ``path``. The number of points drawn."""
    _needs("matplotlib", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = []
    for name in keep(found, columns).colnames:
        values = found[name]
        if values.ndim > 1 or values.dtype.kind not in "iuf":
            raise ExportError(f"--plot needs numbers, and column {name!r} holds {values.dtype} values")
        data.append(np.ma.filled(values.astype(float), np.nan))
    finite = np.all([np.isfinite(values) for values in data], axis=0)
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    if len(data) == 1:
        axes.hist(data[0][finite], bins="auto")
        axes.set_xlabel(columns[0])
        axes.set_ylabel("rows")
    else:
        axes.scatter(data[0][finite], data[1][finite], s=8)
        axes.set_xlabel(columns[0])
        axes.set_ylabel(columns[1])
    axes.set_title(f"{title} ({int(finite.sum())} of {len(found)} rows)")
    figure.savefig(path)
    plt.close(figure)
    return int(finite.sum())
