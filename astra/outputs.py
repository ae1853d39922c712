"""Typed outputs: a task's results as rows of a table of its own, linked to the task that made them.

A task that sets ``output_model`` to an :class:`OutputModel` gets what its ``run()`` returns inserted into that
table, in the same transaction as its done record: a dict is one row, a list of dicts (or model instances) many
rows, e.g. one per visit::

    class SNROutput(astra.OutputModel):
        snr = peewee.DoubleField()
        flux = astra.ArrayField("float32")

    class EstimateSNR(astra.BaseTask):
        output_model = SNROutput

        def run(self):
            return {"snr": 12.5, "flux": flux}

Describe the columns for those who read the exports: peewee's ``help_text`` is a column's description, and
``Meta.units`` maps field names to units (any astropy/FITS unit string)::

    class SNROutput(astra.OutputModel):
        snr = peewee.DoubleField(help_text="median signal-to-noise ratio per pixel")
        wavelength_min = peewee.DoubleField(help_text="shortest wavelength of a good pixel")

        class Meta:
            units = {"wavelength_min": "Angstrom"}

``task.output().read()`` gives the row back as a model instance, and :func:`results` is a peewee query over the
rows of every done task of a class, with the tasks' parameters, version and completion time beside them. Rows go
when their task is forgotten (``on delete cascade``). Backend differences live in the field types only.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import luigi
import peewee
from luigi.parameter import ParameterVisibility

from astra.config import DefinitionError
from astra.database import output_tables, text
from astra.database.connection import database
from astra.database.dialect import SchemaFromDialect, dialect, of_model
from astra.database.models import Task, proxy
from astra.identity import canonical_value, class_version, task_hash
from astra.values import imported_numpy

if TYPE_CHECKING:
    import numpy as np

#: PostgreSQL element type of an :class:`ArrayField`, by numpy dtype name (numpy is imported by the first field).
POSTGRES_TYPES = {
    "float32": "REAL",
    "float64": "DOUBLE PRECISION",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "bool": "BOOLEAN",
}


class ArrayField(peewee.Field):
    """A numpy array of one ``dtype``, any shape: ``real[]``, ``double precision[]``, ``bigint[]``... on
    PostgreSQL (so SQL can index into it, and NaN stays NaN); on SQLite the array's bytes with its dtype and shape
    (numpy's ``.npy`` format). Reads give numpy arrays back.

    ``shape`` declares the arrays' shape, None for a length that varies: ``shape=(None, 3)`` takes (n, 3) arrays,
    and an empty one reads back as (0, 3) on both backends. PostgreSQL keeps no shape for an empty array (it reads
    back as (0,)), so an empty array of more than one dimension needs its shape declared.
    """

    field_type = "BLOB"

    def __init__(self, dtype: object = "float64", *args, shape: Sequence[int | None] | None = None, **kwargs) -> None:
        import numpy as np

        self.dtype = np.dtype(dtype)
        if self.dtype.name not in POSTGRES_TYPES:
            known = ", ".join(str(d) for d in POSTGRES_TYPES)
            raise DefinitionError(f"astra.ArrayField({self.dtype}): the dtype must be one of {known}")
        self.shape = None if shape is None else tuple(shape)
        if self.shape is not None and not all(n is None or (isinstance(n, int) and n >= 0) for n in self.shape):
            raise DefinitionError(f"astra.ArrayField(shape={shape!r}): each length must be a whole number or None")
        super().__init__(*args, **kwargs)

    @property
    def empty_shape(self) -> tuple[int, ...] | None:
        """The shape an empty array of this field reads back with (None if undeclared: one dimension)."""
        return None if self.shape is None else tuple(n or 0 for n in self.shape)

    @property
    def postgres_type(self) -> str:
        return f"{POSTGRES_TYPES[self.dtype.name]}[]"

    def postgres_binary(self, value: object) -> bytes:
        """``value`` in PostgreSQL's binary array format, for ``COPY ... (FORMAT binary)``: no number becomes text.

        Dimensions, then each element as its length and its big-endian bytes.
        """
        import numpy as np

        array = self.array(value)
        oid, size = _ELEMENTS[self.dtype.name]
        header = np.array([array.ndim, 0, oid, *(n for dim in array.shape for n in (dim, 1))], dtype=">i4")
        elements = np.empty(array.size, dtype=[("length", ">i4"), ("value", self.dtype.newbyteorder(">"))])
        elements["length"] = size
        elements["value"] = array.ravel()
        return header.tobytes() + elements.tobytes()

    def postgres_binary_block(self, values: list) -> np.ndarray | None:
        """Many arrays of one shape in PostgreSQL's binary array format, one record per array (None if they
        differ in shape or one is missing): the COPY data of a whole chunk is then built by numpy at once.
        """
        import numpy as np

        if any(value is None for value in values):
            return None
        # Rows checked by rows() hold arrays of this dtype already.
        arrays = [v if isinstance(v, np.ndarray) and v.dtype == self.dtype else self.array(v) for v in values]
        shape = arrays[0].shape if arrays else ()
        if any(array.shape != shape for array in arrays):
            return None
        oid, size = _ELEMENTS[self.dtype.name]
        element = np.dtype([("length", ">i4"), ("value", self.dtype.newbyteorder(">"))])
        block = np.empty(len(arrays), dtype=[("header", ">i4", (3 + 2 * len(shape),)), ("elements", element, shape)])
        block["header"] = [len(shape), 0, oid, *(n for dim in shape for n in (dim, 1))]
        block["elements"]["length"] = size
        block["elements"]["value"] = np.stack(arrays) if arrays else np.empty((0, *shape))
        return block

    def from_postgres_binary(self, data: bytes | memoryview | None) -> np.ndarray | None:
        """An array read in PostgreSQL's binary array format (``array_send``), as :meth:`python_value` gives it
        from the array's text: numbers are copied by numpy, never parsed one by one from text into Python floats.
        """
        import numpy as np

        if data is None:
            return None
        ndim, has_nulls = struct.unpack_from(">ii", data)
        if has_nulls:  # a NULL element: rare, and numpy has no place for it; as python_value does with the text
            return self.python_value(_elements_with_nulls(self.dtype, data, ndim))
        if ndim == 0:  # PostgreSQL's empty arrays have no dimensions
            empty = np.empty(0, dtype=self.dtype)
            return empty.reshape(self.empty_shape) if self.shape is not None else empty
        shape = struct.unpack_from(f">{2 * ndim}i", data, 12)[::2]
        element = np.dtype([("length", ">i4"), ("value", self.dtype.newbyteorder(">"))])
        values = np.frombuffer(data, dtype=element, offset=12 + 8 * ndim)["value"].astype(self.dtype)
        return values.reshape(shape)

    def many_from_postgres_binary(self, blobs: Sequence[bytes | memoryview | None]) -> list[np.ndarray | None]:
        """The arrays of :meth:`from_postgres_binary` for many values: parsed by numpy at once when they share
        their dimensions and hold no NULL (the usual column of spectra), else one by one."""
        import numpy as np

        first = blobs[0] if blobs else None
        if first is None or len(first) < 12 or any(blob is None or len(blob) != len(first) for blob in blobs):
            return [self.from_postgres_binary(blob) for blob in blobs]
        ndim, has_nulls = struct.unpack_from(">ii", first)
        head = 12 + 8 * ndim
        rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), len(first))
        if has_nulls or ndim == 0 or not (rows[:, :head] == rows[0, :head]).all():
            return [self.from_postgres_binary(blob) for blob in blobs]
        shape = struct.unpack_from(f">{2 * ndim}i", first, 12)[::2]
        element = np.dtype([("length", ">i4"), ("value", self.dtype.newbyteorder(">"))])
        values = np.ascontiguousarray(rows[:, head:]).view(element)["value"].astype(self.dtype)
        return list(values.reshape(len(blobs), *shape))

    def takes_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` has the shape the field declares (any, if it declares none)."""
        return self.shape is None or (
            len(shape) == len(self.shape) and all(n is None or n == m for n, m in zip(self.shape, shape))
        )

    @property
    def shape_as_written(self) -> str:
        """The declared shape as one writes it in Python: (None, 3), (5,)."""
        return _shape(self.shape)

    def ddl_datatype(self, ctx):
        return peewee.SQL(of_model(self.model).array_type(self))

    def array(self, value: object) -> np.ndarray:
        """``value`` as an array of this field's dtype; an error rather than a lossy cast (e.g. floats to ints)."""
        import numpy as np

        where = f"{self.model.__name__}.{self.name}"
        array = self._unmasked(value)
        if array.ndim == 0:
            raise ValueError(f"{where}: expected an array, got the scalar {value!r}")
        if array.dtype != self.dtype:
            if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
                raise ValueError(f"{where}: cannot store an array of {array.dtype} as {self.dtype}")
            with np.errstate(over="ignore"):  # an overflow is what _check_fits looks for
                cast = array.astype(self.dtype)
            _check_fits(where, array, cast)
            array = cast
        if not self.takes_shape(array.shape):
            raise ValueError(
                f"{self.model.__name__}.{self.name}: expected an array of shape {_shape(self.shape)}, got {array.shape}"
            )
        if array.size == 0 and array.ndim > 1 and array.shape != self.empty_shape:
            declared = _shape(tuple(None if i == 0 else n for i, n in enumerate(array.shape)))
            raise ValueError(
                f"{self.model.__name__}.{self.name}: an empty array of shape {array.shape} would read back as "
                + (f"{self.empty_shape}" if self.shape else "(0,) on PostgreSQL")
                + f"; declare its shape, e.g. astra.ArrayField('{self.dtype}', shape={declared})"
            )
        return np.ascontiguousarray(array, dtype=self.dtype)

    def _unmasked(self, value: object) -> np.ndarray:
        """``value`` as a plain array: the masked elements of a masked array are NaN (what a float array stores for
        a missing value), never the data under the mask; an array of ints cannot hold them."""
        import numpy as np

        if not isinstance(value, np.ma.MaskedArray) or not np.ma.is_masked(value):
            return np.asarray(value)
        if np.dtype(self.dtype).kind != "f":
            raise ValueError(
                f"{self.model.__name__}.{self.name}: a masked array cannot be stored as {self.dtype}, which has no "
                "value for a missing element; fill it (e.g. .filled(-1)) or declare a float dtype (masked is NaN)"
            )
        kind = value.dtype if value.dtype.kind == "f" else np.dtype(self.dtype)
        return value.astype(kind).filled(np.nan)

    def db_value(self, value):
        if value is None:
            return None
        return of_model(self.model).array_value(self.array(value))

    def python_value(self, value):
        import numpy as np

        if value is None or isinstance(value, np.ndarray):
            return value
        if isinstance(value, (bytes, memoryview)):
            # SQLite keeps each array's own dtype: give the model's, whatever an older model stored.
            return np.load(io.BytesIO(bytes(value)), allow_pickle=False).astype(self.dtype, copy=False)
        if isinstance(value, str):  # an array literal, e.g. from a query that cast the column to text
            value = json.loads(value.translate(_BRACKETS))
        array = np.array(value, dtype=self.dtype)
        if array.size == 0 and self.shape is not None:  # PostgreSQL's empty arrays have no dimensions
            return array.reshape(self.empty_shape)
        return array


