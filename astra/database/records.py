"""Inspecting and forgetting task records: the queries behind the ``astra`` command.

Everything here reads or deletes rows of the astra tables; how the answers are shown is up to the caller.
"""

from __future__ import annotations

import array
import contextlib
import datetime
import functools
import operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import peewee
from peewee import fn

from astra.database.connection import DatabaseError, database
from astra.database.dialect import dialect
from astra.database.models import Dependency, Parameter, Task, TaskParameter
from astra.database.queries import ahead, chunked, transaction
from astra.database.status import DONE, STATUSES
from astra.identity import parameter_hash

#: Every column of a task but its result and traceback, which can be large: all that listing a task shows.
SUMMARY_FIELDS = tuple(f for f in Task._meta.sorted_fields if f.name not in ("result", "traceback"))


def _tasks() -> peewee.ModelSelect:
    """Tasks without their result and traceback (only ``astra tasks show`` needs them, for one task)."""
    return Task.select(*SUMMARY_FIELDS)


@dataclass(frozen=True)
class Filters:
    """Which tasks to select. Empty fields select everything; several values of one field mean "any of them"."""

    names: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    #: (parameter name, value) pairs a task must all have; ``*`` in a value matches any text, ``\\*`` is a
    #: literal star and ``\\\\`` a literal backslash.
    where: tuple[tuple[str, str], ...] = ()
    #: Tasks created, started or completed at or after this time.
    since: datetime.datetime | None = None

    def __bool__(self) -> bool:
        return bool(self.names or self.modules or self.statuses or self.where or self.since)


def wildcard_parts(pattern: str) -> list[str | None]:
    """``pattern`` as literal texts with ``None`` for each ``*`` (any text).

    ``\\*`` stands for a literal ``*`` and ``\\\\`` for a literal backslash; any other backslash is itself.
    """
    parts: list[str | None] = [""]
    for token in re.findall(r"\\[\\*]|\*|[^\\*]+|\\", pattern):
        if token == "*":
            parts += [None, ""]
        else:
            parts[-1] += token[1] if len(token) == 2 and token[0] == "\\" else token
    return [part for part in parts if part != ""]


def literal(value: str) -> str:
    """The pattern (see :func:`wildcard_parts`) that matches ``value`` alone."""
    return value.replace("\\", "\\\\").replace("*", "\\*")


def _matches(field: peewee.Field, parts: list[str | None]) -> peewee.Node:
    """``field`` matches ``parts`` (from :func:`wildcard_parts`), case-sensitively on both backends.

    GLOB on SQLite (its LIKE ignores case), where ``[c]`` stands for a literal c; LIKE on PostgreSQL.
    """
    return dialect(database()).matches(field, parts)


#: How many task pks one filter may list before it counts as common: a common filter is checked task by task while
#: the tasks are walked newest first, a rare one lists its tasks (see :func:`pks`).
LISTED = 100_000
#: The same for a query of every match (no limit): it lists far more before walking the whole table instead.
LISTED_ALL = 2_000_000
#: Tasks read per statement while walking the table newest first (the first windows are smaller).
WINDOW = 200_000
#: How many parameter pks a probe of one task names; beyond, it looks at the task's own parameters instead.
PROBED = 100
#: How many tasks may share a value for :func:`closest` to rank them all; beyond, it ranks the newest few.
SHARED = 1_000
#: Above how many tasks (as the planner estimates them) ``astra db status`` estimates rather than counts.
ESTIMATED = 1_000_000
#: How many matches ``count`` counts exactly before it says "more than".
COUNTED = 10_000


def _parameter_pks(name: str, value: str, bound: int) -> list[int] | None:
    """The pks of the parameter rows ``name`` = ``value`` (a pattern: see :func:`wildcard_parts`); None if a
    pattern matches more than ``bound``."""
    parts = wildcard_parts(value)
    if None not in parts:
        key = parameter_hash(name, "".join(parts))
        return [pk for (pk,) in Parameter.select(Parameter.pk).where(Parameter.parameter_hash == key).tuples()]
    query = Parameter.select(Parameter.pk).where(
        Parameter.parameter_name == name, _matches(Parameter.parameter_value, parts)
    )
    return _listed(query, bound)


