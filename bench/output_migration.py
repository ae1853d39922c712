"""Migrating an output table of 1,000,000 rows on PostgreSQL (``astra db migrate``): how long, and whether readers wait.

    python bench/output_migration.py [--rows 1000000]

Fills a new database (astra_bench_migrate_<pid>, dropped at the end) with N done tasks and one output row each (a
float and a 10-element float32 array), then, while a reader thread looks rows up by task one at a time (as
``read()`` does), runs the migration of the same model: (1) gaining a nullable column, (2) its array becoming
float64 (``real[]`` -> ``double precision[]``, a rewrite of the table). For each it prints the migration's time, the
check a process makes before using the table (``output_schema.problem``), and the reader's longest wait and
lookups during the migration against before it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import peewee
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import astra  # noqa: E402
from astra import outputs  # noqa: E402
from astra.database import create_schema, output_schema, output_tables, reset  # noqa: E402
from bench.run import POSTGRES, admin  # noqa: E402


class Before(astra.OutputModel):
    teff = peewee.DoubleField()
    flux = astra.ArrayField("float32")

    class Meta:
        table_name = "bench_fit"


class WithLogg(Before):
    logg = peewee.DoubleField(null=True)

    class Meta:
        table_name = "bench_fit"


class Wider(WithLogg):
    flux = astra.ArrayField("float64")

    class Meta:
        table_name = "bench_fit"


def fill(url: str, rows: int) -> None:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    cursor = connection.cursor()
    cursor.execute(
        "insert into astra.task (task_module, task_name, task_id, task_hash, version, status, created, attempts, "
        "astra_version) select 'bench', 'Fit', 'Fit_' || i, decode(md5(i::text) || md5((-i)::text), 'hex'), '', "
        "'done', now(), 1, "
        "'0' from generate_series(1, %s) as i",
        (rows,),
    )
    cursor.execute(
        "insert into astra.bench_fit (task_pk, teff, flux) select pk, 5000 + pk % 1000, "
        "array_fill((pk % 7)::real, array[10]) from astra.task"
    )
    cursor.execute("analyze astra.task")
    cursor.execute("analyze astra.bench_fit")
    connection.close()


class Reader(threading.Thread):
    """Looks up the row of a random task, again and again, noting when each lookup started and how long it took."""

    def __init__(self, url: str, rows: int) -> None:
        super().__init__(daemon=True)
        self.url, self.rows = url, rows
        self.times: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connection = psycopg2.connect(self.url)
        connection.autocommit = True
        cursor = connection.cursor()
        pk = 1
        while not self.stop.is_set():
            pk = (pk * 7919) % self.rows + 1
            started = time.perf_counter()
            cursor.execute("select teff from astra.bench_fit where task_pk = %s", (pk,))
            cursor.fetchall()
            self.times.append((started, time.perf_counter() - started))
            time.sleep(0.002)
        connection.close()

    def during(self, start: float, end: float) -> list[float]:
        return [took for at, took in self.times if start <= at <= end or start <= at + took <= end]


def measure(url: str, rows: int, model: type, what: str, reader: Reader) -> None:
    reset()
    checked = time.perf_counter()
    found = output_schema.changes(model, owned=[("bench", "Fit")])  # as problem() does for the class's tasks
    checked = time.perf_counter() - checked
    trouble = "; ".join(change.what for change in found)
    before = reader.during(time.perf_counter() - 5, time.perf_counter())
    start = time.perf_counter()
    migrated = output_schema.migrate(
        [model], outputs.rows, lambda m, rows: output_tables.insert(m, rows, checked=True)
    )  # as `astra db migrate` runs
    end = time.perf_counter()
    time.sleep(2)
    after = reader.during(start, end)
    changes = "; ".join(change.what for change in migrated.changes[model])
    print(f"{what}: {changes}")
    print(
        f"  check before use (output_schema.changes, 1,000,000 done tasks): {checked * 1000:.0f} ms; it said: {trouble}"
    )
    print(f"  migration: {end - start:.2f} s")
    print(
        f"  reader: {len(before)} lookups in the 5 s before, median {statistics.median(before) * 1000:.2f} ms; "
        f"{len(after)} during the migration, longest {max(after, default=0) * 1000:.0f} ms"
    )
    output_tables.forget_checked()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    name = f"astra_bench_migrate_{os.getpid()}"
    url = f"{POSTGRES}/{name}"
    admin(f"create database {name}")
    os.environ["ASTRA_DATABASE_URL"] = url
    try:
        create_schema()
        output_tables.create([Before])
        started = time.perf_counter()
        fill(url, args.rows)
        print(f"{args.rows} tasks and rows written in {time.perf_counter() - started:.0f} s")
        reader = Reader(url, args.rows)
        reader.start()
        time.sleep(6)
        measure(url, args.rows, WithLogg, "(1) a nullable column more", reader)
        measure(url, args.rows, Wider, "(2) flux real[] -> double precision[]", reader)
        reader.stop.set()
        reader.join()
    finally:
        reset()
        admin(f"drop database if exists {name} with (force)")


if __name__ == "__main__":
    main()
