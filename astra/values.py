"""What ``run()`` returns, as JSON that reads back with the same values, on SQLite (text) and PostgreSQL (jsonb).

Plain JSON values are stored as they are, so ``result->>'snr'`` (PostgreSQL) and ``json_extract(result, '$.snr')``
(SQLite) work on ordinary numbers and strings. numpy scalars become the Python number they hold (ints stay ints,
floats floats, bools bools); numpy arrays and tuples become (nested) lists. What strict JSON and jsonb cannot hold
is written as a one-key object, a *tag*::

    NaN, Infinity, -Infinity, -0.0   {"$float": "NaN"}, {"$float": "Infinity"}, {"$float": "-Infinity"}, ...
    datetime.date                    {"$date": "2026-11-25"}                     (ISO 8601)
    datetime.datetime                {"$datetime": "2026-11-25T17:00:00+00:00"}  (ISO 8601)
    a string holding NUL characters  {"$text": ["the parts", "between NULs"]}
    a one-key dict whose key is a tag name, e.g. {"$date": 1}
                                     {"$dict": {"$date": 1}}

:func:`loads` turns the tags back into Python values. A value that cannot be stored (any other object, a dict key
that is not a string or holds NUL, a container that contains itself) raises :class:`UnstorableError` naming where
it is, e.g. ``result["fit"]["model"]: cannot store a value of type Model``; the task is then recorded as failed,
never done.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from collections.abc import Mapping
from json.encoder import encode_basestring
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy

#: Floats this large are written in full with a ".0" (not as 1e+16): jsonb would otherwise give back an integer.
_EXPONENT_FROM = 1e16

_TAGS = ("$float", "$date", "$datetime", "$text", "$dict")


class UnstorableError(ValueError):
    """``run()`` returned something astra cannot store without changing it; the message says where and what."""


class Encoded(str):
    """JSON text :func:`dumps` has written already: :func:`dumps` gives it back as it is, not as a string."""


def encode(value: object, where: str = "result") -> Encoded:
    """``value`` written once by :func:`dumps`, to be stored as it is (raises UnstorableError before any write)."""
    return Encoded(dumps(value, where))


def dumps(value: object, where: str = "result") -> str:
    """``value`` as strict JSON text, with tags for what JSON cannot hold (see the module's docstring).

    ``where`` names the value in error messages.
    """
    if type(value) is Encoded:
        return str(value)
    out: list[str] = []
    try:
        _write(value, where, out, set())
    except RecursionError:
        raise UnstorableError(f"{where}: nested too deeply to store") from None
    return "".join(out)


def loads(text: str) -> object:
    """The value :func:`dumps` wrote (also reads JSON written by astra before tags, NaN included)."""
    value = json.loads(text)
    return decode(value) if '"$' in text else value


def decode(value: object) -> object:
    """Resolve the tags in ``value``, JSON already parsed (PostgreSQL's driver parses jsonb itself)."""
    if type(value) is dict:
        if len(value) == 1:
            key, inner = next(iter(value.items()))
            if key in _TAGS:
                return _untag(key, inner)
        return {key: decode(item) for key, item in value.items()}
    if type(value) is list:
        return [decode(item) for item in value]
    return value


def plain(value: object) -> object:
    """``value`` as plain JSON values with its tags kept: what ``astra tasks show --json`` prints (strict JSON)."""
    return json.loads(dumps(value))


def _untag(tag: str, inner: object) -> object:
    if tag == "$float":
        return float(inner)
    if tag == "$date":
        return datetime.date.fromisoformat(inner)
    if tag == "$datetime":
        return datetime.datetime.fromisoformat(inner)
    if tag == "$text":
        return "\x00".join(inner)
    return {key: decode(item) for key, item in inner.items()}  # $dict


def _tagged(tag: str, inner: str) -> str:
    return f'{{"{tag}":{encode_basestring(inner)}}}'


def _float(number: float) -> str:
    if math.isfinite(number):
        if number == 0.0 and math.copysign(1.0, number) < 0:
            return _tagged("$float", "-0.0")  # jsonb's numbers have no negative zero
        if abs(number) >= _EXPONENT_FROM:
            return f"{number:.1f}"  # exact: a float this large is a whole number
        return repr(number)
    return _tagged("$float", "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity"))


def _string(text: str, where: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnstorableError(f"{where}: cannot store a string with a lone surrogate ({text!r:.60})") from None
    if "\x00" in text:  # neither jsonb nor PostgreSQL's text can hold NUL
        return '{"$text":' + json.dumps(text.split("\x00"), ensure_ascii=False) + "}"
    return encode_basestring(text)


def _write(value: object, where: str, out: list[str], open_: set[int]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_string(value, where))
    elif value is None:
        out.append("null")
    elif kind is bool:
        out.append("true" if value else "false")
    elif kind is float:
        out.append(_float(value))
    elif kind is int:
        try:
            out.append(str(value))
        except ValueError:  # more digits than Python writes as text (sys.get_int_max_str_digits())
            raise UnstorableError(
                f"{where}: cannot store an int of about {value.bit_length() * 0.30103:.0f} digits"
            ) from None
    elif kind is dict:
        _write_dict(value, where, out, open_)
    elif kind is list or kind is tuple:
        _write_list(value, where, out, open_)
    elif _is_numpy(value):
        _write_numpy(value, where, out, open_)
    elif isinstance(value, datetime.datetime):
        out.append(_tagged("$datetime", value.isoformat()))
    elif isinstance(value, datetime.date):
        out.append(_tagged("$date", value.isoformat()))
    elif isinstance(value, str):  # a str Enum, say: its value, as json.dumps writes it (str() gives "Band.G")
        out.append(_string(str.__str__(value), where))
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_float(float(value)))
    elif isinstance(value, Mapping):  # e.g. the frozen dict of a luigi DictParameter
        _write_dict(value, where, out, open_)
    elif isinstance(value, (list, tuple)):
        _write_list(value, where, out, open_)
    else:
        raise UnstorableError(f"{where}: cannot store a value of type {kind.__name__} ({_show(value)})")


def imported_numpy() -> ModuleType | None:
    """numpy if this process has imported it, else None.

    A numpy value exists only once numpy has been imported, so astra never imports numpy (~0.1 s) to ask whether a
    value is one.
    """
    if "numpy" not in sys.modules:
        return None
    # In sys.modules from the start of its import: another thread may still be importing it (a batch's writer
    # thread, for its first COPY), and its names are not there yet. The import statement waits for that import to
    # end (Python's lock per module), and costs a dict look-up once it has.
    import numpy

    return numpy


def _is_numpy(value: object) -> bool:
    numpy = imported_numpy()
    return numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic))


