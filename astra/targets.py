"""``DatabaseTarget``: a luigi Target that exists when its task is recorded as done in the astra database.

Checks are answered from a per-process cache where possible. :func:`prefetch` fills it with one query for many
tasks; ``BaseTask.deps()`` calls it, so when luigi's worker walks a DAG it asks the database once per task that has
dependencies rather than once per task. Only "done" is kept for good (a task never becomes undone behind our back,
short of ``astra tasks forget``); "not done" is used once and then asked again, because another worker may finish
the task at any moment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import luigi
import peewee
from luigi.task import flatten

from astra.database import DatabaseError, describe, queries
from astra.identity import task_hash


class _Cache:
    pid: int | None = None
    done: set[str] = set()
    not_done: set[str] = set()

    @classmethod
    def here(cls) -> type[_Cache]:
        # A forked worker inherits the parent's knowledge of what is done, which stays true; the one-shot
        # negatives it must find out itself.
        if cls.pid != os.getpid():
            cls.pid, cls.not_done = os.getpid(), set()
        return cls


def forget_cached() -> None:
    """Drop everything this process has cached about which tasks are done."""
    _Cache.done, _Cache.not_done = set(), set()


class DatabaseTarget(luigi.Target):
    """The completion record of one task: exists when ``astra.task`` has a done row with its hash."""

    def __init__(self, task: luigi.Task) -> None:
        self.task_hash = task_hash(task)
        self.task_id = task.task_id

    def __repr__(self) -> str:
        return f"DatabaseTarget({self.task_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseTarget) and other.task_hash == self.task_hash

    def __hash__(self) -> int:
        return hash(self.task_hash)

    def exists(self) -> bool:
        cache = _Cache.here()
        if self.task_hash in cache.done:
            return True
        if self.task_hash in cache.not_done:
            cache.not_done.discard(self.task_hash)
            return False
        try:
            done = bool(queries.done_hashes([self.task_hash]))
        except peewee.DatabaseError as exc:
            raise DatabaseError(
                f"astra: could not check whether {self.task_id} is done in {describe()}: {exc}".strip()
            ) from exc
        if done:
            cache.done.add(self.task_hash)
        return done

    def mark_done(self) -> None:
        """Remember in this process that the task is done (after this process recorded it)."""
        _Cache.here().done.add(self.task_hash)
        _Cache.not_done.discard(self.task_hash)

    def read(self) -> object:
        """The value the task's ``run()`` returned, or None if it is not done."""
        return read_many([self])[0]


def database_targets(tasks: Iterable[luigi.Task]) -> list[DatabaseTarget]:
    """The DatabaseTargets among the outputs of ``tasks``."""
    return [target for task in tasks for target in flatten(task.output()) if isinstance(target, DatabaseTarget)]


def prefetch(tasks: Iterable[luigi.Task]) -> None:
    """Find out with one query (per chunk) which of ``tasks`` are done, for their next ``complete()`` calls."""
    cache = _Cache.here()
    wanted = [t.task_hash for t in database_targets(tasks) if t.task_hash not in cache.done]
    if not wanted:
        return
    done = queries.done_hashes(wanted)
    cache.done |= done
    cache.not_done |= set(wanted) - done


def read_many(targets: list[DatabaseTarget]) -> list[object]:
    """The results of many tasks in one query (per chunk), in the order of ``targets``; None where not done."""
    found = queries.results([t.task_hash for t in targets])
    return [json.loads(found[t.task_hash]) if found.get(t.task_hash) is not None else None for t in targets]
