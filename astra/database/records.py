"""Inspecting and forgetting task records: the queries behind the ``astra`` command.

Everything here reads or deletes rows of the astra tables; how the answers are shown is up to the caller.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import peewee
from peewee import JOIN, Case, fn

from astra.database.connection import DatabaseError, database
from astra.database.dialect import dialect
from astra.database.models import Dependency, Parameter, Task, TaskParameter
from astra.database.queries import chunked, transaction
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


def _matches(field: peewee.Field, parts: list[str | None]) -> peewee.Node:
    """``field`` matches ``parts`` (from :func:`wildcard_parts`), case-sensitively on both backends.

    GLOB on SQLite (its LIKE ignores case), where ``[c]`` stands for a literal c; LIKE on PostgreSQL.
    """
    return dialect(database()).matches(field, parts)


def _with_parameter(name: str, value: str) -> peewee.Expression:
    """Tasks that were given parameter ``name`` with ``value`` (a pattern: see :func:`wildcard_parts`)."""
    having = TaskParameter.select(TaskParameter.task).join(Parameter)
    parts = wildcard_parts(value)
    if None in parts:
        having = having.where(Parameter.parameter_name == name, _matches(Parameter.parameter_value, parts))
    else:
        having = having.where(Parameter.parameter_hash == parameter_hash(name, "".join(parts)))
    return Task.pk.in_(having)


def select(filters: Filters) -> peewee.ModelSelect:
    """The tasks that match ``filters``, newest first."""
    database()
    query = _tasks()
    if filters.names:
        query = query.where(Task.task_name.in_(filters.names))
    if filters.modules:
        query = query.where(Task.task_module.in_(filters.modules))
    if filters.statuses:
        query = query.where(Task.status.in_(filters.statuses))
    for name, value in filters.where:
        query = query.where(_with_parameter(name, value))
    if filters.since is not None:
        since = filters.since
        query = query.where((Task.created >= since) | (Task.started >= since) | (Task.completed >= since))
    return query.order_by(Task.pk.desc())


def find(filters: Filters, limit: int | None = None) -> list[Task]:
    """The tasks that match ``filters``, newest first, at most ``limit`` of them."""
    query = select(filters)
    if limit:
        query = query.limit(limit)
    return list(query)


def count(filters: Filters) -> int:
    """How many tasks match ``filters``."""
    return select(filters).order_by().count()


def unknown_parameter_names(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that no recorded task has as a parameter."""
    names = list(dict.fromkeys(names))
    if not names:
        return []
    database()
    query = Parameter.select(Parameter.parameter_name).where(Parameter.parameter_name.in_(names)).distinct()
    known = {name for (name,) in query.tuples()}
    return [name for name in names if name not in known]


def known_names() -> list[str]:
    """Every task name (luigi family) with at least one record."""
    database()
    return [name for (name,) in Task.select(Task.task_name).distinct().order_by(Task.task_name).tuples()]


def modules_of(name: str) -> list[str]:
    """The modules that recorded tasks named ``name`` were defined in."""
    database()
    query = Task.select(Task.task_module).where(Task.task_name == name).distinct().order_by(Task.task_module)
    return [module for (module,) in query.tuples()]


def parameters_of(pks: Sequence[int]) -> dict[int, dict[str, str]]:
    """The recorded parameters of each task in ``pks``, sorted by name."""
    database()
    found: dict[int, dict[str, str]] = {pk: {} for pk in pks}
    for chunk in chunked(list(pks)):
        query = (
            TaskParameter.select(TaskParameter.task, Parameter.parameter_name, Parameter.parameter_value)
            .join(Parameter)
            .where(TaskParameter.task.in_(chunk))
            .order_by(Parameter.parameter_name)
            .tuples()
        )
        for pk, name, value in query:
            found[pk][name] = value
    return found


class AmbiguousReferenceError(LookupError):
    """A reference matches more than one task."""

    def __init__(self, ref: str, tasks: list[Task]) -> None:
        self.ref, self.tasks = ref, tasks
        super().__init__(f"{ref!r} matches {len(tasks)} tasks (pk {', '.join(str(t.pk) for t in tasks[:10])})")


def resolve(ref: str) -> Task | None:
    """The task that ``ref`` names: a pk, a luigi task_id, or a task hash or unique prefix of one.

    Raises :class:`AmbiguousReferenceError` when ``ref`` names more than one task.
    """
    database()
    ref = ref.strip()
    if not ref:
        return None
    if ref.isdigit():
        task = _tasks().where(Task.pk == int(ref)).first()
        if task is not None:
            return task
    # The same luigi task_id can have several records, e.g. one per version of the task class.
    tasks = list(_tasks().where(Task.task_id == ref).order_by(Task.pk).limit(11))
    prefix = ref.lower()
    if not tasks and all(c in "0123456789abcdef" for c in prefix):
        # A range rather than LIKE, so the unique index on task_hash answers it (hex digits sort before 'g').
        query = _tasks().where(Task.task_hash >= prefix, Task.task_hash < prefix + "g")
        tasks = list(query.order_by(Task.pk).limit(11))
    if len(tasks) > 1:
        raise AmbiguousReferenceError(ref, tasks)
    return tasks[0] if tasks else None


