"""The outcome of a ``luigi`` command: the exit code it ends with (luigi's ``[retcode]``), judged by the records, and
a last line that says why the requested task is not done when it is not.

luigi exits 0 when a task failed unless ``[retcode]`` says otherwise, and most users never write that section: a
failed run would look like a good one to every script, cron job and batch job. So importing astra gives luigi the
codes its own documentation recommends, for every option the configuration does not set itself. A failure astra
recorded is one line in luigi's log rather than a traceback, and the run is judged by the records at its end.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import types
import urllib.request
from typing import NamedTuple
from urllib.parse import quote, urljoin

import luigi
import luigi.cmdline_parser
import luigi.execution_summary
import luigi.interface
import luigi.retcodes

from astra import config, recording
from astra.database import connection, queries
from astra.executors import ExecutorError
from astra.targets import completed, database_targets, forget_cached

logger = logging.getLogger("luigi-interface")

#: The codes luigi's documentation recommends (the highest of what happened wins); luigi's own defaults are 0,
#: but for unhandled_exception (4).
EXIT_CODES = {
    # Another `luigi` with the same command line runs on this host (its lock), or luigid gave a task the requested
    # one needs to another worker, which was still running it when this run ended (the requested task not done).
    "already_running": 10,
    # An input that no task makes (an ExternalTask, e.g. a spectrum file) does not exist.
    "missing_data": 20,
    # luigi left the requested task not done: luigid did not grant run permission to what it needs (luigid restarted
    # and forgot the run, or holds it as done for another client), or it was left pending.
    "not_run": 25,
    # A task's run() raised (astra records it as failed, with the error).
    "task_failed": 30,
    # A task's complete() or requires() raised, or the database could not be read.
    "scheduling_error": 35,
    # luigi itself failed, e.g. luigid stopped answering for good.
    "unhandled_exception": 40,
}


def default_exit_codes() -> None:
    """Give luigi :data:`EXIT_CODES` for the ``[retcode]`` options the configuration does not set.

    Set in luigi's configuration, in memory, so any value of the user's wins: from luigi.cfg, $LUIGI_CONFIG_PATH or
    a file read later (luigi reads files over what is in memory), and ``--retcode-task-failed N`` on the command
    line. Setting it when astra is imported is soon enough for the ``luigi`` command: run_with_retcodes makes its
    ``retcode()`` inside ``CmdlineParser.global_instance(argv)``, and building that parser imports ``--module``
    first (luigi 3.8, luigi/cmdline_parser.py), and with it astra. So the defaults need no hold on luigi's Config
    instance cache, which ties astra to how luigi keeps an object rather than to a configuration value (only
    :func:`judge_each_run`, which has no other way, takes that hold).
    """
    parser = luigi.configuration.get_config()
    for name, code in EXIT_CODES.items():
        if not parser.has_option("retcode", name):  # luigi's has_option also finds the dashed spelling
            if not parser.has_section("retcode"):
                parser.add_section("retcode")
            parser.set("retcode", name, str(code))


class OneLineFailures(logging.Filter):
    """luigi's line for a failed task, with the error astra recorded in place of the traceback that follows it.

    A spectrum path that is a directory or not FITS used to print 40-75 lines; the traceback is in the task's
    record, one command away (``astra tasks show --traceback PK``), so the line says where.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        failure = recording.recorded_failure(error) if error is not None else None
        if failure is not None and isinstance(record.args, tuple):
            record.msg = f"{record.msg}: %s (the traceback: astra tasks show --traceback %d)"
            record.args = (*record.args, failure[1], failure[0])
            record.exc_info = record.exc_text = None
        elif isinstance(error, recording.ItemFailuresError) and isinstance(record.args, tuple):
            # Each item's failure is recorded, with its traceback; the batch's own says nothing more.
            record.msg = f"{record.msg}: %s"
            record.args = (*record.args, error)
            record.exc_info = record.exc_text = None
        elif isinstance(error, SystemExit) and str(error.code).startswith("astra: ") and isinstance(record.args, tuple):
            # astra's own stops (a [slurm] setting that does not parse, met as the task runs): the line says it all.
            record.msg = f"{record.msg}: %s"
            record.args = (*record.args, error.code)
            record.exc_info = record.exc_text = None
        elif isinstance(error, (connection.DatabaseError, recording.InputLostError, ExecutorError)) and isinstance(
            record.args, tuple
        ):
            # astra's own database errors (e.g. an SQLite lock held past sqlite_lock_timeout before the task could
            # be claimed, so nothing recorded), an input lost while the task ran, and a batch whose SLURM array
            # failed (no record of its own) are one line that says what to do: their traceback says no more.
            record.msg = f"{record.msg}: %s: %s"
            record.args = (*record.args, type(error).__name__, error)
            record.exc_info = record.exc_text = None
        elif isinstance(record.msg, str) and _COMPLETE_ERROR in record.msg and not record.args:
            # luigi writes the traceback of an error in complete() into its message: astra's database errors
            # (the server gone while luigi asked what is done) need only their last line.
            head, _, traceback = record.msg.partition(_COMPLETE_ERROR)
            last = traceback.strip().splitlines()[-1:] or [""]
            if last[0].startswith("astra.database.connection.Database"):
                record.msg = f"{head}{_COMPLETE_ERROR.strip()} {last[0].removeprefix('astra.database.connection.')}"
        return True


