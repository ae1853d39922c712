"""Why luigi would run a task, as data: its record, the reasons it is not done, the closest records of its family.

``astra tasks why`` prints an explanation as sentences, or as JSON for scripts; the explanation itself is made
here, from the records, so that it holds no wording and can be used without the command line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import luigi
from luigi.task import flatten

from astra import identity
from astra.batch import BatchTask
from astra.database import records
from astra.database.models import Task
from astra.targets import Stale, database_targets, recorded_inputs, stale_dynamic_dependencies

#: What a reason can be about: a parameter, the module or version of the task class, a required task
#: ("dependency") or one that run() yielded ("dynamic_dependency"), a missing record, a record that is not done, or
#: nothing that astra records ("no_difference": the difference is in an input that is not an astra task).
KINDS = (
    "parameter",
    "module",
    "version",
    "dependency",
    "dynamic_dependency",
    "not_recorded",
    "failed",
    "running",
    "no_difference",
)

#: How many items of a batch that are not done an explanation names (the others are counted).
SHOWN = 20


class NotAnAstraTaskError(ValueError):
    """The task has no DatabaseTarget: luigi checks its own output, and astra has nothing to say about it."""


@dataclass
class Reason:
    """One reason a task is not done, or one way a recorded task differs from the task asked for.

    ``kind`` is one of :data:`KINDS`. ``parameter`` names the parameter that differs; ``recorded`` and ``asked`` are
    the two values that differ, the record's and the asked task's. For a dependency that is the required task's
    hash on the side that has it (None on the other); for a dynamic dependency that is now another task, its
    recorded hash and the hash its class gives it today; for dynamic dependencies no longer recorded, how many still
    are and how many the task had. ``task`` identifies the other task a dependency reason is about, ``status`` is the
    recorded status of the task the reason is about ("not recorded" for none). Each is None where it does not apply.
    """

    kind: str
    parameter: str | None = None
    recorded: object = None
    asked: object = None
    task: dict | None = None
    status: str | None = None


@dataclass
class Closest:
    """A recorded task of the asked task's family, and how it differs from the asked task."""

    record: Task
    differences: list[Reason]


@dataclass
class Explanation:
    """Whether ``task`` is done, and if not why: the reasons, the requirements not done, the closest records."""

    task: luigi.Task
    task_hash: str
    record: Task | None
    #: Why luigi would run it; empty when it is complete.
    reasons: list[Reason]
    #: The astra tasks it requires that are not done (only looked for when it is not recorded).
    upstream_not_done: list[luigi.Task] = field(default_factory=list)
    #: The records closest to it, when it is not recorded.
    closest: list[Closest] = field(default_factory=list)
    #: Why a done record is not complete any more (its dynamic dependencies changed), else None.
    stale: Stale | None = None

    @property
    def complete(self) -> bool:
        return not self.reasons

    @property
    def status(self) -> str:
        return self.record.status if self.record is not None else "not recorded"


@dataclass
class BatchExplanation:
    """A batch is done when all its items are: the status of each item, and the first items not done."""

    batch: BatchTask
    items: int
    #: status -> how many items have it ("not recorded" included)
    statuses: Counter
    #: The first :data:`SHOWN` items not done, each with its status and recorded error (None if none).
    not_done: list[tuple[object, str, str | None]]
    #: How many items are not done in all.
    pending: int

    @property
    def complete(self) -> bool:
        return not self.pending


def astra_requirements(task: luigi.Task) -> dict[str, object]:
    """The tasks ``task`` requires that astra records (for a batch, its items), by hash: what its record links to."""
    return recorded_inputs(flatten(task.requires()))


def explain(task: luigi.Task) -> Explanation:
    """Why luigi would (or would not) run ``task``, from the records.

    Raises NotAnAstraTaskError for a task astra does not record, and IdentityError when its identity cannot be
    worked out (a ``requires()`` raises).
    """
    if not database_targets([task]):
        raise NotAnAstraTaskError(task)
    task_hash = identity.task_hash(task)
    record = records.by_hash(task_hash)
    stale = None
    if record is not None and record.status == "done" and record.dynamic_dependencies:
        stale = stale_dynamic_dependencies({task_hash: record.dynamic_dependencies}).get(task_hash)
    if record is not None:
        reasons = [] if record.status == "done" and stale is None else [_own_reason(record, stale)]
        return Explanation(task, task_hash, record, reasons, stale=stale)
    wanted = astra_requirements(task)
    upstream = records.recorded(wanted)
    not_done = [t for h, t in wanted.items() if h not in upstream or upstream[h].status != "done"]
    candidates = records.closest(
        task.task_module,
        task.task_family,
        identity.task_version(task),
        identity.parameters(task, significant_only=True),
        list(wanted),
    )
    closest = [Closest(candidate.task, _differences(candidate, wanted)) for candidate in candidates]
    return Explanation(task, task_hash, None, [Reason("not_recorded")], not_done, closest)


def explain_batch(batch: BatchTask) -> BatchExplanation:
    """How many of ``batch``'s items are done, and which are not (with their errors)."""
    items = list(batch.items())
    status = records.statuses([item.task_hash for item in items])
    counts = Counter(status.get(item.task_hash, "not recorded") for item in items)
    pending = [item for item in items if status.get(item.task_hash) != "done"]
    errors = {h: t.error for h, t in records.recorded([item.task_hash for item in pending[:SHOWN]]).items()}
    shown = [(item, status.get(item.task_hash, "not recorded"), errors.get(item.task_hash)) for item in pending[:SHOWN]]
    return BatchExplanation(batch, len(items), counts, shown, len(pending))


def _own_reason(record: Task, stale: Stale | None) -> Reason:
    """Why a recorded task would run: it is not done, or its dynamic dependencies changed."""
    if stale is None:
        return Reason(record.status, status=record.status)
    if stale.missing:
        return Reason("dynamic_dependency", recorded=stale.expected - stale.missing, asked=stale.expected)
    dependency = {"task": stale.dependency, "task_hash": stale.recorded_hash}
    if stale.status != "done":
        return Reason("dynamic_dependency", task=dependency, status=stale.status)
    return Reason(
        "dynamic_dependency", recorded=stale.recorded_hash, asked=stale.current_hash, task=dependency, status="done"
    )


def _differences(candidate: records.Candidate, wanted: dict[str, luigi.Task]) -> list[Reason]:
    """How a recorded task differs from the asked one, in the order a reader weighs them."""
    differences = [Reason("parameter", key, have, want) for key, (have, want) in candidate.parameters.items()]
    if candidate.module:
        differences.append(Reason("module", None, *candidate.module))
    if candidate.version:
        differences.append(Reason("version", None, *candidate.version))
    if candidate.missing_requires:
        status = records.recorded(candidate.missing_requires)
        for task_hash in candidate.missing_requires:
            needed = {"task": str(wanted[task_hash]), "task_hash": task_hash}
            state = status[task_hash].status if task_hash in status else "not recorded"
            differences.append(Reason("dependency", asked=task_hash, task=needed, status=state))
    for other in candidate.extra_requires:
        made_from = {"pk": other.pk, "task_id": other.task_id, "task_hash": other.task_hash, "version": other.version}
        differences.append(Reason("dependency", recorded=other.task_hash, task=made_from, status=other.status))
    if candidate.task.status != "done":
        differences.append(Reason(candidate.task.status, status=candidate.task.status))
    if not differences:
        differences.append(Reason("no_difference"))
    return differences