def _listed(query: peewee.ModelSelect, bound: int) -> list[int] | None:
    """The pks ``query`` (of one pk column) gives, or None if there are more than ``bound``."""
    found = [pk for (pk,) in query.limit(bound + 1).tuples()]
    return None if len(found) > bound else found


def _links(key: str, value: str, keys: Sequence[int], most: int | None = None) -> list[tuple[int, int]]:
    """``(key, value)`` of the task_parameter rows whose ``key`` column is one of ``keys``, by index probes."""
    db = database()
    return dialect(db).linked(db, dialect(db).table(TaskParameter), key, value, keys, most)


def _given(name: str, values: list[str], bound: int) -> set[int] | peewee.Node:
    """The tasks given ``name`` = one of ``values``: a set of their pks when there are at most ``bound`` (listed by
    the index on task_parameter's parameter_pk; empty when no parameter row matches), else the condition that
    checks a task (see :func:`_has`)."""
    given = {value: _parameter_pks(name, value, bound) for value in values}
    given = {value: pks for value, pks in given.items() if pks != []}
    if not given:
        return set()
    if None not in given.values():
        every = sorted({pk for pks in given.values() for pk in pks})
        linked = _linked(every, bound) if len(every) <= bound else None
        if linked is not None:
            return linked
    return functools.reduce(operator.or_, [_has(name, value, pks) for value, pks in given.items()])


def _linked(parameter_pks: list[int], bound: int) -> set[int] | None:
    """The tasks linked to one of ``parameter_pks``, by the index on parameter_pk; None if more than ``bound``."""
    found: set[int] = set()
    for links in ahead(
        lambda chunk: _links("parameter_pk", "task_pk", chunk, most=bound + 1), list(chunked(parameter_pks))
    ):
        found.update(task for _, task in links)
        if len(found) > bound:
            return None
    return found


def _named(names: Sequence[str], statuses: Sequence[str], bound: int) -> list[int] | None:
    """The tasks with one of ``names`` (every name if none) and one of ``statuses`` (every status if none), by the
    (task_name, status) index one pair at a time; None if more than ``bound``."""
    found: list[int] = []
    for name in names or known_names():
        for status in statuses or STATUSES:
            query = Task.select(Task.pk).where(Task.task_name == name, Task.status == status)
            listed = _listed(query, bound - len(found))
            if listed is None:
                return None
            found += listed
    return found


def _has(name: str, value: str, parameter_pks: list[int] | None) -> peewee.Expression:
    """The task was given ``name`` = ``value`` (the pks of those parameters if known): a probe of task_parameter's
    primary key per task.

    Scalar subqueries, which PostgreSQL runs per row rather than turning them into joins: as a join (IN, EXISTS)
    the plan depends on how many links the planner expects the parameter to have, which it cannot know before an
    ANALYZE and misjudges by 10^4 for a value most tasks share.
    """
    probe = TaskParameter.select(TaskParameter.task).where(TaskParameter.task == Task.pk)
    if parameter_pks is not None and len(parameter_pks) <= PROBED:
        return _found(probe.where(TaskParameter.parameter.in_(parameter_pks)).limit(1))
    given = Parameter.select(Parameter.pk).where(
        Parameter.pk == TaskParameter.parameter,
        Parameter.parameter_name == name,
        _matches(Parameter.parameter_value, wildcard_parts(value)),
    )
    return _found(probe.where(_found(given)).limit(1))