#: What luigi's worker writes before the traceback of an error in a task's complete().
_COMPLETE_ERROR = "due to error in complete() method:\n"


def failures_in_one_line() -> None:
    """In the ``luigi`` command, say a failure astra recorded in one line (see :class:`OneLineFailures`)."""
    if config.luigi_command_arguments() is not None:
        logger.addFilter(OneLineFailures())


def bad_values_in_one_line() -> None:
    """In the ``luigi`` command, a value of the requested task's parameters that does not parse (``--n abc``, on the
    command line or in luigi.cfg), or a required one left out, stops the command with one line that names it.

    luigi makes the requested task inside the ``try`` of its command (``run_with_retcodes``), which prints a
    traceback and exits with ``unhandled_exception``: the code for luigi itself failing, when it is the input that is
    wrong. astra wraps ``CmdlineParser.get_task_obj``, where luigi makes that task, and turns those errors into a
    ``SystemExit`` with the line (exit code 1, as for a task name luigi does not know). Any other error, e.g. one
    raised by the user's own ``__init__``, goes on to luigi as before.
    """
    parser = luigi.cmdline_parser.CmdlineParser
    if config.luigi_command_arguments() is None or getattr(parser.get_task_obj, "_astra_parsed", False):
        return
    get_task_obj = parser.get_task_obj

    @functools.wraps(get_task_obj)
    def parsed(self):  # noqa: ANN001, ANN202 -- luigi's
        try:
            return get_task_obj(self)
        except Exception as exc:
            line = bad_value(self, exc)
            if line is None:
                raise
            raise SystemExit(line) from None

    parsed._astra_parsed = True
    parser.get_task_obj = parsed


def bad_value(parser: luigi.cmdline_parser.CmdlineParser, exc: Exception) -> str | None:
    """One line for ``exc`` if luigi raised it parsing a value of the requested task or finding one missing; None
    for anything else."""
    args = parser.known_args
    family = args.root_task
    listed = f"luigi --module {args.core_module} {family} --help" if args.core_module else f"luigi {family} --help"
    if isinstance(exc, luigi.parameter.MissingParameterException):
        missing = re.search(r"requires the '([^']+)' parameter", str(exc))
        name = f"--{missing.group(1).replace('_', '-')}" if missing else "a parameter"
        if missing and getattr(args, missing.group(1), None) == "":  # luigi takes '' as not given
            return f"astra: {family} {name} '' is empty, and {name} has no default: give it a value ({listed})"
        return f"astra: {family} needs {name}, which has no default ({listed} lists its parameters)"
    for error in (exc.__cause__, exc):  # luigi re-raises a bad value of luigi.cfg as "Error when parsing the default"
        where = _parsing(error.__traceback__, args) if error is not None else None
        if where is not None:
            problem = f"{type(error).__name__}: {error}"
            return f"astra: {where}: {problem} (not a value the parameter takes; {listed} lists them)"
    return None


