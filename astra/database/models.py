"""Peewee models of the astra schema (the same tables as schema/astradb/astradb.sql)."""

from __future__ import annotations

import datetime

from peewee import (
    SQL,
    BigAutoField,
    BooleanField,
    Check,
    CompositeKey,
    DatabaseProxy,
    DateTimeField,
    DoubleField,
    EnclosedNodeList,
    Field,
    ForeignKeyField,
    IntegerField,
    JSONField,
    Model,
    TextField,
)

from astra import values
from astra.database import keys
from astra.database.dialect import CoveringIndex, DialectIndex, SchemaFromDialect, dialect

#: Bound to the real database of this process by :func:`astra.database.database`.
proxy = DatabaseProxy()

UTC = datetime.timezone.utc


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


class UTCDateTimeField(DateTimeField):
    """A ``timestamp with time zone``; SQLite has no such type, so there it is stored as naive UTC text."""

    field_type = "TIMESTAMPTZ"

    def db_value(self, value):
        if isinstance(value, datetime.datetime) and value.tzinfo is not None:
            value = dialect(self.model._meta.database).naive_utc(value)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class ResultField(JSONField):
    """What ``run()`` returned, written by :mod:`astra.values`: ``jsonb`` on PostgreSQL, JSON text on SQLite.

    peewee's JSONField picks the column type per database (``result->>'snr'`` works on PostgreSQL,
    ``json_extract(result, '$.snr')`` on SQLite); astra.values keeps NaN, dates and numpy values intact.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(dumps=values.dumps, loads=values.loads, **kwargs)

    def _db_hook(self, database) -> None:
        super()._db_hook(database)
        if database is not None:
            self._read = dialect(database).result_reader()


class HashField(Field):
    """A sha256 key (schema 11): its 32 bytes in the database (``bytea``, SQLite's ``BLOB``), hex text in Python.

    Comparisons and ``in_`` lists convert their values through :meth:`db_value`, so queries are written with the hex
    text astra.identity gives (see :mod:`astra.database.keys`). A check keeps out anything but a digest, e.g. the
    hex text an astra from before schema 11 would write.
    """

    field_type = "BLOB"

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("constraints", [Check(f"length({kwargs['column_name']}) = {keys.SIZE}")])
        super().__init__(**kwargs)

    def db_value(self, value):
        return None if value is None else keys.stored(value)

    def python_value(self, value):
        return keys.read(value)

    def starts_with(self, prefix: str):
        """The keys whose hex text starts with ``prefix`` (hex digits): a range of the index, odd lengths too."""
        low, high = keys.prefix_range(prefix)
        return (self >= low) if high is None else (self >= low) & (self < high)


class EqualityIndex(DialectIndex):
    """An index only ever probed for equality: a hash index where the dialect has one (PostgreSQL's is half the size
    of a btree on the same text), a plain one elsewhere."""

    @property
    def _using(self) -> str | None:
        return dialect(self._model._meta.database).equality_index

    @_using.setter
    def _using(self, value) -> None:
        pass  # set by ModelIndex.__init__; the dialect decides


class BaseModel(Model):
    class Meta:
        database = proxy
        model_metadata_class = SchemaFromDialect  # astra.task on PostgreSQL, task on SQLite
        legacy_table_names = False


class Task(BaseModel):
    """One task: its identity, its state and, once done, its result."""

    pk = BigAutoField()
    task_module = TextField()
    task_name = TextField()
    task_id = TextField()  # indexed for equality only (astra tasks show TASK_ID): see the end of this module
    task_hash = HashField(column_name="task_hash")  # unique: see HASH_INDEX
    version = TextField()
    status = TextField()
    created = UTCDateTimeField()
    started = UTCDateTimeField(null=True)
    heartbeat = UTCDateTimeField(null=True)
    completed = UTCDateTimeField(null=True)
    duration = DoubleField(null=True)
    host = TextField(null=True)
    pid = IntegerField(null=True)
    lease = DoubleField(null=True)
    claim_token = TextField(null=True)
    attempts = IntegerField()
    astra_version = TextField()
    result = ResultField(null=True)
    error = TextField(null=True)
    traceback = TextField(null=True)
    #: How many astra tasks run() yielded (dynamic dependencies, recorded as dynamic edges); None: none.
    dynamic_dependencies = IntegerField(null=True)
    slurm_job_id = TextField(null=True)
    slurm_node = TextField(null=True)

    class Meta:
        indexes = ((("task_name", "status"), False),)


#: A task's class by its full name, ``module.Name``.
CLASS_NAME = Task.task_module.concat(".").concat(Task.task_name)
#: Done tasks that hold a JSON result.
JSON_RESULTS = Task.result.is_null(False) & (Task.status == "done")
#: Before a task of an output model runs, astra asks whether a done task of its class was recorded with a JSON result
#: instead of rows (before the class had its table). Through the index on (task_name, status) that read every done
#: task of the class: 1.3 s per process at 10^7 tasks. This partial index answers it in one probe, and tasks with
#: output rows (no JSON result) add nothing to it. It indexes CLASS_NAME rather than task_name because no other index
#: serves that expression, so the planner cannot prefer one whose statistics say half its rows match.
JSON_RESULT_INDEX = DialectIndex(Task, (EnclosedNodeList([CLASS_NAME]),), where=JSON_RESULTS, name="task_json_result")
Task._meta.indexes.append(JSON_RESULT_INDEX)


class Parameter(BaseModel):
    """One distinct (name, value) pair, shared by every task that was given it."""

    pk = BigAutoField()
    parameter_name = TextField(index=True)
    parameter_value = TextField()
    parameter_hash = HashField(unique=True, column_name="parameter_hash")


class LinkField(ForeignKeyField):
    """A reference of ``task_parameter``: a foreign key on SQLite; on PostgreSQL a column that triggers check once
    per statement (schema 9, see :meth:`astra.database.dialect.PostgreSQL.check_links_per_statement`), so the
    table is created without the constraint there."""

    @property
    def deferred(self) -> bool:  # peewee creates the constraint of a foreign key with the table unless deferred
        return dialect(self.model._meta.database).links_checked_per_statement

    @deferred.setter
    def deferred(self, value) -> None:
        pass  # set by ForeignKeyField.__init__; the dialect decides


class TaskParameter(BaseModel):
    """Which parameters a task was given."""

    task = LinkField(Task, column_name="task_pk", on_delete="CASCADE", backref="task_parameters", index=False)
    parameter = LinkField(Parameter, column_name="parameter_pk", backref="task_parameters")

    class Meta:
        primary_key = CompositeKey("task", "parameter")
        table_name = "task_parameter"


class Dependency(BaseModel):
    """An edge of the DAG: ``task`` required ``requires`` when it ran (from ``requires()``, or yielded by ``run()``)."""

    task = ForeignKeyField(Task, column_name="task_pk", on_delete="CASCADE", backref="dependencies", index=False)
    requires = ForeignKeyField(Task, column_name="requires_pk", on_delete="CASCADE", backref="dependents")
    #: Yielded by run() (a dynamic dependency) rather than returned by requires().
    dynamic = BooleanField(default=False, constraints=[SQL("DEFAULT false")])

    class Meta:
        primary_key = CompositeKey("task", "requires")


class SchemaVersion(BaseModel):
    """One row per astra schema version this database was brought to (the highest is the one it holds)."""

    version = IntegerField(primary_key=True)
    applied = UTCDateTimeField()

    class Meta:
        table_name = "schema_version"


Task.add_index(EqualityIndex(Task, [Task.task_id], name="task_task_id"))
#: The unique index of task_hash, which also holds the status (schema 12): the all-done check asks for the status of
#: 5,000 keys at a time, and PostgreSQL answers from the index alone instead of reading a row of the table per key,
#: half its time at 10^6 tasks, and no random read of a table that no longer fits in memory at 10^8. The index is no
#: larger: 'done' fits in the padding of each entry.
HASH_INDEX = CoveringIndex(Task, [Task.task_hash], unique=True, name="task_task_hash", include=("status",))
Task.add_index(HASH_INDEX)

MODELS = (SchemaVersion, Task, Parameter, TaskParameter, Dependency)