def _by_name(where: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The values of each parameter name of ``where``, in the order given."""
    values: dict[str, list[str]] = {}
    for name, value in where:
        values.setdefault(name, []).append(value)
    return values


def _found(subquery: peewee.ModelSelect) -> peewee.Node:
    """``subquery`` (of one row at most) gives a row."""
    return peewee.NodeList((subquery, peewee.SQL("IS NOT NULL")))


def _wanted(filters: Filters) -> Callable[[tuple], bool]:
    """Whether a row that starts with :data:`_CHECKED` matches the filters on the task's own columns (checked here,
    not in SQL: in SQL, the planner might walk an index of one of them instead of the pk range it is given)."""
    names, modules, statuses, since = set(filters.names), set(filters.modules), set(filters.statuses), filters.since

    def wanted(row: tuple) -> bool:
        _, name, module, status, *times = row[: len(_CHECKED)]
        if (
            (names and name not in names)
            or (modules and module not in modules)
            or (statuses and status not in statuses)
        ):
            return False
        return since is None or any(time is not None and _aware(time) >= since for time in times)

    return wanted


def _aware(time: datetime.datetime) -> datetime.datetime:
    return time if time.tzinfo is not None else time.replace(tzinfo=datetime.timezone.utc)


_CHECKED = (Task.pk, Task.task_name, Task.task_module, Task.status, Task.created, Task.started, Task.completed)


def pks(filters: Filters, limit: int | None = None) -> list[int]:
    """The pks of the tasks that match ``filters``, newest first, at most ``limit`` of them (see
    :func:`_matching`): only the pks are kept of the rows read, a chunk at a time."""
    found: list[int] = []
    with contextlib.closing(_matching(filters, limit)) as chunks:
        for rows in chunks:
            found += (row[0] for row in rows)
            if limit and len(found) >= limit:
                break
    return found[:limit] if limit else found


def versions(filters: Filters) -> Iterator[dict[int, tuple[str, datetime.datetime | None]]]:
    """The version and completion time of each task that matches ``filters``, by pk, oldest first, a chunk of tasks
    at a time (what a caller holds does not grow with the matches): read with the columns the filters are checked
    on, not by a second walk of the tasks."""
    for rows in _matching(filters, None, _VERSIONS, oldest_first=True):
        # As the driver gives them: peewee's conversion of each row is slow.
        yield {row[0]: (Task.version.python_value(row[-2]), Task.completed.python_value(row[-1])) for row in rows}


#: The columns :func:`versions` reads beside those the filters are checked on.
_VERSIONS = (Task.version, Task.completed)


def _matching(
    filters: Filters, limit: int | None, extra: tuple[peewee.Field, ...] = (), oldest_first: bool = False
) -> Iterator[list[tuple]]:
    """The rows of the tasks that match ``filters``, newest first (or ``oldest_first``), a statement's worth at a
    time, until ``limit`` match: the pk first, then the columns the filters are checked on, then ``extra``.

    What it costs follows what it returns, not how many tasks the database holds, whatever the planner knows:
    each filter that matches at most :data:`LISTED` tasks (:data:`LISTED_ALL` without a limit) lists them by an
    index (a parameter value by task_parameter's parameter_pk, names and statuses by the (task_name, status)
    index), and only the tasks on every such list are read, by pk. When no filter is that rare, the tasks are read
    newest first, a range of pks at a time, each checked against the filters (parameters by a probe of
    task_parameter per task), until ``limit`` match: a filter most tasks match finds them at once.
    """
    db = database()
    bound = LISTED if limit else LISTED_ALL
    lists: list[Collection[int]] = []
    probes = []  # filters too common to list, checked task by task
    for name, values in _by_name(filters.where).items():  # a parameter given twice: any of its values
        given = _given(name, values, bound)
        if isinstance(given, set):
            lists.append(given)
        else:
            probes.append(given)
    if (filters.names or filters.statuses) and not lists:  # with a list, they are checked on its tasks
        named = _named(filters.names, filters.statuses, bound)
        if named is not None:
            lists.append(named)
    wanted = _wanted(filters)
    # The times only for --since: peewee's conversion of three times per task costs more than reading them.
    checked = (*_CHECKED, *extra) if filters.since else (*_CHECKED[:4], *extra)
    order = Task.pk.asc() if oldest_first else Task.pk.desc()

    def rows(query: peewee.ModelSelect) -> list[tuple]:
        return [row for row in (query.tuples() if filters.since else db.execute(query)) if wanted(row)]

    if lists:
        common = lists[0] if len(lists) == 1 else set(lists[0]).intersection(*lists[1:])
        # 8 bytes a task rather than ~40 (up to LISTED_ALL of them are held while the stream lasts).
        candidates = array.array("q", sorted(common, reverse=not oldest_first))
        del lists, common

        def check(chunk: Sequence[int]) -> list[tuple]:
            return rows(_one_of(db, Task.select(*checked), Task.pk, chunk).where(*probes).order_by(order))

        yield from ahead(check, list(chunked(candidates)))
        return
    # The first windows are small: a limit most tasks meet is met at once.
    window = 1_000
    if oldest_first:
        start, end = Task.select(fn.MIN(Task.pk), fn.MAX(Task.pk)).tuples().get()
        while start is not None and start <= end:
            yield rows(Task.select(*checked).where(Task.pk >= start, Task.pk < start + window, *probes).order_by(order))
            start += window
            window = min(window * 4, WINDOW)
        return
    top = Task.select(fn.MAX(Task.pk)).scalar()
    while top is not None and top > 0:
        yield rows(Task.select(*checked).where(Task.pk <= top, Task.pk > top - window, *probes).order_by(order))
        top -= window
        window = min(window * 4, WINDOW)


def select(filters: Filters) -> peewee.ModelSelect:
    """The tasks that match ``filters``, newest first (a query of the tasks :func:`pks` finds)."""
    database()
    return _tasks().where(Task.pk.in_(pks(filters))).order_by(Task.pk.desc())


def find(filters: Filters, limit: int | None = None) -> list[Task]:
    """The tasks that match ``filters``, newest first, at most ``limit`` of them."""
    return sorted(get(pks(filters, limit)), key=lambda task: task.pk, reverse=True)


def count(filters: Filters, most: int | None = None) -> int:
    """How many tasks match ``filters``; with ``most``, counted up to ``most`` + 1 only."""
    return len(pks(filters, most + 1 if most is not None else None))


def unknown_parameter_names(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that no recorded task has as a parameter."""
    database()
    # One probe of the parameter_name index per name: DISTINCT would read every value of a name.
    return [
        name
        for name in dict.fromkeys(names)
        if Parameter.select(Parameter.pk).where(Parameter.parameter_name == name).limit(1).scalar() is None
    ]