def _check_fits(where: str, array: np.ndarray, cast: np.ndarray) -> None:
    """Raise unless every value of ``array`` survived its ``cast`` but for the rounding of floats: a float too large
    for float32 became an infinity, an int too large for int32 wrapped round to another number, an int past 2**53
    (2**24 in float32) became its neighbour."""
    import numpy as np

    if cast.dtype.kind == "f" and array.dtype.kind in "iu":
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~np.isfinite(cast) | (cast.astype(array.dtype) != array)
        if bad.any():
            first = array[bad].flat[0].item()
            raise ValueError(
                f"{where}: {first!r} is a whole number that {cast.dtype} holds only rounded; declare an int64 "
                "ArrayField, or give the array as floats to store it rounded"
            )
        return
    if cast.dtype.kind == "f":
        bad = np.isfinite(array) & ~np.isfinite(cast)
    elif cast.dtype.kind in "iu" and array.dtype.kind in "iub":
        info = np.iinfo(cast.dtype)
        bad = (array < info.min) | (array > info.max)
    else:
        return
    if bad.any():
        first = array[bad].flat[0].item()
        raise ValueError(
            f"{where}: {first!r} does not fit in {cast.dtype}; declare a wider dtype (e.g. float64, int64)"
        )


def _shape(shape: tuple[int | None, ...]) -> str:
    """A shape as one writes it in Python: (None, 3), (5,)."""
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(str(n) for n in shape)})"


