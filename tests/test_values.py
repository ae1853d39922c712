"""Results read back with the values run() returned (astra/values.py), on both backends, in-process and via luigi."""

from __future__ import annotations

import enum
import json
import math
import sqlite3
import subprocess
import sys

import luigi
import numpy as np
import psycopg2
import pytest

from astra import values
from astra.database import Task
from astra.identity import task_hash
from astra.targets import forget_cached, read_many
from tests.helpers import assert_same, astra_many, run_luigi, subprocess_env
from tests.value_tasks import SAMPLES, ReadsBack, Returns, ReturnsBatch, ReturnsInCompletion, everything


def expected(value: object) -> object:
    """What reading ``value`` back must give: numpy values as the Python values they hold, arrays as lists."""
    if isinstance(value, np.ndarray):
        return expected(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: expected(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [expected(item) for item in value]
    return value


def strict_json(text: str) -> object:
    def reject(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def row(task: luigi.Task) -> Task:
    return Task.get(Task.task_hash == task_hash(task))


def test_every_kind_of_value_reads_back_in_process(database_url):
    tasks = [Returns(kind="everything"), ReturnsInCompletion(kind="everything"), Returns(kind="scalar")]
    assert luigi.build(tasks, local_scheduler=True)
    want = expected(everything())
    forget_cached()
    assert_same(tasks[0].output().read(), want)
    assert_same(tasks[1].output().read(), want)
    assert_same(tasks[2].output().read(), 2.5)
    got = read_many([task.output() for task in tasks])
    assert_same(got, [want, want, 2.5])
    assert len(got[0]["array_2000"]) == 2000 and got[0]["np_int64_near_2_62"] == 2**62 + 1


@pytest.mark.slow
def test_values_read_back_through_the_luigi_command_line_and_astra_show(database_url):
    kinds = ["everything", "nan", "array", "plain"]
    result = run_luigi("--module", "tests.value_tasks", "ReadsBack", "--kinds", json.dumps(kinds), "--local-scheduler")
    assert "5 ran successfully" in result.stdout, result.stdout
    forget_cached()
    wants = {kind: expected(SAMPLES[kind]()) for kind in kinds}
    # read_many inside the luigi process gave the same values back, and recorded them again.
    assert_same(ReadsBack(kinds=kinds).output().read(), wants)
    for kind in kinds:
        assert_same(Returns(kind=kind).output().read(), wants[kind])
    shown, text = astra_many(
        ("tasks", "show", "--json", str(row(Returns(kind="everything")).pk)),
        ("tasks", "show", str(row(Returns(kind="nan")).pk)),
    )
    assert shown.returncode == 0, shown.stderr
    record = strict_json(shown.stdout)["result"]
    assert_same(values.decode(record), wants["everything"])
    # NaN and infinities appear in --json as tagged objects, dates as ISO 8601.
    assert record["nan"] == {"$float": "NaN"} and record["minus_inf"] == {"$float": "-Infinity"}
    assert record["array_with_nan"] == [1.0, {"$float": "NaN"}, {"$float": "Infinity"}, {"$float": "-Infinity"}]
    assert record["date"] == {"$date": "2026-11-25"}
    assert record["datetime"] == {"$datetime": "2026-11-25T17:30:01.250000+00:00"}
    assert record["snr"] == 12.25 and record["np_int64_near_2_62"] == 2**62 + 1
    assert '{"snr": {"$float": "NaN"}}' in text.stdout, text.stdout


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("object", 'result["thing"]: cannot store a value of type object'),
        ("int_keys", 'result["per_order"]: cannot store the dict key 1 of type int (keys must be strings)'),
        ("cycle", 'result["loop"][1]: cannot store a list that contains itself'),
        ("complex", 'result["z"][1]: cannot store a value of type complex'),
        ("nul_key", "result[\"fit\"]: cannot store the dict key 'flux\\x00err': a key cannot hold NUL characters"),
    ],
)
def test_a_value_that_cannot_be_stored_fails_the_task(database_url, kind, message):
    for task in (Returns(kind=kind), ReturnsInCompletion(kind=kind)):
        assert not luigi.build([task], local_scheduler=True)
        recorded = row(task)
        assert recorded.status == "failed" and recorded.result is None, recorded.status
        assert message in recorded.error, recorded.error
        assert recorded.completed is None
        forget_cached()
        assert not task.complete()


@pytest.mark.slow
def test_an_unstorable_value_fails_through_the_luigi_command_line(database_url):
    result = run_luigi("--module", "tests.value_tasks", "Returns", "--kind", "object", "--local-scheduler")
    assert "1 failed" in result.stdout, result.stdout
    recorded = row(Returns(kind="object"))
    assert recorded.status == "failed"
    assert recorded.error.startswith('UnstorableError: result["thing"]: cannot store a value of type object')


def test_a_batch_chunk_with_one_bad_item_records_the_others(database_url):
    kinds = ["plain", "object", "nan", "array", "int_keys", "scalar"]
    batch = ReturnsBatch(kinds=kinds)
    assert not luigi.build([batch], local_scheduler=True)
    forget_cached()
    for kind in kinds:
        recorded = row(Returns(kind=kind))
        if kind in ("object", "int_keys"):
            assert recorded.status == "failed" and "cannot store" in recorded.error and recorded.result is None
        else:
            assert recorded.status == "done", (kind, recorded.error)
            assert_same(Returns(kind=kind).output().read(), expected(SAMPLES[kind]()))
    assert 'result["thing"]: cannot store a value of type object' in row(Returns(kind="object")).error


def test_a_batch_item_whose_result_has_too_many_digits_fails_alone(database_url):
    """An int Python will not write as text (over 4300 digits) is a result that cannot be stored: that item fails,
    as one with an object in its result does, and the rest of its chunk is recorded."""
    batch = ReturnsBatch(kinds=["plain", "huge_int"])
    assert not luigi.build([batch], local_scheduler=True)
    forget_cached()
    assert row(Returns(kind="plain")).status == "done"
    huge = row(Returns(kind="huge_int"))
    assert huge.status == "failed" and 'result["n"]: cannot store' in huge.error, huge.error


@pytest.mark.slow
def test_a_batch_from_the_luigi_command_line(database_url):
    kinds = ["everything", "cycle", "nan"]
    result = run_luigi(
        "--module", "tests.value_tasks", "ReturnsBatch", "--kinds", json.dumps(kinds), "--local-scheduler"
    )
    assert "1 of 3 items failed" in result.stdout, result.stdout
    assert row(Returns(kind="cycle")).status == "failed"
    assert_same(Returns(kind="everything").output().read(), expected(everything()))
    assert_same(Returns(kind="nan").output().read(), {"snr": math.nan})


def test_result_column_is_queryable_json(database_url, backend):
    assert luigi.build([Returns(kind="everything"), Returns(kind="nan"), Returns(kind="plain")], local_scheduler=True)
    hashes = [task_hash(Returns(kind=kind)) for kind in ("everything", "nan", "plain")]
    if backend == "postgresql":
        connection = psycopg2.connect(database_url)
        try:
            cursor = connection.cursor()
            cursor.execute(
                "select data_type from information_schema.columns "
                "where table_schema = 'astra' and table_name = 'task' and column_name = 'result'"
            )
            assert cursor.fetchone() == ("jsonb",)
            query = (
                "select result->>'snr', (result->>'int')::int, result->'nan'->>'$float', result->>'np_int64_near_2_62' "
            )
            cursor.execute(query + "from astra.task where task_hash = decode(%s, 'hex')", (hashes[0],))
            assert cursor.fetchone() == ("12.25", 7, "NaN", str(2**62 + 1))
            # A NaN snr is a tagged object, not a number: its ->> text is no float, so filter on the type first.
            cursor.execute(
                "select encode(task_hash, 'hex') from astra.task where jsonb_typeof(result->'snr') = 'number' "
                "and (result->>'snr')::float > 12.3"
            )
            assert cursor.fetchall() == [(hashes[2],)]
            cursor.execute("create index task_result_snr on astra.task ((result->>'snr'))")
            cursor.execute(
                "select jsonb_array_length(result->'array_2000') from astra.task where task_hash = decode(%s, 'hex')",
                (hashes[0],),
            )
            assert cursor.fetchone() == (2000,)
            connection.commit()
        finally:
            connection.close()
    else:
        connection = sqlite3.connect(database_url[len("sqlite:///") :])
        try:
            cursor = connection.execute(
                "select json_extract(result, '$.snr'), json_extract(result, '$.np_int64_near_2_62'), "
                "json_extract(result, '$.nan.$float'), json_array_length(result, '$.array_2000') "
                "from task where task_hash = ?",
                (bytes.fromhex(hashes[0]),),  # the key's 32 bytes (schema 11)
            )
            assert cursor.fetchone() == (12.25, 2**62 + 1, "NaN", 2000)
            rows = connection.execute(
                "select hex(task_hash) from task where json_type(result, '$.snr') = 'real' "
                "and json_extract(result, '$.snr') > 12.3"
            ).fetchall()
            assert rows == [(hashes[2].upper(),)]
            assert connection.execute("select count(*) from task where json_valid(result)").fetchone() == (3,)
        finally:
            connection.close()


def test_dumps_is_strict_json_and_loads_reverses_it():
    value = everything()
    text = values.dumps(value)
    strict_json(text)
    assert_same(values.loads(text), expected(value))
    assert_same(values.decode(json.loads(text)), expected(value))
    assert values.dumps(values.encode(value)) == text  # text written once is stored as it is
    frozen = luigi.DictParameter().normalize({"b": [1, 2], "a": {"c": 1}})  # a Mapping, not a dict
    assert values.loads(values.dumps(frozen)) == {"b": [1, 2], "a": {"c": 1}}


def test_unstorable_values_name_where_they_are():
    with pytest.raises(values.UnstorableError, match=r'^result\["a"\]\[2\]\["b"\]: cannot store a value of type set'):
        values.dumps({"a": [1, 2, {"b": {3}}]})
    with pytest.raises(values.UnstorableError, match="numpy array of dtype complex128"):
        values.dumps({"z": np.zeros(3, dtype=complex)})
    with pytest.raises(values.UnstorableError, match=r'result\["flux"\]: cannot store a MaskedArray'):
        values.dumps({"flux": np.ma.masked_array([1.0, 2.0], mask=[True, False])})
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(values.UnstorableError, match="nested too deeply"):
        values.dumps(deep)


def test_a_str_enum_is_stored_as_its_value():
    """``str()`` of a ``class Band(str, Enum)`` member is "Band.G" (Python 3.11): stored so, it read back as a value
    run() never returned. Its value, as json.dumps writes it, in a result and as a dict key."""

    class Band(str, enum.Enum):
        G = "g"

    assert values.dumps({"band": Band.G, Band.G: [Band.G]}) == json.dumps(
        {"band": Band.G, Band.G: [Band.G]}, separators=(",", ":")
    )
    assert values.loads(values.dumps({"band": Band.G})) == {"band": "g"}


NUMPY_BEING_IMPORTED = """
import datetime, sys, threading
from astra import values
assert "numpy" not in sys.modules
importer = threading.Thread(target=lambda: __import__("numpy"))
importer.start()
errors = 0
while importer.is_alive():
    try:
        values.encode({"day": datetime.date(2026, 1, 1)})  # a value asked whether it is numpy's
    except AttributeError as exc:
        errors += 1
        error = exc
print(errors, error if errors else "")
"""


def test_a_value_written_while_another_thread_imports_numpy():
    """A batch's writer thread imports numpy for its first COPY while the main thread checks the next chunk's results:
    items failed with "AttributeError: partially initialized module 'numpy' has no attribute 'generic'" (159 of a
    10^5-item batch whose connections were cut); the check waits for that import now."""
    ran = subprocess.run(
        [sys.executable, "-c", NUMPY_BEING_IMPORTED], env=subprocess_env(), capture_output=True, text=True
    )
    assert ran.returncode == 0 and ran.stdout.split()[0] == "0", ran.stdout + ran.stderr