def _parsing(tb: types.TracebackType | None, args: object) -> str | None:
    """Which value luigi was parsing in the frames of ``tb`` (the innermost such frame), or None."""
    where = None
    while tb is not None:
        code, values = tb.tb_frame.f_code, tb.tb_frame.f_locals
        if code.co_name == "_get_task_kwargs" and "param_name" in values:
            name = values["param_name"]
            where = f"{args.root_task} --{name.replace('_', '-')} {getattr(args, name, '')}"
        elif code.co_name == "_get_value_from_config" and "section" in values:
            where = f"[{values['section']}] {values.get('name')} in luigi's configuration"
        elif code.co_name == "get_param_values" and "param_name" in values and where is None:
            where = f"{args.root_task}'s parameter {values['param_name']}"
        tb = tb.tb_next
    return where


def judge_each_run() -> None:
    """In the ``luigi`` command, let the records decide whether the requested task is done, once luigi has run.

    luigi's summary, and the exit code it makes of it, say what this process saw. Its "not granted run permission"
    (``not_run``) covers a luigid that restarted and forgot the run, tasks luigid holds as done for another client
    that records to another database, and tasks another worker ran: with several hosts on one luigid every host
    counts the others' tasks so, the one that ran the requested task too. So after luigi's run (and its summary),
    astra looks at the records: requested task done, and luigi's ``not_run`` and ``already_running`` count for
    nothing; not done, and they stand, with one line that says why (the records, compared with what luigid holds).

    luigi offers no hook at the end of a run: the ``luigi`` command (``run_with_retcodes``) calls
    ``luigi.interface._run``, which parses the command line and, inside that parser's context, hands the requested
    task to ``luigi.interface._schedule_and_run`` by name; then it reads the codes from its ``retcode()`` Config
    object, which luigi's instance cache gives to anyone who makes one with the same values. astra wraps
    ``_schedule_and_run`` for its first call in this process (the command's own run; a ``luigi.build`` inside a task
    comes later) and judges the very task objects luigi ran, still inside luigi's parser context: parsing the
    command line again would cost two more parsers of every parameter luigi knows, and tasks made outside that
    context (the items of a batch whose values come from ``--Item-band r``) would be other tasks. The two codes are
    set on that ``retcode()`` object. Should either change in luigi, the wrapper is not called or the object is
    another: luigi's own code stands, which errs on the side of non-zero.
    """
    if config.luigi_command_arguments() is None or getattr(luigi.interface._schedule_and_run, "_astra_judged", False):
        return
    schedule_and_run = luigi.interface._schedule_and_run
    first = [True]  # the command's own run is the first call in this process

    @functools.wraps(schedule_and_run)
    def judged(tasks, *args, **kwargs):  # noqa: ANN001, ANN202 -- luigi's
        if not first:
            return schedule_and_run(tasks, *args, **kwargs)
        first.clear()
        try:
            result = schedule_and_run(tasks, *args, **kwargs)
        except Exception:
            _judge(tasks)  # e.g. luigid stopped answering for good: luigi's traceback follows
            raise
        summary = _summary(result)
        judged = _judge(
            tasks, _task_ids(summary, "failed"), _task_ids(summary, "already_done"), _task_ids(summary, "completed")
        )
        if judged and not _counted(summary):
            # luigi saw nothing go wrong (the records changed under it, e.g. a forget meanwhile), so it would exit 0
            # with the requested task not done: exit as for a task left not run.
            raise SystemExit(luigi.retcodes.retcode().not_run)
        return result

    judged._astra_judged = True
    luigi.interface._schedule_and_run = judged


def _summary(result: object) -> dict | None:
    """luigi's own summary of the run (its sets of tasks by kind); None if it cannot be read (another luigi)."""
    try:
        return luigi.execution_summary._summary_dict(result.worker)
    except Exception:
        return None