def known_names() -> list[str]:
    """Every task name (luigi family) with at least one record."""
    db = database()
    # One probe of the (task_name, status) index per name, rather than DISTINCT, which reads every task.
    task = dialect(db).table(Task)
    sql = (
        f"WITH RECURSIVE name(value) AS (SELECT min(task_name) FROM {task} UNION ALL "
        f"SELECT (SELECT min(task_name) FROM {task} WHERE task_name > name.value) FROM name "
        "WHERE name.value IS NOT NULL) SELECT value FROM name WHERE value IS NOT NULL"
    )
    return [name for (name,) in db.execute_sql(sql)]


#: How many records of a name :func:`modules_of` looks at.
SAMPLED = 1000


def any_of(name: str, status: str) -> bool:
    """Whether a task named ``name`` is recorded with ``status`` (one probe of the (task_name, status) index)."""
    database()
    return Task.select(Task.pk).where(Task.task_name == name, Task.status == status).limit(1).exists()


def modules_of(name: str) -> list[str]:
    """The modules that recorded tasks named ``name`` were defined in, as :data:`SAMPLED` of them say (enough to
    import the class: reading every record of a name would cost as much as the records are many)."""
    database()
    sample = Task.select(Task.task_module).where(Task.task_name == name).limit(SAMPLED)
    return sorted({module for (module,) in sample.tuples()})


def parameters_of(pks: Sequence[int]) -> dict[int, dict[str, str]]:
    """The recorded parameters of each task in ``pks``, sorted by name."""
    db = database()
    links = _links("task_pk", "parameter_pk", list(dict.fromkeys(pks)))
    values: dict[int, tuple[str, str]] = {}
    for chunk in chunked(sorted({parameter for _, parameter in links})):
        query = Parameter.select(Parameter.pk, Parameter.parameter_name, Parameter.parameter_value)
        # An int and two texts, as the driver gives them: peewee's conversion of each row costs more than the read.
        rows = db.execute(_one_of(db, query, Parameter.pk, chunk)).fetchall()
        values.update((pk, (name, value)) for pk, name, value in rows)
    found: dict[int, dict[str, str]] = {pk: {} for pk in pks}
    for task, parameter in sorted(links, key=lambda link: values[link[1]][0]):
        name, value = values[parameter]
        found[task][name] = value
    return found