#: PostgreSQL's type oid and size of an element of an :class:`ArrayField`, by numpy dtype name.
_ELEMENTS = {
    "float32": (700, 4),
    "float64": (701, 8),
    "int16": (21, 2),
    "int32": (23, 4),
    "int64": (20, 8),
    "bool": (16, 1),
}
_BRACKETS = str.maketrans("{}", "[]")


def _elements_with_nulls(dtype: np.dtype, data: bytes | memoryview, ndim: int) -> list:
    """The elements of a binary array that holds NULLs, as nested lists with None (as psycopg2 reads the text)."""
    import numpy as np

    shape = struct.unpack_from(f">{2 * ndim}i", data, 12)[::2]
    offset, flat = 12 + 8 * ndim, []
    big = dtype.newbyteorder(">")
    for _ in range(math.prod(shape)):
        (length,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if length < 0:
            flat.append(None)
            continue
        flat.append(np.frombuffer(data, dtype=big, count=1, offset=offset)[0].item())
        offset += length
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


class OutputModel(peewee.Model):
    """Base of an output table: subclass it with the columns a task returns; ``pk`` and ``task`` come with it.

    ``task`` (column ``task_pk``) links each row to the ``astra.task`` row of the task that made it, and is
    deleted with it. The table lives in the ``astra`` schema on PostgreSQL (create it with ``astra db init
    --module MODULE``) and is created on first use on SQLite. Name it with ``class Meta: table_name = ...``;
    the default is the class name in snake case.
    """

    pk = peewee.BigAutoField()
    task = peewee.ForeignKeyField(Task, column_name="task_pk", index=True, on_delete="CASCADE", backref="+")

    class Meta:
        database = proxy
        model_metadata_class = SchemaFromDialect  # astra.name on PostgreSQL, name on SQLite
        legacy_table_names = False


def units(model: type[OutputModel]) -> dict[str, str]:
    """The units a model's ``Meta.units`` gives its fields (an error naming the model if it names no field)."""
    given = getattr(model._meta, "units", None) or {}
    if not isinstance(given, dict):
        raise TypeError(f"{model.__name__}.Meta.units must be a dict of field name to unit, not {given!r}")
    unknown = [name for name in given if name not in model._meta.fields]
    if unknown:
        fields = ", ".join(name for name in model._meta.fields if name not in ("pk", "task"))
        raise TypeError(
            f"{model.__name__}.Meta.units names {unknown[0]!r}, which is not a field (its fields: {fields})"
        )
    return dict(given)


def output_model(task: luigi.Task | type[luigi.Task]) -> type[OutputModel] | None:
    """The output model a task (or task class) declares, or None."""
    model = getattr(task, "output_model", None)
    if model is None:
        return None
    if not (isinstance(model, type) and issubclass(model, OutputModel)):
        name = task.get_task_family()
        raise TypeError(f"{name}.output_model must be a subclass of astra.OutputModel, not {model!r}")
    return model


def models_in(modules: Iterable[object]) -> list[type[OutputModel]]:
    """Every output model defined in, or named by a task class of, these modules (in order, once each)."""
    found: dict[type[OutputModel], None] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, OutputModel) and value is not OutputModel:
                found[value] = None
            elif isinstance(value, type) and issubclass(value, luigi.Task):
                model = getattr(value, "output_model", None)
                if isinstance(model, type) and issubclass(model, OutputModel):
                    found[model] = None
    return list(found)


