"""Random values of every kind of luigi parameter (hypothesis strategies), for tests/test_identity.py and
tests/test_creation.py: ``EVERY_KIND`` maps each parameter of ``identity_tasks.EveryParameter`` to its values."""

from __future__ import annotations

import datetime
from pathlib import Path

import luigi
from hypothesis import strategies as st

from tests.example_tasks import Leaf
from tests.identity_tasks import Colour, EveryParameter, Other

#: Texts with what JSON must escape (quotes, backslashes, control characters), non-ASCII and lone surrogates.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 0.0, 1e308, -1e-308, 5e-324])
integers = st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
json_keys = st.text(st.characters(codec=None), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | floats | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=3),
    max_leaves=8,
)
days = st.dates(min_value=datetime.date(1, 1, 1))
# luigi's intervals end a day, month or year after they start, which must still be a date.
interval_days = st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(9998, 12, 31))
moments = st.datetimes(min_value=datetime.datetime(1000, 1, 1))
intervals = st.one_of(
    interval_days.map(lambda d: luigi.date_interval.Date(d.year, d.month, d.day)),
    st.builds(luigi.date_interval.Week, st.integers(1900, 2100), st.integers(1, 52)),
    st.builds(luigi.date_interval.Month, st.integers(1, 9998), st.integers(1, 12)),
    st.builds(luigi.date_interval.Year, st.integers(1, 9998)),
    st.tuples(interval_days, interval_days).map(lambda pair: luigi.date_interval.Custom(min(pair), max(pair))),
)
paths = texts.filter(lambda text: "\x00" not in text).map(Path)
nested_tuples = st.lists(st.lists(integers | texts, max_size=3).map(tuple) | integers | texts, max_size=4).map(tuple)

EVERY_KIND = {
    "text": texts,
    "string": texts,
    "integer": integers,
    "real": floats,
    "flag": st.booleans(),
    "day": days,
    "hour": moments.map(lambda m: m.replace(minute=0, second=0, microsecond=0)),
    "minute": moments.map(lambda m: m.replace(second=0, microsecond=0)),
    "second": moments.map(lambda m: m.replace(microsecond=0)),
    "month": days,
    "year": days,
    "interval": intervals,
    "delta": st.timedeltas(min_value=datetime.timedelta(0)),
    "colour": st.sampled_from(Colour),
    "colours": st.lists(st.sampled_from(Colour), max_size=3).map(tuple),
    "listed": st.lists(json_values, max_size=4) | st.lists(json_values, max_size=4).map(tuple),
    "tupled": nested_tuples,
    "mapping": st.dictionaries(json_keys, json_values, max_size=4),
    "numerical": st.floats(min_value=-1e307, max_value=1e307),
    "whole": st.integers(min_value=-(10**29), max_value=10**29),
    "choice": st.sampled_from(["a", "b", "ü"]),
    "choices": st.lists(st.sampled_from(["a", "b", "ü"]), max_size=3).map(tuple),
    "optional": st.none() | texts,
    "optional_str": st.none() | texts,
    "optional_int": st.none() | integers,
    "optional_float": st.none() | floats,
    "optional_bool": st.none() | st.booleans(),
    "optional_dict": st.none() | st.dictionaries(json_keys, json_values, max_size=3),
    "optional_list": st.none() | st.lists(json_values, max_size=3),
    "optional_tuple": st.none() | nested_tuples,
    "optional_numerical": st.none() | st.floats(min_value=0.0, max_value=0.99),
    "optional_choice": st.none() | st.sampled_from(["a", "b"]),
    "optional_path": st.none() | paths,
    "path": paths,
    "task": st.sampled_from([Other, Leaf, EveryParameter]),
    "note": texts,
    "hidden": texts,
    "private": texts,
}