def _task_ids(summary: dict | None, kind: str) -> set[str]:
    """The task_ids of the tasks of one ``kind`` of the summary: ``failed``, or ``already_done`` (found complete when
    this run scheduled them)."""
    return {task.task_id for task in summary.get(kind, ())} if summary is not None else set()


def _counted(summary: dict | None) -> bool:
    """Whether the summary has something luigi's exit code counts (a failure, a task not run, ...); with no summary,
    luigi's own code stands."""
    return summary is None or any(summary[kind] for kind in _COUNTED if kind in summary)


#: The kinds of luigi's summary that make its exit code non-zero (luigi.retcodes.run_with_retcodes).
_COUNTED = ("still_pending_ext", "failed", "run_by_other_worker", "scheduling_error", "not_run")


def _judge(
    tasks: list[luigi.Task],
    failed: set[str] = frozenset(),
    found_done: set[str] = frozenset(),
    ran: set[str] = frozenset(),
) -> list[str]:
    """Say, in one line each, why the requested ``tasks`` (luigi's, normally one) are not done, and return those
    lines; none if they are done (then luigi's ``not_run`` and ``already_running`` count for nothing). ``failed``:
    the task_ids luigi saw fail; ``found_done``: those this run found complete as it scheduled them, which are not
    asked again (a batch of a million items would be checked twice); ``ran``: those luigi ran with success."""
    if not connection.is_open():  # the run never got as far as the database: nothing to compare, but
        lines = [  # a task whose identity cannot be worked out (a requires() loop) never runs, and says so
            f"astra: {task} is not done: {target.identity_error}"
            for task in tasks
            for target in database_targets([task])
            if target.identity_error is not None
        ]
        for line in lines:
            logger.error(line)
        return lines
    try:
        with connection.trying_once():  # a server gone (the run's tasks waited for it already) must not hold the end
            asked = (unfinished(task, failed, ran) for task in tasks if task.task_id not in found_done)
            found = [why for why in asked if why is not None]
        lines = [why.line for why in found]
        codes = luigi.retcodes.retcode()  # the very object run_with_retcodes holds (see judge_each_run)
        if not lines:
            codes.not_run = codes.already_running = 0
        elif all(why.running_elsewhere for why in found):
            # luigi counts the tasks other workers hold as "not granted run permission" (its not_run, 25): the
            # README's code for this is already_running (10).
            codes.not_run = codes.already_running
        elif any(why.failed for why in found):
            # A task it needs is recorded failed. When another process ran it (on the same luigid), luigi counts it
            # as "being run by another worker" (already_running, 10) or "not granted run permission" (not_run, 25),
            # though nothing runs it any more: the code is task_failed's, as in the process that saw it fail, or
            # already_running's if that is higher and other workers still run some of it.
            running = any(why.partly_running for why in found)
            code = max(codes.task_failed, codes.already_running) if running else codes.task_failed
            codes.not_run = codes.already_running = code
    except Exception as exc:  # the judgement must never end a run in a traceback of its own
        named, why = _named([str(task) for task in tasks]), str(exc).removeprefix("astra: ")
        if isinstance(exc, connection.DatabaseError):
            logger.error(
                "astra: %s may not be done: the database did not answer when asked (%s); run the command again once "
                "it does",
                named,
                why,
            )
        else:
            logger.error("astra: could not tell whether %s is done: %s: %s", named, type(exc).__name__, why)
        return []
    for line in lines:
        logger.error(line)
    return lines


def _batch_failed(who: str, items: type) -> str:
    """Why a batch that failed is not done: its items recorded as failed, where to list them."""
    from astra.database import records

    family = items.get_task_family()
    listed = (
        f"; astra tasks list --name {family} --status failed lists its items recorded as failed (one with no "
        "identity has no record)"
        if records.any_of(family, queries.FAILED)
        else ""  # e.g. its SLURM elements were cancelled: no item failed
    )
    return f"{who} failed (the error is above){listed}"