def _write_numpy(value: numpy.ndarray | numpy.generic, where: str, out: list[str], open_: set[int]) -> None:
    import numpy

    if type(value) is numpy.ndarray:
        _write_array(value, where, out, open_)
    elif isinstance(value, numpy.ndarray):  # an astropy Quantity, a masked array: the numbers alone would mislead
        raise UnstorableError(
            f"{where}: cannot store a {type(value).__name__} (a numpy array with more to it); store plain arrays, "
            "e.g. its .value and its unit apart"
        )
    elif isinstance(value, numpy.bool_):
        out.append("true" if value else "false")
    else:
        _write_numpy_scalar(value, where, out)


def _show(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = object.__repr__(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _enter(value: object, where: str, open_: set[int]) -> int:
    key = id(value)
    if key in open_:
        raise UnstorableError(f"{where}: cannot store a {type(value).__name__} that contains itself")
    open_.add(key)
    return key


def _write_dict(value: Mapping, where: str, out: list[str], open_: set[int]) -> None:
    key_id = _enter(value, where, open_)
    escaped = len(value) == 1 and next(iter(value)) in _TAGS
    out.append('{"$dict":{' if escaped else "{")
    first = True
    for key, item in value.items():
        if not isinstance(key, str):
            raise UnstorableError(
                f"{where}: cannot store the dict key {_show(key)} of type {type(key).__name__} (keys must be strings)"
            )
        if "\x00" in key:  # a value's tag for NUL cannot stand where JSON wants a string
            raise UnstorableError(f"{where}: cannot store the dict key {_show(key)}: a key cannot hold NUL characters")
        if not first:
            out.append(",")
        first = False
        key = str.__str__(key)
        inner = f"{where}[{json.dumps(key, ensure_ascii=False)}]"
        out.append(_string(key, inner))
        out.append(":")
        _write(item, inner, out, open_)
    out.append("}}" if escaped else "}")
    open_.discard(key_id)


def _write_list(value: list | tuple, where: str, out: list[str], open_: set[int]) -> None:
    key_id = _enter(value, where, open_)
    out.append("[")
    for index, item in enumerate(value):
        if index:
            out.append(",")
        _write(item, f"{where}[{index}]", out, open_)
    out.append("]")
    open_.discard(key_id)


def _write_array(array: numpy.ndarray, where: str, out: list[str], open_: set[int]) -> None:
    import numpy

    kind = array.dtype.kind
    if kind in "biu":
        out.append(json.dumps(array.tolist()))
    elif kind == "f" and array.dtype.itemsize <= 8:
        values = array.astype(numpy.float64, copy=False)
        ordinary = numpy.isfinite(values).all() and (numpy.abs(values) < _EXPONENT_FROM).all()
        if ordinary and not (numpy.signbit(values) & (values == 0)).any():
            out.append(json.dumps(values.tolist()))  # all plain numbers: the C encoder writes them
        else:
            _write(values.tolist(), where, out, open_)
    elif kind in "UO":
        _write(array.tolist(), where, out, open_)
    else:
        raise UnstorableError(f"{where}: cannot store a numpy array of dtype {array.dtype}")


def _write_numpy_scalar(value: numpy.generic, where: str, out: list[str]) -> None:
    import numpy

    if isinstance(value, numpy.integer):
        out.append(str(int(value)))
    elif isinstance(value, numpy.floating) and value.dtype.itemsize <= 8:
        out.append(_float(float(value)))
    elif isinstance(value, numpy.str_):
        out.append(_string(str(value), where))
    else:
        raise UnstorableError(f"{where}: cannot store a numpy {value.dtype} ({_show(value)})")