class AmbiguousReferenceError(LookupError):
    """A reference matches more than one task."""

    def __init__(self, ref: str, tasks: list[Task]) -> None:
        self.ref, self.tasks = ref, tasks
        super().__init__(f"{ref!r} matches {len(tasks)} tasks (pk {', '.join(str(t.pk) for t in tasks[:10])})")


#: The largest pk (a bigint).
MAX_PK = 2**63 - 1


def resolve(ref: str) -> Task | None:
    """The task that ``ref`` names: a pk, a luigi task_id, or a task hash or unique prefix of one.

    Raises :class:`AmbiguousReferenceError` when ``ref`` names more than one task.
    """
    database()
    ref = ref.strip()
    if not ref:
        return None
    # A pk is a bigint written in ASCII digits: '²' is a digit to Python, and a longer number no pk (SQLite would
    # refuse to compare it); either may still be a task_id.
    if ref.isascii() and ref.isdigit() and int(ref) <= MAX_PK:
        task = _tasks().where(Task.pk == int(ref)).first()
        if task is not None:
            return task
    # The same luigi task_id can have several records, e.g. one per version of the task class.
    tasks = list(_tasks().where(Task.task_id == ref).order_by(Task.pk).limit(11))
    prefix = ref.lower()
    if not tasks and all(c in "0123456789abcdef" for c in prefix):
        # A range of the unique index on task_hash, which holds the bytes the hex digits stand for.
        query = _tasks().where(Task.task_hash.starts_with(prefix))
        tasks = list(query.order_by(Task.pk).limit(11))
    if len(tasks) > 1:
        raise AmbiguousReferenceError(ref, tasks)
    return tasks[0] if tasks else None


def get(pks: Iterable[int]) -> list[Task]:
    """The tasks with these ``pks``, in pk order."""
    db = database()
    found = []
    for chunk in chunked(sorted(set(pks))):
        found.extend(_tasks().where(dialect(db).one_of(Task.pk, chunk)).order_by(Task.pk))
    return found


def with_results(tasks: Sequence[int]) -> list[Task]:
    """The tasks ``tasks`` (pks, at most CHUNK) with their version, completion time and result, in pk order."""
    db = database()
    query = Task.select(Task.pk, Task.version, Task.completed, Task.result)
    return list(_one_of(db, query, Task.pk, tasks).order_by(Task.pk))


def any_result(tasks: Sequence[int]) -> bool:
    """Whether any of the tasks ``tasks`` (pks) recorded a JSON result, a chunk of pks at a time."""
    db = database()
    query = Task.select(Task.pk).where(Task.result.is_null(False))
    return any(_one_of(db, query, Task.pk, chunk).exists() for chunk in chunked(list(tasks)))


def versions_of(tasks: Sequence[int]) -> list[tuple[int, str, datetime.datetime | None]]:
    """``(pk, version, completed)`` of each of the tasks ``tasks`` that exists, a chunk of pks at a time."""
    db = database()
    query = Task.select(Task.pk, Task.version, Task.completed)
    return [row for chunk in chunked(list(tasks)) for row in _one_of(db, query, Task.pk, chunk).tuples()]


def _one_of(db: peewee.Database, query: peewee.ModelSelect, key: peewee.Field, keys: Sequence) -> peewee.ModelSelect:
    """``query`` of the rows whose ``key`` is one of ``keys`` (at most CHUNK): one array parameter on PostgreSQL,
    which peewee renders in microseconds where it takes ~20 us per value of an IN list."""
    return dialect(db).where_one_of(query, key, list(keys))


def by_hash(task_hash: str) -> Task | None:
    database()
    return _tasks().where(Task.task_hash == task_hash).first()


