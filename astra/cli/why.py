"""``astra tasks why``: the explanations of :mod:`astra.explain`, as sentences or as JSON."""

from __future__ import annotations

import dataclasses
import sys

import click

from astra import explain, identity
from astra.batch import BatchTask
from astra.cli import formats
from astra.cli.luigi_command_line import task_from_command_line
from astra.cli.options import CONTEXT, json_option
from astra.database import only_reading, queries

#: How many of the upstream tasks a closest record differs in are named (the others are counted).
SHOWN_UPSTREAM = 3


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--module", help="Module to import the task class from (luigi's --module).")
@json_option
@click.argument("family")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[--PARAM VALUE]...")
def why(module: str | None, as_json: bool, family: str, args: tuple[str, ...]) -> None:
    """Is this task done, and if not, which recorded tasks are closest and how do they differ?

    Give the task as on luigi's command line (--module only if no task of that name was ever recorded):

    \b
      astra tasks why --module workflows EstimateSNR --spectrum-path /data/spec-00001.fits

    Exit code 0 when the task is done, 1 when luigi would run it. For a batch, it counts the items per status.
    """
    only_reading()  # a read-only SQLite file does, as a read replica does
    if "--json" in args:  # given after the task, where luigi's parser would reject it
        as_json, args = True, tuple(arg for arg in args if arg != "--json")
    task = task_from_command_line(family, args, module)
    if isinstance(task, BatchTask):
        batch = explain.explain_batch(task)
        _print_batch_json(batch) if as_json else _print_batch(batch)
        sys.exit(0 if batch.complete else 1)
    try:
        explanation = explain.explain(task)
    except explain.NotAnAstraTaskError:
        raise click.UsageError(
            f"{formats.name(task)} is not an astra task: luigi checks its own output, not the astra records"
        ) from None
    except identity.IdentityError as exc:
        raise click.ClickException(f"{exc}; luigi will not run {formats.name(task)} or anything that requires it")
    _print_json(explanation) if as_json else _print(explanation)
    if not explanation.complete:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------------
# JSON


def _reason(reason: explain.Reason) -> dict:
    return dataclasses.asdict(reason)


def _print_json(explanation: explain.Explanation) -> None:
    task, record = explanation.task, explanation.record
    formats.print_json(
        {
            "task": str(task),
            "task_module": task.task_module,
            "task_name": task.task_family,
            "task_id": task.task_id,
            "task_hash": explanation.task_hash,
            "version": identity.task_version(task),
            "status": explanation.status,
            "complete": explanation.complete,
            "reasons": [_reason(reason) for reason in explanation.reasons],
            "record": formats.record(record) if record else None,
            "upstream_not_done": [str(t) for t in explanation.upstream_not_done],
            "closest": [
                {"record": formats.record(c.record), "differences": [_reason(d) for d in c.differences]}
                for c in explanation.closest
            ],
        }
    )


def _print_batch_json(batch: explain.BatchExplanation) -> None:
    shown = [
        {
            "task_id": item.task_id,
            "task_hash": item.task_hash,
            "parameters": item.parameters,
            "status": status,
            "error": error,
        }
        for item, status, error in batch.not_done
    ]
    formats.print_json(
        {"task": str(batch.batch), "batch": True, "items": batch.items, "statuses": batch.statuses, "not_done": shown}
    )


# ---------------------------------------------------------------------------------------------------------------
# Text


def _print_batch(batch: explain.BatchExplanation) -> None:
    family = batch.batch.item_class.get_task_family()
    summary = ", ".join(f"{n} {state}" for state, n in sorted(batch.statuses.items()))
    click.echo(f"{formats.name(batch.batch)} is a batch of {batch.items} {family} items: {summary or 'none'}.")
    if batch.complete:
        click.echo("luigi will not run it again.")
        return
    click.echo(f"luigi will run it for the {batch.pending} items not done:")
    for item, status, error in batch.not_done:
        click.echo(f"  {item.task_id} ({status}{f': {error}' if error else ''})")
    if batch.pending > len(batch.not_done):
        click.echo(f"  ... and {batch.pending - len(batch.not_done)} more")


def _print(explanation: explain.Explanation) -> None:
    task, record, stale = explanation.task, explanation.record, explanation.stale
    name = formats.name(task)
    if record is not None:
        where = f"task {record.pk} on {record.host or '?'} (pid {record.pid or '?'})"
        if record.status == "done" and stale is not None:
            click.echo(f"{name} is recorded done ({where}, completed {formats.time(record.completed)} UTC),")
            click.echo(f"but luigi will run it again: {stale}.")
        elif record.status == "done":
            click.echo(f"{name} is done: {where}, completed {formats.time(record.completed)} UTC.")
            click.echo(f"luigi will not run it again; `astra tasks forget {record.pk}` would make it.")
        elif record.status == "running" and queries.holder_gone(record):
            click.echo(f"{name} was left unfinished: {where}, attempt {record.attempts}; that process is gone.")
            click.echo("luigi will run it again (its next run takes the record over).")
        elif record.status == "running" and record.claim_token is None:  # set aside (astra.recording._follow)
            click.echo(f"{name} is waiting for the tasks its run() yielded: {where}, attempt {record.attempts}.")
            click.echo("luigi runs its run() again, from the top, once they are done.")
        elif record.status == "running":
            click.echo(f"{name} is running: {where}, attempt {record.attempts}.")
            started, heartbeat = formats.time(record.started), formats.time(record.heartbeat)
            click.echo(f"  started {started} UTC, last heartbeat {heartbeat} UTC")
        else:
            click.echo(f"{name} failed: {where}, attempt {record.attempts}.")
            click.echo(f"  error: {record.error}")
            click.echo("luigi will run it again.")
        return
    click.echo(f"{name} is not recorded: luigi will run it (hash {explanation.task_hash[:12]}).")
    not_done = explanation.upstream_not_done
    if not_done:
        names = ", ".join(formats.name(t) for t in not_done[:5]) + (" ..." if len(not_done) > 5 else "")
        verb = "is" if len(not_done) == 1 else "are"
        click.echo(f"{len(not_done)} of the astra tasks it requires {verb} not done either: {names}")
    if not explanation.closest:
        click.echo(f"No {task.task_family} task has been recorded yet.")
        return
    click.echo(f"Closest recorded {task.task_family} tasks:")
    for candidate in explanation.closest:
        other = candidate.record
        click.echo(
            f"  task {other.pk} ({other.status}, {formats.time(other.completed or other.created)} UTC, {other.task_id})"
        )
        for line in _difference_lines(candidate):
            click.echo(f"    {line}")


def _difference_lines(candidate: explain.Closest) -> list[str]:
    """A candidate's differences, one sentence each; upstream ones are only counted when others explain it."""
    lines = []
    upstream = [d for d in candidate.differences if d.kind == "dependency"]
    for difference in candidate.differences:
        if difference.kind == "parameter":
            have = "(not given)" if difference.recorded is None else repr(difference.recorded)
            lines.append(f"parameter {difference.parameter}: recorded {have}, asked {difference.asked!r}")
        elif difference.kind == "module":
            lines.append(f"module: recorded {difference.recorded!r}, asked {difference.asked!r}")
        elif difference.kind == "version":
            have, want = difference.recorded or "(none)", difference.asked or "(none)"
            lines.append(f"version: recorded {have!r}, asked {want!r}")
    needs = [d for d in upstream if d.recorded is None]  # the asked task needs it; the record was not made from it
    made_from = [d for d in upstream if d.recorded is not None]
    if upstream and lines:
        # Different parameters already explain it; different upstream tasks follow from them.
        parts = []
        if needs:
            parts.append(f"needs {len(needs)} tasks it was not made from")
        if made_from:
            parts.append(f"was made from {len(made_from)} tasks this one does not need")
        lines.append(f"upstream differs too: {' and '.join(parts)}")
    else:
        # A few of each, the others counted: a task that requires a batch differs in each of its items.
        for difference in needs[:SHOWN_UPSTREAM]:
            needed = formats.name(difference.task["task"])
            lines.append(f"upstream: needs {needed} ({difference.status}, hash {difference.asked[:12]})")
        if len(needs) > SHOWN_UPSTREAM:
            lines.append(f"upstream: ... and {len(needs) - SHOWN_UPSTREAM} more tasks it was not made from")
        for difference in made_from[:SHOWN_UPSTREAM]:
            other = difference.task
            version = other["version"] or "-"
            lines.append(f"upstream: was made from task {other['pk']} {other['task_id']} (version {version})")
        if len(made_from) > SHOWN_UPSTREAM:
            lines.append(f"upstream: ... and {len(made_from) - SHOWN_UPSTREAM} more tasks this one does not need")
    if candidate.record.status != "done":
        error = candidate.record.error
        lines.append(f"status: {candidate.record.status}" + (f" ({error})" if error else ""))
    if not lines:
        lines.append("no difference in parameters, version or recorded upstream: an input that is not an astra task")
    return lines