def get(pks: Iterable[int]) -> list[Task]:
    """The tasks with these ``pks``, in pk order."""
    database()
    found = []
    for chunk in chunked(sorted(set(pks))):
        found.extend(_tasks().where(Task.pk.in_(chunk)).order_by(Task.pk))
    return found


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

    One recursive query per CHUNK of ``pks``, however long the chains below them are (a task that requires the
    previous night's run makes chains of thousands).
    """
    database()
    pks = set(pks)
    found: set[int] = set()
    for chunk in chunked(sorted(pks)):
        first = Dependency.select(Dependency.task).where(Dependency.requires.in_(chunk))
        below = first.cte("below", recursive=True, columns=("pk",))
        following = Dependency.alias()
        # UNION (not UNION ALL) drops rows already found, so it ends on shared dependants and even on cycles.
        later = following.select(following.task).join(below, on=(following.requires == below.c.pk))
        query = below.union(later).select_from(below.c.pk)
        found.update(pk for (pk,) in query.tuples())
    return found - pks


@dataclass(frozen=True)
class Forgotten:
    """What :func:`forget` deleted."""

    tasks: list[Task]
    parameters: int


def forget(pks: Iterable[int], cascade: bool = False) -> Forgotten:
    """Delete the records of tasks ``pks`` (and with ``cascade`` everything downstream of them) in one transaction.

    Their parameter links and dependency edges go with them; parameter rows that no other task uses any more are
    deleted too. luigi will run the forgotten tasks again the next time something asks for them.
    """
    pks = set(pks)
    try:
        with transaction():
            db = database()
            dialect(db).lock_for_forget(db)
            if cascade:
                # Again inside the transaction: a dependent recorded since the caller looked is forgotten as well.
                pks |= downstream(pks)
            tasks = get(pks)
            pks = [task.pk for task in tasks]
            parameter_pks: set[int] = set()
            for chunk in chunked(pks):
                query = TaskParameter.select(TaskParameter.parameter).where(TaskParameter.task.in_(chunk)).tuples()
                parameter_pks.update(pk for (pk,) in query)
            for chunk in chunked(pks):
                Dependency.delete().where(Dependency.task.in_(chunk) | Dependency.requires.in_(chunk)).execute()
                TaskParameter.delete().where(TaskParameter.task.in_(chunk)).execute()
                Task.delete().where(Task.pk.in_(chunk)).execute()
            removed = 0
            for chunk in chunked(sorted(parameter_pks)):
                used = TaskParameter.select().where(TaskParameter.parameter == Parameter.pk)
                removed += Parameter.delete().where(Parameter.pk.in_(chunk), ~fn.EXISTS(used)).execute()
    except peewee.IntegrityError as exc:
        # A worker linked one of the parameters to a new task at the same moment; nothing was deleted.
        raise DatabaseError(f"astra: could not forget, a task was recorded meanwhile ({exc}); try again") from None
    return Forgotten(tasks, removed)


@dataclass(frozen=True)
class Summary:
    """How many tasks there are, per status and per task name."""

    statuses: dict[str, int]
    names: dict[str, dict[str, int]]
    parameters: int
    dependencies: int

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def summary() -> Summary:
    database()
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
    hashes = [parameter_hash(key, value) for key, value in parameters.items()]
    shared = (
        TaskParameter.select(TaskParameter.task.alias("task_pk"), fn.COUNT(TaskParameter.parameter).alias("n"))
        .join(Parameter)
        .where(Parameter.parameter_hash.in_(hashes or [""]))
        .group_by(TaskParameter.task)
    )
    n_shared = fn.COALESCE(shared.c.n, 0)
    query = (
        _tasks()
        .join(shared, JOIN.LEFT_OUTER, on=(Task.pk == shared.c.task_pk))
        .where(Task.task_name == name)
        .order_by(
            n_shared.desc(),
            Case(None, [(Task.version == version, 1)], 0).desc(),
            Case(None, [(Task.task_module == module, 1)], 0).desc(),
            Task.pk.desc(),
        )
        .limit(limit)
    )
    tasks = list(query)
    recorded = parameters_of([task.pk for task in tasks])
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
            upstream = requires(task.pk)
            upstream_hashes = {t.task_hash for t in upstream}
            candidate.missing_requires = sorted(set(required) - upstream_hashes)
            candidate.extra_requires = [t for t in upstream if t.task_hash not in set(required)]
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