def whole(pk: int) -> Task | None:
    """Task ``pk`` with every column, its result and traceback included."""
    database()
    return Task.get_or_none(Task.pk == pk)


def requires(pk: int) -> list[Task]:
    """The tasks that task ``pk`` required when it ran (recorded dependency edges; ``.dynamic`` if run() yielded it)."""
    database()
    query = (
        Task.select(*SUMMARY_FIELDS, Dependency.dynamic)
        .join(Dependency, on=(Dependency.requires == Task.pk))
        .where(Dependency.task == pk)
        .order_by(Task.pk)
    )
    return list(query.objects())


def required_by(pk: int) -> list[Task]:
    """The recorded tasks that required task ``pk`` (``.dynamic`` where their run() yielded it)."""
    database()
    query = (
        Task.select(*SUMMARY_FIELDS, Dependency.dynamic)
        .join(Dependency, on=(Dependency.task == Task.pk))
        .where(Dependency.requires == pk)
        .order_by(Task.pk)
    )
    return list(query.objects())


def downstream(pks: Iterable[int]) -> set[int]:
    """Every task that required one of ``pks``, directly or through others (``pks`` themselves excluded).

    One level of dependants at a time, each task's found by its own probe of the index on requires_pk (a
    recursive query joins the whole edge table per level once the planner expects many rows); a chain of
    thousands of tasks (a task that requires the previous night's run) is a query per link of it. The edges are
    read a chunk of a level at a time: only the pks found are kept.
    """
    db = database()
    pks = pks if isinstance(pks, (set, frozenset)) else set(pks)
    found: set[int] = set()
    level = sorted(pks)
    while level:
        new: set[int] = set()
        for chunk in chunked(level):
            edges = dialect(db).linked(db, dialect(db).table(Dependency), "requires_pk", "task_pk", chunk)
            new.update(task for _, task in edges if task not in found and task not in pks)  # ends on shared
        found |= new  # dependants, and on cycles
        level = sorted(new)
    return found


def every_pk() -> list[int]:
    """The pk of every task, in order, read a range of pks at a time."""
    db = database()
    found: list[int] = []
    while True:
        query = Task.select(Task.pk).where(Task.pk > (found[-1] if found else 0)).order_by(Task.pk).limit(WINDOW)
        page = [pk for (pk,) in db.execute(query)]
        found += page
        if len(page) < WINDOW:
            return found


def per_name_and_status(pks: Iterable[int]) -> dict[tuple[str, str], int]:
    """How many of the tasks ``pks`` that exist have each (task name, status), counted by the database a chunk of
    pks at a time (not by reading each task)."""
    db = database()
    counted: dict[tuple[str, str], int] = {}
    for chunk in chunked(sorted(pks)):
        query = Task.select(Task.task_name, Task.status, fn.COUNT(Task.pk)).group_by(Task.task_name, Task.status)
        for name, status, n in _one_of(db, query, Task.pk, chunk).tuples():
            counted[name, status] = counted.get((name, status), 0) + n
    return counted


@dataclass(frozen=True)
class Forgotten:
    """How many task records and parameter values :func:`forget` deleted."""

    tasks: int
    parameters: int


