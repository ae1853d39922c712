"""``DatabaseTarget``: a luigi Target that exists when its task is recorded as done in the astra database.

Checks are answered from a per-process cache where possible. :func:`prefetch` fills it with one query for many
tasks; ``BaseTask.deps()`` calls it, so when luigi's worker walks a DAG it asks the database once per task that has
dependencies rather than once per task. Only "done" is kept for good (a task never becomes undone behind our back,
short of ``astra tasks forget``); "not done" is used once and then asked again, because another worker may finish
the task at any moment.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import luigi
import peewee
from luigi.cmdline_parser import CmdlineParser
from luigi.task import flatten

from astra import config, outputs
from astra.database import DatabaseError, connection, describe, output_tables, queries
from astra.identity import IdentityError, recorded_task_hash, task_hash


class Known:
    """What this process knows of which tasks are done: the answers ``complete()`` is given without a query.

    ``done`` holds for good (a task never becomes undone behind our back, short of ``astra tasks forget``);
    ``not_done`` (hash -> when the database said so, by ``time.monotonic()``) answers one check, for at most
    :data:`NOT_DONE_FOR` seconds, because another worker may finish the task at any moment; ``unchecked`` holds
    the BaseTasks created here whose state was never asked (by ``id()``: a WeakSet would hash them, which makes
    luigi work out their task_id, see BaseTask.task_id), asked about together with the next one that is; ``created``
    counts the BaseTasks created here, to tell how many were created to identify one task (those below it).
    """

    def __init__(self, done: set[str] | None = None) -> None:
        self.done: set[str] = done if done is not None else set()
        self.connections_lost = connection.connections_lost  # lost one after this: known() starts afresh
        self.databases = _databases()  # and so it does in another database, or another luigi run's
        self.not_done: dict[str, float] = {}
        #: The tasks exists() has answered: a "not done" got for one of them by a prefetch would wait unused (luigi
        #: checks a task once while it schedules) until luigi's check of a task's inputs before it runs, and answer
        #: that, however long ago another process finished the input (a run failed: "Unfulfilled dependency").
        self.answered: set[str] = set()
        self.unchecked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        #: The classes without an output model whose done tasks :func:`look_for_lost_model` looked at.
        self.looked_at: set[type] = set()
        self.created = 0

    def mark_done(self, task_hash: str) -> None:
        """The task is done (this process recorded it, or the database said so)."""
        self.done.add(task_hash)
        self.not_done.pop(task_hash, None)

    def mark_not_done(self, task_hash: str) -> None:
        """The task is done no more (this process reopened it)."""
        self.done.discard(task_hash)

    def note_created(self, task: luigi.Task) -> None:
        """Remember a new task: the next time the database must be asked about one task, it is asked about it too."""
        self.created += 1
        self.unchecked[id(task)] = task


def _databases() -> tuple:
    """What tells this process's databases apart, cheaply enough for each ``complete()``: how many times it moved to
    another (its settings changed, found as the database was used), $ASTRA_DATABASE_URL, and the ``luigi`` command
    line's parser (a new one per run). A script or notebook that changes the database between two runs must not be
    told that a task done in the first is done in the other."""
    return connection.databases_changed, os.environ.get(config.DATABASE_URL_ENV), CmdlineParser.get_instance()


_known = Known()


def known() -> Known:
    """This process's :class:`Known`; a new one once the connection to the server has been lost (a crash may have
    lost done records this process saw committed, which luigi would otherwise trust: a task would run on an input
    that is not there)."""
    global _known
    if _known.connections_lost != connection.connections_lost or _known.databases != _databases():
        _known = Known()
    return _known


def _forked() -> None:
    # A forked worker inherits the parent's knowledge of what is done, which stays true; the one-shot negatives
    # and the tasks to ask about it must find out itself.
    global _known
    _known = Known(done=_known.done)


os.register_at_fork(after_in_child=_forked)


#: Seconds for which a "not done" from a prefetch may answer one ``complete()``; after that, ask again.
NOT_DONE_FOR = 60.0


def forget_cached() -> None:
    """Drop everything this process has cached about which tasks are done."""
    global _known
    _known = Known()


def note_created(task: luigi.Task) -> None:
    """Remember a new task (see :meth:`Known.note_created`)."""
    known().note_created(task)


class DatabaseTarget(luigi.Target):
    """The completion record of one task: exists when ``astra.task`` has a done row with its hash.

    A task whose identity cannot be worked out (a ``requires()`` at or below it raises) has no record and is
    simply not done: luigi then expands it, meets the error where it is, and names that task, while the rest of the
    DAG runs as it would without astra. ``identity_error`` says why.
    """

    def __init__(self, task: luigi.Task) -> None:
        self.task_id = task.task_id
        self.task_class = type(task)
        self.output_model = outputs.output_model(task)
        self.identity_error: IdentityError | None = None
        created = known().created
        try:
            self.task_hash: str | None = task_hash(task)
        except IdentityError as exc:
            self.task_hash, self.identity_error = None, exc
        self.created_below = known().created - created  # tasks created to work out its identity: all below it

    def __repr__(self) -> str:
        return f"DatabaseTarget({self.task_id})"

    def _key(self) -> tuple[str | None, str]:
        # One task, one hash (luigi's task_id may differ for equal dicts); unidentified tasks by their task_id.
        return (self.task_hash, "") if self.task_hash is not None else (None, self.task_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseTarget) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def exists(self) -> bool:
        if self.output_model is not None:
            output_tables.ready(self.output_model)  # once per process: stop now if its table is missing
        if self.task_hash is None:
            return False
        cache = known()
        if self.task_hash in cache.done:
            return self._found_done()
        asked = cache.not_done.pop(self.task_hash, None)
        cache.answered.add(self.task_hash)
        if asked is not None and time.monotonic() - asked < NOT_DONE_FOR:
            return False
        try:
            if 2 * getattr(self, "created_below", 0) > len(cache.unchecked):
                # Most tasks never asked about were created to identify this one, so they are below it, and luigi
                # looks at them only if this one is not done (a root's check): ask about this one alone first.
                _ask([self.task_hash])
                if self.task_hash in cache.done:
                    return self._found_done()
            # Its siblings are likely next: a plain luigi WrapperTask's complete() asks its children one by one,
            # and so does luigi's worker. So ask about every task this process created and never asked about.
            _ask([self.task_hash, *_unchecked(cache)])
        except peewee.DatabaseError as exc:
            raise DatabaseError(
                f"astra: could not check whether {self.task_id} is done in {describe()}: {exc}".strip()
            ) from exc
        cache.not_done.pop(self.task_hash, None)
        return self.task_hash in cache.done and self._found_done()

    def _found_done(self) -> bool:
        # Looked at only once a task of a class without an output model is found done: a class that lost its
        # model, its version unchanged, would have the tasks that wrote rows count as done.
        if self.output_model is None:
            look_for_lost_model(self.task_class)
        return True

    def mark_done(self) -> None:
        """Remember in this process that the task is done (after this process recorded it)."""
        known().mark_done(self.task_hash)

    def read(self) -> object:
        """The value the task's ``run()`` returned, or None if it is not done.

        For a task with an ``output_model``: its output row (a model instance), or a list when it made several.
        """
        return read_many([self])[0]


class BatchTarget(luigi.Target):
    """What an astra.BatchTask makes: the records of its items. It exists when every item is done, as the batch's
    ``complete()`` says; a task that requires the batch is linked to each item (see :func:`recorded_inputs`)."""

    def __init__(self, batch: luigi.Task) -> None:
        self.batch = batch

    def __repr__(self) -> str:
        # The same for each instance of one batch: luigi counts a missing input by its text to stop rescheduling
        # the task that needs it, and an address in it made each time a new one (a loop of failed runs).
        return f"BatchTarget({self.batch.task_id})"

    def exists(self) -> bool:
        return self.batch.complete()

    def read(self) -> list:
        """The values its items' ``run()`` returned (or their output rows), in the order of the batch's
        ``parameter_sets()``; None for an item not done."""
        return read_many([self])[0]


class _ItemTarget:
    """What :func:`read_many` needs of an item of a batch: its hash and output model."""

    __slots__ = ("task_hash", "output_model")

    def __init__(self, task_hash: str, output_model: type | None) -> None:
        self.task_hash, self.output_model = task_hash, output_model


def look_for_lost_model(cls: type) -> None:
    """Stop if task class ``cls``, which declares no output model, had one when its done tasks of this version ran
    (:func:`astra.database.output_tables.ready_without_model`, which looks once per database). Asked of it only once
    per :class:`Known`: each ask of the database costs a look at the settings (~2 us), at each done task found. An
    output_model that is a property may be None for some tasks of a class and not for others: not looked at."""
    cache = known()
    if cls not in cache.looked_at:
        if getattr(cls, "output_model", None) is None:
            output_tables.ready_without_model(cls)
        cache.looked_at.add(cls)


def database_targets(tasks: Iterable[luigi.Task]) -> list[DatabaseTarget]:
    """The DatabaseTargets among the outputs of ``tasks``."""
    return [target for task in tasks for target in flatten(task.output()) if isinstance(target, DatabaseTarget)]


def recorded_inputs(tasks: Iterable[luigi.Task], items: bool = True) -> dict[str, object]:
    """The astra tasks among ``tasks`` by hash (each the task, or a batch's item): what the record of a task that
    needs ``tasks`` links to. A batch has no record of its own, so a task that requires (or yields) one is linked
    to each item, as it would be had it required the items themselves: `astra tasks forget --cascade` of an item
    reaches it, and its record checks they are still done. So does a luigi.WrapperTask (no output of its own): it
    stands for what it requires. ``items=False``: an item's hash leads to its batch's BatchTarget instead
    (:func:`input_name` names it), which keeps a hash per item rather than the item (~700 B)."""
    found: dict[str, object] = {}
    todo, seen = list(tasks), set()
    while todo:
        task = todo.pop()
        if id(task) in seen:
            continue
        seen.add(id(task))
        if isinstance(task, luigi.WrapperTask):
            todo.extend(flatten(task.requires()))
            continue
        for target in flatten(task.output()):
            if isinstance(target, DatabaseTarget) and target.task_hash is not None:
                found[target.task_hash] = task
            elif isinstance(target, BatchTarget):
                found.update((item.task_hash, item if items else target) for item in target.batch.items())
    return found


def input_name(found: object, task_hash: str) -> str:
    """The name (as luigi writes it) of the input ``task_hash``, found by :func:`recorded_inputs` as ``found``."""
    if isinstance(found, BatchTarget):
        found = next((item for item in found.batch.items() if item.task_hash == task_hash), found.batch)
    return str(found)


def prefetch(tasks: Iterable[luigi.Task]) -> None:
    """Find out with one query (per chunk) which of ``tasks`` are done, for their next ``complete()`` calls."""
    cache = known()
    tasks = list(tasks)
    targets = []
    for task in tasks:
        cache.unchecked.pop(id(task), None)
        try:
            targets += database_targets([task])
        except Exception:  # its output() fails: luigi finds out when it checks that task, and names it
            continue
    now = time.monotonic()
    _ask(
        [
            t.task_hash
            for t in targets
            # A fresh "not done" answers the next check already: a DAG found not done in one query (see
            # _unchecked) is then walked without asking again, however deep it is.
            if t.task_hash is not None
            and t.task_hash not in cache.done
            and t.task_hash not in cache.answered  # its next check asks the database itself
            and now - cache.not_done.get(t.task_hash, -NOT_DONE_FOR) >= NOT_DONE_FOR
        ]
    )


def completed(tasks: Iterable[luigi.Task]) -> list[bool]:
    """Whether each of ``tasks`` is complete, in order: ``task.complete()`` for each, with one query for all."""
    tasks = list(tasks)
    prefetch(tasks)
    return [task.complete() for task in tasks]


def _ask(hashes: list[str]) -> None:
    if not hashes:
        return
    cache = known()
    done = complete_hashes(hashes)
    cache.done |= done
    now = time.monotonic()
    cache.not_done.update((h, now) for h in hashes if h not in done)


def complete_hashes(hashes: Iterable[str]) -> set[str]:
    """Which of the tasks ``hashes`` are complete, as their ``complete()`` would say: recorded done, and their
    dynamic dependencies still as recorded (see :func:`stale_dynamic_dependencies`)."""
    found = queries.done_rows(hashes)
    done = {h for h, dynamic in found.items() if not dynamic}
    with_dynamic = {h: dynamic for h, dynamic in found.items() if dynamic}
    if with_dynamic:
        stale = stale_dynamic_dependencies(with_dynamic)
        done.update(h for h in with_dynamic if h not in stale)
    return done


def reopen_if_stale(task: luigi.Task) -> bool:
    """If ``task`` is recorded done but its dynamic dependencies changed, mark it failed, saying so. False if done.

    A claim finds such a task done; this lets it be claimed (and run) again. True also when the task is no longer
    recorded as done at all (another worker reopened or forgot it): then the caller should simply claim again.
    """
    target = DatabaseTarget(task)
    state = queries.done_attempt(target.task_hash)
    if state is None:
        return True
    attempts, dynamic = state
    if not dynamic:
        return False
    reason = stale_dynamic_dependencies({target.task_hash: dynamic}).get(target.task_hash)
    if reason is None:
        return False
    queries.reopen(target.task_hash, attempts, f"not complete any more: {reason}")
    known().mark_not_done(target.task_hash)
    return True


@dataclass(frozen=True)
class Stale:
    """Why a done task is not complete any more: one of its dynamic dependencies changed. ``str()`` says it.

    Either ``missing`` of the ``expected`` dynamic dependencies are no longer recorded, or ``dependency`` (as
    ``Name(key=value, ...)``) is recorded with ``status`` other than done, or it is done but under
    ``recorded_hash`` while its class makes it ``current_hash`` today (None if the class cannot be rebuilt).
    """

    expected: int
    missing: int = 0
    dependency: str | None = None
    status: str | None = None
    recorded_hash: str | None = None
    current_hash: str | None = None

    def __str__(self) -> str:
        if self.missing:
            return f"{self.missing} of its {self.expected} dynamic dependencies are no longer recorded"
        if self.status != queries.DONE:
            return f"its dynamic dependency {self.dependency} is {self.status}"
        return f"its dynamic dependency {self.dependency} is now a different task (a new version or upstream)"


def stale_dynamic_dependencies(tasks: dict[str, int]) -> dict[str, Stale]:
    """Which of the done ``tasks`` (hash -> how many dynamic dependencies it recorded) are not complete, and why.

    luigi learns of a dynamic dependency only by running the task that yields it, so a change to one (a new
    ``version``, a forgotten record) could not make the dependant run again by itself. Instead, a done task with
    recorded dynamic dependencies is complete only while each of them still is: recorded as done, under the hash
    its class gives it today for the recorded parameters (rebuilt from the record), and complete by this same rule.
    A task whose dynamic dependencies changed therefore runs again, yielding their current versions. One query
    (two with parameters) per level of nested dynamic dependencies; the answers are kept like any other "done".
    """
    cache = known()
    stale: dict[str, Stale] = {}
    needs: dict[str, list[str]] = {}  # a task whose own records are current -> dynamic dependencies it needs
    frontier = dict(tasks)
    while frontier:
        recorded = queries.dynamic_dependencies(frontier)
        following: dict[str, int] = {}
        for task, expected in frontier.items():
            dependencies = recorded.get(task, [])
            reason = None
            if len(dependencies) < expected:
                reason = Stale(expected, missing=expected - len(dependencies))
            for dependency in dependencies:
                if reason:
                    break
                name = f"{dependency.task_name}({', '.join(f'{k}={v}' for k, v in dependency.parameters.items())})"
                if dependency.status != queries.DONE:
                    reason = Stale(expected, dependency=name, status=dependency.status)
                else:
                    current = recorded_task_hash(dependency.task_module, dependency.task_name, dependency.parameters)
                    if current != dependency.task_hash:
                        reason = Stale(expected, 0, name, dependency.status, dependency.task_hash, current)
            if reason:
                stale[task] = reason
                continue
            needs[task] = [d.task_hash for d in dependencies]
            for dependency in dependencies:
                seen = dependency.task_hash in cache.done or dependency.task_hash in needs
                if dependency.dynamic_dependencies and not seen:
                    following[dependency.task_hash] = dependency.dynamic_dependencies
        frontier = following
    # A task is complete when everything it needs is; deeper levels were found later, so settle those first.
    changed = True
    while changed:
        changed = False
        for task in reversed(needs):
            if task in stale:
                continue
            broken = next((d for d in needs[task] if d in stale), None)
            if broken is not None:
                stale[task] = f"its dynamic dependencies are not complete: {stale[broken]}"
                changed = True
    return {task: reason for task, reason in stale.items() if task in tasks}


def _unchecked(cache: Known) -> list[str]:
    """The hashes of the tasks created in this process that were never asked about (and forget them)."""
    hashes = []
    while cache.unchecked:
        # Hashing a task creates the tasks it requires; they are taken in the next round.
        tasks = list(cache.unchecked.values())
        cache.unchecked.clear()
        for task in tasks:
            try:
                targets = database_targets([task])
            except Exception:  # its requires() or output() failed: luigi finds out when it checks the task itself
                continue
            hashes.extend(t.task_hash for t in targets if t.task_hash is not None and t.task_hash not in cache.done)
    return [h for h in hashes if h not in cache.not_done and h not in cache.answered]


def read_many(targets: Iterable[DatabaseTarget | BatchTarget] | BatchTarget | dict) -> list[object] | dict:
    """The results of many tasks in one query (per chunk), in the order of ``targets``; None where not done. The
    value of a :class:`BatchTarget` (the input of a task that requires a batch) is the list of its items' results;
    ``read_many(batch_target)`` is that list too (``read_many(self.input())`` of a task that requires just a batch).
    ``targets`` may be any structure ``self.input()`` is (dicts, lists and tuples of targets, nested): the results
    come in the same structure, dicts as dicts with the same keys."""
    if isinstance(targets, BatchTarget):
        return read_many([targets])[0]
    if isinstance(targets, dict):
        return _read_nested(targets)
    targets = list(targets)
    if not all(isinstance(target, (DatabaseTarget, BatchTarget)) for target in targets):
        return _read_nested(targets)
    if not any(isinstance(target, BatchTarget) for target in targets):
        return _read_many(targets)
    spans, flat = [], []
    for target in targets:
        if isinstance(target, BatchTarget):
            model = outputs.output_model(target.batch.item_class)
            items = [_ItemTarget(item.task_hash, model) for item in target.batch.items()]
        else:
            items = [target]
        spans.append((isinstance(target, BatchTarget), len(flat), len(flat) + len(items)))
        flat += items
    found = _read_many(flat)
    return [found[start:end] if batch else found[start] for batch, start, end in spans]


def _read_nested(structure: list | dict) -> list | dict:
    """:func:`read_many` of a dict, or of a list that holds more than targets: dicts, lists or tuples of them, read in
    one query and given back in the same structure; a TypeError naming anything else (a file's LocalTarget, a task)."""
    leaves = []

    def walk(value: object) -> None:
        if isinstance(value, (DatabaseTarget, BatchTarget)):
            leaves.append(value)
        elif isinstance(value, dict):
            for one in value.values():
                walk(one)
        elif isinstance(value, (list, tuple)):
            for one in value:
                walk(one)
        else:
            raise TypeError(
                f"read_many: {value!r} is no astra target (a {type(value).__name__}): it reads the outputs of astra "
                "tasks (self.input(), or their output()), in lists and dicts"
            )

    walk(structure)
    results = iter(read_many(leaves))

    def rebuild(value: object) -> object:
        if isinstance(value, dict):
            return {key: rebuild(one) for key, one in value.items()}
        if isinstance(value, (list, tuple)):
            return [rebuild(one) for one in value]
        return next(results)

    return rebuild(structure)


def _read_many(targets: list[DatabaseTarget | _ItemTarget]) -> list[object]:
    found = queries.results([t.task_hash for t in targets if _model(t) is None])
    values = [found.get(t.task_hash) for t in targets]
    models = {_model(t) for t in targets} - {None}
    if models:
        done = queries.done_hashes(t.task_hash for t in targets if _model(t) is not None and t.task_hash)
        rows = {model: output_tables.read(model, done) for model in models}
        for i, target in enumerate(targets):
            if _model(target) is not None and target.task_hash in done:
                made = rows[_model(target)].get(target.task_hash, [])
                values[i] = made[0] if len(made) == 1 else made
    return values


def _model(target: DatabaseTarget) -> type | None:
    return getattr(target, "output_model", None)  # a target pickled by an older astra has none