#: peewee's column types that hold fewer values than Python gives: their PostgreSQL name, largest magnitude, and the
#: field that holds more. SQLite would store any of them, PostgreSQL fails: both refuse, so both keep the same rows.
_LIMITS = {
    "SMALLINT": ("smallint", 2**15, "IntegerField"),
    "INT": ("integer", 2**31, "BigIntegerField"),
    "BIGINT": ("bigint", 2**63, None),
    "FLOAT": ("real (a float32)", 3.4028234663852886e38, "DoubleField"),
}


def _beyond(field_type: str, value: int | float) -> str | None:
    """What ``value`` does not fit in (with the field that would hold it), or None if it fits."""
    column, limit, wider = _LIMITS[field_type]
    if field_type == "FLOAT":
        fits = not math.isfinite(value) or abs(value) <= limit
    else:
        fits = not isinstance(value, int) or -limit <= value < limit
    if fits:
        return None
    return f"PostgreSQL's {column}" + (f"; declare a peewee.{wider}" if wider else "")


_WHOLE = ("SMALLINT", "INT", "BIGINT")
_REAL = ("FLOAT", "DOUBLE")
_TEXT = ("TEXT", "VARCHAR", "CHAR")


def _rounded(value: int, kind: str) -> bool:
    """Whether a column of ``kind`` (FLOAT: float32, DOUBLE) would hold another whole number than ``value``: its
    nearest float. OverflowError beyond the largest double; beyond float32's, :func:`_beyond` says it."""
    nearest = float(value)
    if kind == "FLOAT":
        if abs(nearest) > _LIMITS["FLOAT"][1]:
            return False
        nearest = _float32(nearest)
    return int(nearest) != value