def forget(pks: Iterable[int], cascade: bool = False, each: Callable[[list[Task]], object] | None = None) -> Forgotten:
    """Delete the records of tasks ``pks`` (and with ``cascade`` everything downstream of them) in one transaction.

    Their parameter links and dependency edges go with them; parameter rows that no other task uses any more are
    deleted too. luigi will run the forgotten tasks again the next time something asks for them. ``each`` is
    given the records of each chunk of tasks, in pk order, just before they are deleted (the transaction may still
    fail after). Only the pks are held, never every record: a forget of 10^7 tasks holds sets of ints.
    """
    pks = set(pks)
    try:
        with transaction():
            db = database()
            dialect(db).lock_for_forget(db)
            if cascade:
                # Inside the transaction, each row locked before its dependants are looked for: a dependant that
                # records itself from then on waits for this forget (its edge names a locked row), then finds its
                # input gone; one recorded before is found. Until a look finds no new one.
                new = set(pks)
                while new:
                    dialect(db).lock_rows(db, dialect(db).table(Task), sorted(new))
                    new = downstream(new) - pks
                    pks |= new
            dialect(db).by_keys_only(db)  # every statement below finds its rows by keys
            one_of = dialect(db).one_of
            deleted = removed = 0
            # Parameters used by tasks not deleted yet (by a later chunk, or kept): looked at again at the end. The
            # others are deleted with their chunk: checking a value every task shares once per chunk would read
            # the links of every chunk deleted before (dead index entries), quadratic in the chunks.
            shared: set[int] = set()
            for chunk in chunked(sorted(pks)):
                if not cascade:  # (with it, they are locked already) a batch writing links of one of them finishes
                    dialect(db).lock_rows(db, dialect(db).table(Task), chunk)  # first: its parameters are found here
                if each is not None:
                    each(get(chunk))
                linked = {parameter for _, parameter in _links("task_pk", "parameter_pk", chunk)} - shared
                Dependency.delete().where(one_of(Dependency.task, chunk) | one_of(Dependency.requires, chunk)).execute()
                TaskParameter.delete().where(one_of(TaskParameter.task, chunk)).execute()
                deleted += Task.delete().where(one_of(Task.pk, chunk)).execute()
                removed += _remove_unused(sorted(linked), shared)
            removed += _remove_unused(sorted(shared))
    except peewee.IntegrityError as exc:
        # A worker linked one of the parameters to a new task at the same moment; nothing was deleted.
        raise DatabaseError(f"astra: could not forget, a task was recorded meanwhile ({exc}); try again") from None
    return Forgotten(deleted, removed)


def _remove_unused(parameter_pks: Sequence[int], kept: set[int] | None = None) -> int:
    """Delete those of the parameters ``parameter_pks`` that no task uses; add the others to ``kept`` if given.
    How many were deleted."""
    db = database()
    removed = 0
    for chunk in chunked(parameter_pks):
        used = TaskParameter.select().where(TaskParameter.parameter == Parameter.pk)
        unused = Parameter.delete().where(dialect(db).one_of(Parameter.pk, chunk), ~fn.EXISTS(used))
        if kept is None:
            removed += unused.execute()
        else:
            gone = {pk for (pk,) in db.execute(unused.returning(Parameter.pk))}
            removed += len(gone)
            kept.update(pk for pk in chunk if pk not in gone)
    return removed


@dataclass(frozen=True)
class Summary:
    """How many tasks there are, per status and per task name."""

    statuses: dict[str, int]
    names: dict[str, dict[str, int]]
    parameters: int
    dependencies: int
    #: Whether some numbers are the planner's estimates (a large database), not counts.
    estimated: bool = False

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def summary() -> Summary:
    """How many tasks there are, per status and per task name: counted on a small database; on a large one, the
    numbers above :data:`COUNTED` are the planner's estimates (``estimated``), since counting would read it all."""
    db = database()
    if (dialect(db).estimated_rows(db, Task.select(Task.pk)) or 0) < ESTIMATED:
        return _counted()
    statuses = {status: 0 for status in STATUSES}
    names: dict[str, dict[str, int]] = {}
    estimated = False
    for name in known_names():
        names[name] = {}
        for status in STATUSES:
            query = Task.select(Task.pk).where(Task.task_name == name, Task.status == status)
            listed = _listed(query, COUNTED)
            n = len(listed) if listed is not None else dialect(db).estimated_rows(db, query)
            estimated |= listed is None
            names[name][status] = n
            statuses[status] += n
    return Summary(
        statuses=statuses,
        names=names,
        parameters=dialect(db).estimated_rows(db, Parameter.select(Parameter.pk)),
        dependencies=dialect(db).estimated_rows(db, Dependency.select(Dependency.task)),
        estimated=True,
    )


