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
import time
import weakref
from collections.abc import Iterable

import luigi
import peewee
from luigi.task import flatten

from astra.database import DatabaseError, describe, queries
from astra.identity import task_hash


class _Cache:
    pid: int | None = None
    done: set[str] = set()
    not_done: dict[str, float] = {}  # hash -> when the database said so (time.monotonic())
    unchecked: weakref.WeakSet = weakref.WeakSet()  # BaseTasks created here whose state was never asked

    @classmethod
    def here(cls) -> type[_Cache]:
        # A forked worker inherits the parent's knowledge of what is done, which stays true; the one-shot
        # negatives it must find out itself.
        if cls.pid != os.getpid():
            cls.pid, cls.not_done, cls.unchecked = os.getpid(), {}, weakref.WeakSet()
        return cls


#: Seconds for which a "not done" from a prefetch may answer one ``complete()``; after that, ask again.
NOT_DONE_FOR = 60.0


def forget_cached() -> None:
    """Drop everything this process has cached about which tasks are done."""
    _Cache.done, _Cache.not_done, _Cache.unchecked = set(), {}, weakref.WeakSet()


def note_created(task: luigi.Task) -> None:
    """Remember a new task: the next time the database must be asked about one task, it is asked about it too."""
    _Cache.here().unchecked.add(task)


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
        asked = cache.not_done.pop(self.task_hash, None)
        if asked is not None and time.monotonic() - asked < NOT_DONE_FOR:
            return False
        try:
            # Its siblings are likely next: a plain luigi WrapperTask's complete() asks its children one by one,
            # and so does luigi's worker. So ask about every task this process created and never asked about.
            _ask([self.task_hash, *_unchecked(cache)])
        except peewee.DatabaseError as exc:
            raise DatabaseError(
                f"astra: could not check whether {self.task_id} is done in {describe()}: {exc}".strip()
            ) from exc
        cache.not_done.pop(self.task_hash, None)
        return self.task_hash in cache.done

    def mark_done(self) -> None:
        """Remember in this process that the task is done (after this process recorded it)."""
        _Cache.here().done.add(self.task_hash)
        _Cache.not_done.pop(self.task_hash, None)

    def read(self) -> object:
        """The value the task's ``run()`` returned, or None if it is not done."""
        return read_many([self])[0]


def database_targets(tasks: Iterable[luigi.Task]) -> list[DatabaseTarget]:
    """The DatabaseTargets among the outputs of ``tasks``."""
    return [target for task in tasks for target in flatten(task.output()) if isinstance(target, DatabaseTarget)]


def prefetch(tasks: Iterable[luigi.Task]) -> None:
    """Find out with one query (per chunk) which of ``tasks`` are done, for their next ``complete()`` calls."""
    cache = _Cache.here()
    tasks = list(tasks)
    for task in tasks:
        cache.unchecked.discard(task)
    _ask([t.task_hash for t in database_targets(tasks) if t.task_hash not in cache.done])


def completed(tasks: Iterable[luigi.Task]) -> list[bool]:
    """Whether each of ``tasks`` is complete, in order: ``task.complete()`` for each, with one query for all."""
    tasks = list(tasks)
    prefetch(tasks)
    return [task.complete() for task in tasks]


def _ask(hashes: list[str]) -> None:
    if not hashes:
        return
    cache = _Cache.here()
    done = queries.done_hashes(hashes)
    cache.done |= done
    now = time.monotonic()
    cache.not_done.update((h, now) for h in hashes if h not in done)


def _unchecked(cache: type[_Cache]) -> list[str]:
    """The hashes of the tasks created in this process that were never asked about (and forget them)."""
    hashes = []
    while cache.unchecked:
        # Hashing a task creates the tasks it requires; they are taken in the next round.
        tasks = list(cache.unchecked)
        cache.unchecked.clear()
        for task in tasks:
            try:
                targets = database_targets([task])
            except Exception:  # its requires() or output() failed: luigi finds out when it checks the task itself
                continue
            hashes.extend(t.task_hash for t in targets if t.task_hash not in cache.done)
    return [h for h in hashes if h not in cache.not_done]


def read_many(targets: list[DatabaseTarget]) -> list[object]:
    """The results of many tasks in one query (per chunk), in the order of ``targets``; None where not done."""
    found = queries.results([t.task_hash for t in targets])
    return [json.loads(found[t.task_hash]) if found.get(t.task_hash) is not None else None for t in targets]
