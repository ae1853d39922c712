"""Hash keys as the database stores them: a sha256 as its 32 bytes (``bytea`` / ``BLOB``), hex text in Python.

``astra.task.task_hash`` and ``astra.parameter.parameter_hash`` hold the digest itself (schema 11): half the bytes
of its hex text in the row and in the unique index every done check probes. astra's Python code passes the hex
text everywhere (:mod:`astra.identity` makes it); only the database boundary converts, here: the peewee field
:class:`astra.database.models.HashField` for model queries, the dialect for its own SQL. In SQL, read one as text
with ``encode(task_hash, 'hex')`` (PostgreSQL) or ``lower(hex(task_hash))`` (SQLite).
"""

from __future__ import annotations

#: Bytes in a stored key (a sha256 digest).
SIZE = 32


def stored(key: str | bytes) -> bytes:
    """The key ``key`` (hex text, as astra.identity writes it) as the database stores it."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    return bytes.fromhex(key)


def read(value: bytes | memoryview | None) -> str | None:
    """A stored key as hex text (psycopg2 reads a ``bytea`` as a memoryview, sqlite3 a BLOB as bytes)."""
    return None if value is None else bytes(value).hex()


def prefix_range(prefix: str) -> tuple[bytes, bytes | None]:
    """The stored keys whose hex text starts with ``prefix`` (hex digits, any length), as a range [low, high) of
    the index (high None: no upper bound). An odd number of digits fixes the first half of the last byte."""
    prefix = prefix.lower()
    low = bytes.fromhex(prefix + "0" * (len(prefix) % 2))
    stripped = prefix.rstrip("f")
    if not stripped:
        return low, None  # all f: every key from low up
    # The next prefix of the same length: the last digit that is not f, plus one, and nothing after it.
    following = stripped[:-1] + format(int(stripped[-1], 16) + 1, "x")
    return low, bytes.fromhex(following + "0" * (len(following) % 2))