class Unfinished(NamedTuple):
    """Why a task is not done: the line that says it, whether it is only that other workers are still running what
    it needs, whether a task it needs is recorded failed, and whether other workers still run some of what it
    needs."""

    line: str
    running_elsewhere: bool
    failed: bool = False
    partly_running: bool = False


class _Running(str):
    """A reason that is another worker still running what the task needs."""


def unfinished(root: luigi.Task, failed: set[str] = frozenset(), ran: set[str] = frozenset()) -> Unfinished | None:
    """Why ``root`` is not done, in one line; None if it is done. ``failed``: the task_ids luigi saw fail; ``ran``:
    those it ran with success.

    Inside the luigi command's parser context, as the task was made (see :func:`judge_each_run`).
    """
    settings = luigi.interface.core()
    if root.complete():
        return None
    forget_cached()  # "not done" may be an answer kept from the scan: ask again
    if root.complete():
        return None
    tasks = _needed(root)
    items = getattr(root, "item_class", None)  # a BatchTask (which imports this module): the class of its items
    astra_tasks = {task.task_id: task for task in tasks.values() if database_targets([task])}
    not_done = [task for task, done in zip(astra_tasks.values(), completed(astra_tasks.values())) if not done]
    by_hash = {database_targets([task])[0].task_hash: task for task in not_done}
    from astra.database import records  # only for a task that is not done: the done check needs none of it

    rows = records.recorded(by_hash)
    elsewhere = sorted(failed - set(tasks))  # e.g. what a run() yielded: luigi saw them, requires() does not name them
    reasons = [
        *_failed_or_running(root, rows, by_hash),
        *([f"{_named(elsewhere)} failed too (the log above says why)"] if elsewhere else []),
        *_missing_inputs(task for task_id, task in tasks.items() if task_id not in astra_tasks),
    ]
    if not settings.local_scheduler:
        url = settings.scheduler_url or f"http://{settings.scheduler_host}:{settings.scheduler_port}/"
        reasons += _luigid_view(url, root, {task.task_id: task for task in not_done})
    if not reasons:
        db = connection.database()
        unrecorded = [task for task_id, task in tasks.items() if task_id in failed]
        if connection.dialect(db).read_only(db):  # a replica: each task's failure said so above
            reasons.append("the database is read-only, so nothing could be recorded")
        elif unrecorded:
            # A batch (the root, or one it needs) has no record of its own, its items have theirs.
            batches = [task for task in unrecorded if getattr(task, "item_class", None) is not None]
            reasons += [_batch_failed("it" if batch is root else str(batch), batch.item_class) for batch in batches]
            unrecorded = [task for task in unrecorded if task not in batches]
            if unrecorded:  # e.g. a full disk: the failure could not be recorded either
                who = "it" if unrecorded == [root] else _named([str(task) for task in unrecorded])
                reasons.append(f"{who} failed before astra could record why (the error is above)")
        elif root.task_id in ran:  # its run() ended well: what it recorded went meanwhile
            what = "some of its items are not recorded done" if items is not None else "it is not complete"
            reasons.append(
                f"it ran, but {what} any more: forgotten (astra tasks forget) or deleted while it ran? Run the "
                "command again"
            )
        else:
            reasons.append("luigi left it pending")
    counted = (
        f" ({len(not_done)} of the {len(astra_tasks)} astra tasks it needs are not done)"
        if len(tasks) > 2 and items is None  # a batch's items are not among what it requires
        else ""
    )
    running = all(isinstance(reason, _Running) for reason in reasons)
    recorded_failed = any(row.status == "failed" for row in rows.values())
    partly = any(isinstance(reason, _Running) for reason in reasons)
    return Unfinished(f"astra: {root} is not done: {'; '.join(reasons)}{counted}", running, recorded_failed, partly)


#: How many tasks a line names before it counts the rest.
NAMED = 3

#: Seconds to wait for luigid's answer at the end of a run.
LUIGID_SECONDS = 5.0