def _counted() -> Summary:
    statuses = {status: 0 for status in STATUSES}
    names: dict[str, dict[str, int]] = {}
    query = Task.select(Task.task_name, Task.status, fn.COUNT(Task.pk)).group_by(Task.task_name, Task.status)
    for name, status, n in query.tuples():
        statuses[status] = statuses.get(status, 0) + n
        names.setdefault(name, {status: 0 for status in STATUSES})[status] = n
    return Summary(
        statuses=statuses,
        names=dict(sorted(names.items())),
        parameters=Parameter.select().count(),
        dependencies=Dependency.select().count(),
    )


@dataclass
class Candidate:
    """A recorded task of the wanted family, and how it differs from the wanted task."""

    task: Task
    #: name -> (recorded value, wanted value); None where one side lacks the parameter.
    parameters: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    module: tuple[str, str] | None = None
    version: tuple[str, str] | None = None
    #: Hashes of required tasks the wanted task needs but this record was not made with.
    missing_requires: list[str] = field(default_factory=list)
    #: Recorded requirements of this record that the wanted task does not need.
    extra_requires: list[Task] = field(default_factory=list)


def closest(
    module: str,
    name: str,
    version: str,
    parameters: dict[str, str],
    required: Sequence[str],
    limit: int = 3,
) -> list[Candidate]:
    """The recorded tasks named ``name`` that share most of ``parameters`` (then ``version``), with differences.

    ``parameters`` are the wanted task's significant parameters, ``required`` the hashes of the recorded kind of
    tasks it requires (astra tasks; others leave no record to compare with).
    """
    database()
    # The records to rank: those given a value of the wanted task that few tasks share (by the index on
    # parameter_pk), and for each value many share, the newest few of the family given it (checked task by task,
    # newest first): never every task of the family, nor every link of a value all of them share.
    pool: set[int] = set()
    for key, value in parameters.items():
        given = (key, literal(value))
        linked = _linked(_parameter_pks(*given, bound=0), SHARED)
        pool.update(pks(Filters(names=(name,), where=(given,)), limit) if linked is None else linked)
    pool.update(pks(Filters(names=(name,)), limit))  # the newest of the family, if nothing is shared
    found = [task for task in get(pool) if task.task_name == name]
    recorded = parameters_of([task.pk for task in found])

    def rank(task: Task) -> tuple:
        shared = sum(recorded[task.pk].get(key) == value for key, value in parameters.items())
        return (shared, task.version == version, task.task_module == module, task.pk)

    tasks = sorted(found, key=rank, reverse=True)[:limit]
    recorded = parameters_of([task.pk for task in tasks])
    wanted = set(required)
    candidates = []
    for task in tasks:
        candidate = Candidate(task)
        # Only significant parameters make a task different; compare those the wanted task has.
        for key, value in parameters.items():
            have = recorded[task.pk].get(key)
            if have != value:
                candidate.parameters[key] = (have, value)
        if task.task_module != module:
            candidate.module = (task.task_module, module)
        if task.version != version:
            candidate.version = (task.version, version)
        if task.status == DONE:  # edges are recorded when a task finishes
            # In the order the wanted task requires them (a batch's items: of its parameter sets), and of their pks.
            upstream = requires(task.pk)
            upstream_hashes = {t.task_hash for t in upstream}
            candidate.missing_requires = [key for key in dict.fromkeys(required) if key not in upstream_hashes]
            candidate.extra_requires = [t for t in upstream if t.task_hash not in wanted]
        candidates.append(candidate)
    return candidates


def statuses(hashes: Sequence[str]) -> dict[str, str]:
    """The status of each of ``hashes`` that has a record (only two columns: batches may have millions)."""
    database()
    found: dict[str, str] = {}
    for chunk in chunked(list(hashes)):
        found.update(Task.select(Task.task_hash, Task.status).where(Task.task_hash.in_(chunk)).tuples())
    return found


def recorded(hashes: Iterable[str]) -> dict[str, Task]:
    """The records of those of ``hashes`` that exist, whatever their status."""
    database()
    found = {}
    for chunk in chunked(list(dict.fromkeys(hashes))):
        found.update({task.task_hash: task for task in _tasks().where(Task.task_hash.in_(chunk))})
    return found
