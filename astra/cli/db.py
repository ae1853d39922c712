"""``astra db``: create the astra schema (and output tables), print its DDL, upgrade it, say what it holds."""

from __future__ import annotations

import click

from astra import outputs
from astra.cli import formats
from astra.cli.options import CONTEXT, MODULE_HELP, help_if_bare, json_option, module_option, output_models
from astra.database import (
    DatabaseNotReady,
    create_schema,
    describe,
    only_reading,
    output_schema,
    output_tables,
    records,
    upgrade_schema,
)
from astra.database.connection import SCHEMA_SQL


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click.pass_context
def db(ctx: click.Context) -> None:
    """The astra database: create its schema, see what it holds."""
    help_if_bare(ctx)


@db.command(context_settings=CONTEXT)
@module_option
def init(modules: tuple[str, ...]) -> None:
    """Create the astra schema in the configured database (a no-op where it exists; never drops data).

    On PostgreSQL this runs schema/astradb/astradb.sql. The database is $ASTRA_DATABASE_URL, else [astra] in
    luigi.cfg, else ~/.astra/astra.db. With --module, also the output tables of the tasks in those modules.
    """
    models = output_models(modules)
    click.echo(f"astra schema ready in {create_schema()}")
    for model in models:  # a table that no longer fits its model is astra db migrate's, which keeps its rows
        trouble = output_schema.problem(model)
        if trouble is not None:
            raise DatabaseNotReady(trouble)
    output_tables.create(models)
    for model in models:
        click.echo(f"output table {output_tables.table_name(model)} ready ({model.__module__}.{model.__name__})")


def _write_checked(model: type, rows: list[tuple[int, dict]]) -> None:
    """Rows a migration carries over, written into a table it is making fit (so not checked against it first)."""
    output_tables.insert(model, rows, checked=True)


@db.command(context_settings=CONTEXT)
@click.option("--module", "modules", multiple=True, required=True, metavar="MODULE", help=MODULE_HELP)
@click.option("--dry-run", is_flag=True, help="Print what would change and the SQL, and change nothing.")
@click.option(
    "--allow-data-loss", "allow_loss", is_flag=True, help="Also drop columns the models lost, and cast narrower types."
)
def migrate(modules: tuple[str, ...], dry_run: bool, allow_loss: bool) -> None:
    """Make the output tables of the models in MODULE fit them again, keeping every row, in one transaction.

    Adds missing tables and nullable columns, widens types where no value changes, renames the table a model's
    rows are in to its new table_name, and turns the JSON results of tasks recorded before their class had an
    output model into rows (the tasks whose results do not fit run again). It refuses, saying what to do, what
    would lose or reinterpret values (a dropped column, a narrower type) unless --allow-data-loss.

    \b
      astra db migrate --module workflows --dry-run
      astra db migrate --module workflows
    """
    if dry_run:  # an SQLite file that is missing, or holds no astra schema, is said so: not made to hold one
        only_reading()
    models = output_models(modules)
    try:
        migrated = output_schema.migrate(models, outputs.rows, _write_checked, allow_loss=allow_loss, dry_run=dry_run)
    except output_schema.MigrationRefusedError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        output_tables.forget_checked()  # the tables are checked again when next used
    for model, changes in migrated.changes.items():
        table = output_tables.table_name(model)
        if not changes:
            click.echo(f"{table} fits {model.__module__}.{model.__name__}; nothing to do")
        for change in changes:
            click.echo(f"{table}: {change.what} ({'dry run: not migrated' if dry_run else 'migrated'})")
    if dry_run:
        for statement in migrated.statements:
            if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):  # what it read to plan its work
                click.echo(f"{statement.rstrip(';')};")
        formats.say("dry run: nothing was changed")


@db.command(context_settings=CONTEXT)
@module_option
def sql(modules: tuple[str, ...]) -> None:
    """Print the PostgreSQL DDL of the astra schema, or with --module of those modules' output tables.

    For whoever owns the database: `astra db sql --module workflows | psql -d sdss5db`. Safe to run again.
    """
    if not modules:
        click.echo(SCHEMA_SQL.read_text().rstrip())
        return
    for statement in output_tables.ddl(output_models(modules)):
        click.echo(statement)


@db.command(context_settings=CONTEXT)
def upgrade() -> None:
    """Bring a database made by an older astra to this astra's schema, keeping every task and its result.

    Each step runs in a transaction of its own (on PostgreSQL, workers wait while it runs); running it again
    does nothing, and a second upgrade started meanwhile waits for the first, then has nothing to do. A step that
    rewrites every row (schema 11 on PostgreSQL) does that first in committed parts, saying how far it got, while
    the older astra keeps working: interrupted, it resumes where it stopped.
    """

    def progress(version: int, description: str) -> None:
        click.echo(f"schema {version}: {description}")

    where, before, after = upgrade_schema(progress, say=click.echo)
    if before == after:
        click.echo(f"{where} already holds astra schema {after}; nothing to do")
    else:
        click.echo(f"upgraded {where} from astra schema {before} to {after}")


@db.command(context_settings=CONTEXT)
@json_option
def status(as_json: bool) -> None:
    """Where the database is (password masked) and how many tasks it holds, per status and per task name.

    On a database of more than a million tasks, numbers above 10,000 are the planner's estimates (counting them
    would read every task), and say so.
    """
    only_reading()  # a read-only SQLite file does, as a read replica does
    where = describe()
    summary = records.summary()
    if as_json:
        names = [{"task_name": name, **counts, "total": sum(counts.values())} for name, counts in summary.names.items()]
        formats.print_json(
            {
                "database": where,
                "total": summary.total,
                "statuses": summary.statuses,
                "names": names,
                "parameters": summary.parameters,
                "dependencies": summary.dependencies,
                "estimated": summary.estimated,
            }
        )
        return
    counts = ", ".join(f"{status} {n}" for status, n in summary.statuses.items())
    click.echo(f"database      {where}")
    click.echo(f"tasks         {summary.total} ({counts})")
    click.echo(f"parameters    {summary.parameters} distinct values")
    click.echo(f"dependencies  {summary.dependencies} edges")
    if summary.estimated:
        click.echo(
            f"(numbers above {records.COUNTED:,} are the planner's estimates; ANALYZE astra.task for fresh ones)"
        )
    if summary.names:
        rows = [
            [name, *(str(counts[s]) for s in records.STATUSES), str(sum(counts.values()))]
            for name, counts in summary.names.items()
        ]
        click.echo()
        formats.out(formats.table(["name", *records.STATUSES, "total"], rows) + "\n")