def _needed(root: luigi.Task, limit: int = 1_000_000) -> dict[str, luigi.Task]:
    """``root`` and every task below it, by luigi task_id (each ``deps()`` asks astra about its children at once)."""
    found = {root.task_id: root}
    waiting = [root]
    while waiting and len(found) < limit:
        try:
            below = waiting.pop().deps()
        except Exception:  # a broken requires(): luigi named it already
            continue
        for task in below:
            if task.task_id not in found:
                found[task.task_id] = task
                waiting.append(task)
    return found


def _named(names: list[str]) -> str:
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def _failed_or_running(root: luigi.Task, rows: dict, tasks: dict[str, luigi.Task]) -> list[str]:
    """The records of the tasks not done (``rows``, by hash) that failed or are running."""
    failed = [row for row in rows.values() if row.status == "failed"]
    running = [row for row in rows.values() if row.status == "running"]
    reasons = []
    if failed:
        first = failed[0]
        who = "it" if tasks[first.task_hash] is root else tasks[first.task_hash]
        also = f"; {len(failed) - 1} more failed" if len(failed) > 1 else ""
        reasons.append(f"{who} failed with {first.error} (astra tasks show --traceback {first.pk}){also}")
    gone = [queries.holder_gone(row) for row in running]
    left = [row for row, is_gone in zip(running, gone) if is_gone]
    running = [row for row, is_gone in zip(running, gone) if not is_gone]
    if running:
        where = [f"{row.task_id} on {row.host} pid {row.pid}" for row in running]
        reasons.append(_Running(f"{len(running)} still running ({_named(where)})"))
    if left:
        where = [f"{row.task_id} by pid {row.pid}" for row in left]
        reasons.append(
            f"{len(left)} left unfinished ({_named(where)}): its run() was waiting for tasks it yielded when the run "
            "ended, or its process was killed; the next run takes it over"
        )
    return reasons


def _missing_inputs(tasks) -> list[str]:
    missing = [str(task) for task in tasks if getattr(task, "run", None) is None and not task.complete()]
    if not missing:
        return []
    return [
        f"its input {_named(missing)} does not exist" if len(missing) == 1 else f"inputs missing: {_named(missing)}"
    ]


def _luigid_view(url: str, root: luigi.Task, not_done: dict[str, luigi.Task]) -> list[str]:
    """What luigid at ``url`` holds of ``root``'s tasks, where that explains why ``not_done`` (by task_id) are not
    done here."""
    query = quote(json.dumps({"task_id": root.task_id, "include_done": True}))
    try:
        with urllib.request.urlopen(urljoin(url, f"api/dep_graph?data={query}"), timeout=LUIGID_SECONDS) as answer:
            graph = json.load(answer)["response"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"luigid at {url} does not answer ({getattr(exc, 'reason', exc)})"]
    if not graph:
        return [
            f"luigid at {url} does not know it any more (it was restarted, or lost its state): run the command again"
        ]
    reasons = []
    held_done = sorted(task_id for task_id, node in graph.items() if node["status"] == "DONE" and task_id in not_done)
    if held_done:  # another worker may have finished them since the database was asked: asked again
        forget_cached()
        now = completed([not_done[task_id] for task_id in held_done])
        held_done = [task_id for task_id, done in zip(held_done, now) if not done]
    if held_done:
        # luigid keeps a task it heard was done for its [scheduler] stable_done_cooldown_secs, whatever a worker
        # says: a forget right after a run (a script's forget, then run again) meets that too.
        reasons.append(
            f"luigid at {url} holds {len(held_done)} of them as done ({_named(held_done)}) that "
            f"{connection.describe()} has no done record of: another luigi client that records to another database "
            "shares this luigid, which knows tasks by luigi's task_id alone (give each database a luigid of its "
            "own), or they were forgotten (astra tasks forget) since luigid last heard they were done, which it "
            "believes for its [scheduler] stable_done_cooldown_secs (10 s by default: run the command again then)"
        )
    elsewhere = {node["worker_running"] for node in graph.values() if node["status"] == "RUNNING"} - {None}
    if elsewhere:
        reasons.append(
            _Running(f"luigid gave some of them to other workers, still running: {_named(sorted(map(str, elsewhere)))}")
        )
    return reasons
