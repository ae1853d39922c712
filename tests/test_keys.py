"""The sha256 keys as stored (schema 11): 32 bytes in the database, hex text in Python; a hex prefix of any length is
a range of the index."""

from __future__ import annotations

import hashlib

import pytest

from astra.database import Task, records
from astra.database.keys import prefix_range, read, stored
from astra.database.models import utcnow

KEYS = [hashlib.sha256(str(i).encode()).digest() for i in range(5000)] + [b"\xff" * 32, b"\x00" * 32]


@pytest.mark.parametrize("prefix", ["a", "ab", "abc", "f", "ff", "fff", "0", "00", "9", "fa0f", "abcf", "ABC"])
def test_a_prefix_is_a_range_of_keys(prefix):
    low, high = prefix_range(prefix)
    found = {key for key in KEYS if key >= low and (high is None or key < high)}
    assert found == {key for key in KEYS if key.hex().startswith(prefix.lower())}


def test_keys_go_in_as_bytes_and_come_back_as_hex():
    key = hashlib.sha256(b"x").hexdigest()
    assert stored(key) == bytes.fromhex(key) and read(memoryview(stored(key))) == key and read(None) is None


def test_a_task_is_found_by_a_prefix_of_its_hash(database_url):
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]
    for i, key in enumerate(keys):
        Task.create(task_module="m", task_name="T", task_id=f"T_{i}", task_hash=key, version="", status="done",
                    created=utcnow(), attempts=1, astra_version="0")  # fmt: skip
    for key in keys[:20]:
        for length in (5, 6, 7, 64):
            assert records.resolve(key[:length]).task_hash == key
    letter = next(key[0] for key in keys if not key[0].isdigit())  # a digit alone would name a pk
    with pytest.raises(records.AmbiguousReferenceError):
        records.resolve(letter)