def _float32(value: float) -> float:
    """The float32 nearest ``value`` (within float32's range), as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _as_column(field: peewee.Field, value: object) -> object:
    """``value`` as the column of ``field`` keeps it, or ValueError saying why it would not be the same value.

    peewee and the databases convert whatever they are given, each its own way: 1.5 in an IntegerField became 1,
    "false" in a BooleanField True, a list in a TextField its text; SQLite keeps "abc" in a DoubleField, which
    PostgreSQL refuses, in the middle of a batch's rows. So a value is taken only as the column holds it. A field
    with a conversion of its own (``db_value``: an ArrayField, peewee's TimestampField, a user's own) is left to it.
    """
    kind = field.field_type
    if value is None or type(field).db_value is not peewee.Field.db_value:
        return value
    if kind in _WHOLE:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            raise ValueError(f"{value!r} is not a whole number; round it, or declare a peewee.DoubleField")
    elif kind in _REAL:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                rounded = _rounded(value, kind)
            except OverflowError:
                raise ValueError(f"{value} is beyond the largest double (1.8e308)") from None
            if rounded:  # an id past 2**53 would be stored as its neighbour, silently
                column = "float32" if kind == "FLOAT" else "double"
                raise ValueError(
                    f"{value} is a whole number that a {column} holds only rounded; declare a peewee.BigIntegerField, "
                    "or give float(value) to store it rounded"
                )
            return value
        if isinstance(value, float):
            return value
    elif kind == "BOOL":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
    elif kind in _TEXT:
        if isinstance(value, str):
            return str.__str__(value)  # a str Enum: its value, not "Band.G"
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif kind == "DATETIME":
        if isinstance(value, datetime.datetime):  # without a zone, as PostgreSQL's timestamp keeps it: in UTC
            return value if value.tzinfo is None else value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    elif kind == "DATE":
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return value
    else:
        return value
    raise ValueError(f"{value!r:.60} is a {type(value).__name__}, which a peewee.{type(field).__name__} does not hold")


def _numpy_scalar(numpy: object, field: peewee.Field, value: object) -> bool:
    """Whether ``value`` is one numpy value for a field that holds one: a numpy scalar, or a 0-d array
    (``np.asarray(1.5)``) unless the field converts values itself (an ArrayField)."""
    if isinstance(value, numpy.generic):
        return True
    own = type(field).db_value is not peewee.Field.db_value
    return isinstance(value, numpy.ndarray) and value.ndim == 0 and not own


def as_real(value: float) -> float:
    """``value`` as PostgreSQL's ``real`` (peewee's FloatField) gives it back: rounded to float32, then read from its
    shortest decimal. SQLite's REAL is a double, which would keep every digit: rounded here, both databases hold
    the same number (an MJD of 59000.123456789 is 59000.125 on both, not on PostgreSQL alone)."""
    single = _float32(value)
    for digits in range(1, 9):
        shorter = float(f"{single:.{digits}g}")
        if struct.pack("f", shorter) == struct.pack("f", single):
            return shorter
    return float(f"{single:.9g}")  # 9 digits always give the float32 back


def rows(model: type[OutputModel], result: object, task: str = "run()") -> list[dict]:
    """The rows ``result`` stands for: a dict is one row, a list of dicts or ``model`` instances many, None none.

    Each row is checked against the model's fields (an unknown name, or a missing value for a column without a
    default that may not be null, is an error naming the task and field); numpy scalars become Python ones, and a
    FloatField's value the float32 PostgreSQL keeps (:func:`as_real`).
    """
    if result is None:
        return []
    if isinstance(result, (dict, model)):
        result = [result]
    if not isinstance(result, (list, tuple)):
        raise TypeError(
            f"{task} returned {type(result).__name__}; with output_model = {model.__name__} it must return a dict "
            f"(one row), or a list of dicts or {model.__name__} instances"
        )
    fields = {name: field for name, field in model._meta.fields.items() if name not in ("pk", "task")}
    checked = []
    nul_forbidden = None  # whether the database's text may hold NUL, asked at the first text
    numpy = imported_numpy()
    for i, row in enumerate(result):
        where = f"{task}: row {i}" if len(result) > 1 else task
        if isinstance(row, model):
            row = {name: row.__data__[name] for name in fields if name in row.__data__}
        elif not isinstance(row, dict):
            raise TypeError(f"{where} is a {type(row).__name__}, not a dict or {model.__name__}")
        unknown = [key for key in row if key not in fields]
        if unknown:
            raise ValueError(f"{where}: {model.__name__} has no field {unknown[0]!r} (its fields: {', '.join(fields)})")
        values = {}
        for name, field in fields.items():
            if name in row:
                value = row[name]
            elif field.default is not None:
                value = field.default() if callable(field.default) else field.default
            elif field.null:
                value = None
            else:
                raise ValueError(f"{where}: no value for {model.__name__}.{name}, which may not be null")
            if numpy is not None and _numpy_scalar(numpy, field, value):
                if isinstance(value, numpy.datetime64) and isinstance(value.item(), int):  # finer than microseconds
                    raise ValueError(
                        f"{where}: {model.__name__}.{name}: {value!r:.60} is finer than a microsecond, which the "
                        "column cannot hold: give value.astype('datetime64[us]')"
                    )
                value = value.item()
            try:
                value = _as_column(field, value)
            except ValueError as exc:
                raise ValueError(f"{where}: {model.__name__}.{name}: {exc}") from None
            if value is None and not field.null:
                raise ValueError(f"{where}: {model.__name__}.{name} is None, and the column may not be null")
            if isinstance(value, (int, float)) and field.field_type in _LIMITS:
                trouble = _beyond(field.field_type, value)
                if trouble is not None:
                    raise ValueError(f"{where}: {model.__name__}.{name}: {value!r} does not fit in {trouble}")
                if field.field_type == "FLOAT":
                    value = as_real(value)
            if isinstance(value, float) and math.isnan(value) and not field.null and not dialect(database()).keeps_nan:
                raise ValueError(
                    f"{where}: {model.__name__}.{name} is NaN, which SQLite stores as NULL, and the column may not "
                    "be null (declare it with null=True)"
                )
            if isinstance(value, str):
                if nul_forbidden is None:
                    nul_forbidden = dialect(database()).nul_forbidden
                trouble = text.problem(value, nul_forbidden)
                if trouble is not None:
                    raise ValueError(f"{where}: {model.__name__}.{name} holds {trouble}")
            if isinstance(field, ArrayField) and value is not None:
                try:
                    value = field.array(value)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{where}: {exc}") from None
            values[name] = value
        checked.append(values)
    return checked


def parameter_names(task_class: type[luigi.Task]) -> list[str]:
    """The names of the parameters astra records for a task class (every one but the private ones)."""
    return [name for name, p in task_class.get_params() if p.visibility != ParameterVisibility.PRIVATE]


def results(
    task_class: type[luigi.Task],
    version: str | None = None,
    tasks: Iterable[luigi.Task] | None = None,
    all_versions: bool = False,
    **parameters: object,
) -> peewee.ModelSelect:
    """The output rows of the done tasks of ``task_class`` at the version the class declares, as a peewee query.

    Each row is an instance of the class's output model with, beside its own fields, ``task_pk``, ``version``,
    ``completed`` and one attribute per parameter of the task (its recorded text). Keyword arguments select
    tasks by parameter value (``spectrum_path="/data/spec-1.fits"``), ``version`` another version,
    ``all_versions=True`` every recorded version (bumping a version leaves the old rows with the old tasks), and
    ``tasks`` (task instances, e.g. ``self.requires()`` of a task that needs them) picks those very tasks, whatever
    their version; add ``.where(Model.snr > 10)``, joins or ``.order_by()`` as with any peewee query.
    """
    if version is not None and all_versions:
        raise ValueError("results(): give version or all_versions=True, not both")
    if version is None and tasks is None and not all_versions:
        version = class_version(task_class)
        all_versions = version is None  # each task works its version out (a property): no one version to pick
    model = output_model(task_class)
    if model is None:
        raise TypeError(f"{task_class.get_task_family()} has no output_model; read its results with read_many()")
    params = dict(task_class.get_params())
    names = parameter_names(task_class)
    where = []
    for name, value in parameters.items():
        if name not in names:
            raise ValueError(
                f"{task_class.get_task_family()} has no parameter {name!r} (its parameters: {', '.join(names)})"
            )
        parameter = params[name]
        if isinstance(value, str):
            value = parameter.parse(value)
        where.append((name, canonical_value(parameter, parameter.normalize(value))))
    hashes = None if tasks is None else [task_hash(task) for task in luigi.task.flatten(tasks)]
    return output_tables.select_rows(
        model,
        output_tables.done_tasks(task_class.get_task_family(), task_class.__module__, where, version, hashes),
        names,
    )
