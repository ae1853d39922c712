"""Many processes recording into one server: directly, and through pgbouncer in transaction mode.

    python bench/pooler.py                       # 100 processes x 1,000 trivial tasks, pgbouncer pool of 10
    python bench/pooler.py --processes 20 --tasks 200

Each process records its own trivial tasks one by one, the way a luigi worker does around ``run()``: a claim, then
the done record (``astra.recording.run_recorded``), without luigi's scheduler, whose cost per task would hide the
database's. The processes are forked from this one once astra is imported, wait for one signal, and record at the
same time, into a new database with the astra schema. A thread counts the server's connections to that database
(``pg_stat_activity``) every 20 ms: the figure "most server connections".

Directly, each process holds one server connection while it records; so the direct run uses as many processes as
the server has connections to spare (``max_connections`` less those in use and a margin for the other users of a
shared server), at most 50 and at most ``--processes``. Through pgbouncer (``scripts/pgbouncer-local start`` on a
port of its own, ``default_pool_size = --pool``, stopped at the end) the processes are ``--processes``, and again as
many as the direct run for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import POSTGRES, admin, machine  # noqa: E402

PGBOUNCER_PORT = 6439
DATABASE = "astra_bench_pooler"
#: Server connections left to the other users of a shared server, and the most the direct run takes.
MARGIN, DIRECT_MOST = 20, 50


def _record(first: int, count: int, go, results) -> None:
    """In a forked process: record ``count`` trivial tasks once ``go`` is set; put (tasks, seconds) in ``results``."""
    from astra.recording import run_recorded  # imported by the parent already: forks share it
    from bench.tasks import AstraLeaf

    go.wait()
    started = time.perf_counter()
    for i in range(first, first + count):
        run_recorded(AstraLeaf(i=i), lambda: None)
    results.put((count, time.perf_counter() - started))


class Connections(threading.Thread):
    """Counts the server's connections to the benchmark's database every 20 ms; the most seen in :attr:`most`."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psycopg2

        self.connection = psycopg2.connect(f"{POSTGRES}/{DATABASE}")
        self.connection.autocommit = True
        self.most = 0
        self.stop = threading.Event()

    def run(self) -> None:
        cursor = self.connection.cursor()
        while not self.stop.wait(0.02):
            cursor.execute(
                "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
            )
            self.most = max(self.most, cursor.fetchone()[0])


def measure(url: str, processes: int, tasks: int) -> dict:
    """``processes`` processes recording ``tasks`` each into a fresh astra database reached at ``url``."""
    admin(f"drop database if exists {DATABASE} with (force)", f"create database {DATABASE}")
    admin((REPO / "schema" / "astradb" / "astradb.sql").read_text(), database=DATABASE)
    os.environ["ASTRA_DATABASE_URL"] = url
    import astra.recording  # noqa: F401 -- once, here, rather than in every process
    import bench.tasks  # noqa: F401

    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_record, args=(n * tasks, tasks, go, results)) for n in range(processes)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # all forked and waiting
    connections = Connections()
    connections.start()
    started = time.perf_counter()
    go.set()
    done = [results.get(timeout=1800) for _ in workers]
    seconds = time.perf_counter() - started
    for worker in workers:
        worker.join()
    connections.stop.set()
    connections.join()
    connections.connection.close()
    failed = [worker.exitcode for worker in workers if worker.exitcode]
    import psycopg2

    check = psycopg2.connect(f"{POSTGRES}/{DATABASE}")
    cursor = check.cursor()
    cursor.execute("select count(*), count(*) filter (where attempts <> 1) from astra.task where status = 'done'")
    recorded, again = cursor.fetchone()
    check.close()
    total = sum(count for count, _ in done)
    assert recorded == total == processes * tasks and again == 0 and not failed, (recorded, total, again, failed)
    return {"processes": processes, "tasks": total, "seconds": seconds, "rate": total / seconds,
            "most_connections": connections.most}  # fmt: skip


def spare_connections() -> int:
    """Connections the server has to spare now, less a margin for its other users."""
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    cursor = connection.cursor()
    cursor.execute(
        "select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (select count(*) from pg_stat_activity where backend_type = 'client backend')"
    )
    (spare,) = cursor.fetchone()
    connection.close()
    return spare - MARGIN


def pgbouncer(command: str, pool: int) -> None:
    env = {**os.environ, "ASTRA_PGBOUNCER_PORT": str(PGBOUNCER_PORT), "ASTRA_PGBOUNCER_POOL_SIZE": str(pool)}
    subprocess.run([str(REPO / "scripts" / "pgbouncer-local"), command], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=1000, help="trivial tasks each process records")
    parser.add_argument("--pool", type=int, default=10, help="pgbouncer's default_pool_size")
    parser.add_argument(
        "--runs",
        default="direct,pooled-alike,pooled",
        help="which runs, in this order: direct, pooled-alike (through pgbouncer, as many processes as direct), "
        "pooled (through pgbouncer, --processes)",
    )
    args = parser.parse_args()
    print(machine(), flush=True)
    direct = min(args.processes, spare_connections(), DIRECT_MOST)
    user, _, server = POSTGRES.split("://", 1)[1].rpartition("@")
    host = server.split(":")[0]
    through = f"postgresql://{user or 'postgres'}@{host}:{PGBOUNCER_PORT}/{DATABASE}"
    pgbouncer("start", args.pool)
    rows = []
    try:
        runs = {
            "direct": ("direct", f"{POSTGRES}/{DATABASE}", direct),
            "pooled-alike": (f"pgbouncer, pool {args.pool}", through, direct),
            "pooled": (f"pgbouncer, pool {args.pool}", through, args.processes),
        }
        for label, url, processes in (runs[name] for name in args.runs.split(",")):
            if processes in [row[2] for row in rows if row[0] == label]:
                continue
            result = measure(url, processes, args.tasks)
            rows.append((label, url, processes, result))
            print(f"{label}: {result}", flush=True)
    finally:
        pgbouncer("stop", args.pool)
        admin(f"drop database if exists {DATABASE} with (force)")
    print("\n| connection | processes | tasks | seconds | tasks/s | most server connections |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, _, processes, result in rows:
        print(f"| {label} | {processes} | {result['tasks']:,} | {result['seconds']:.1f} | {result['rate']:,.0f} | "
              f"{result['most_connections']} |")  # fmt: skip
    if direct < args.processes:
        print(f"\n(direct: {direct} processes, at most {DIRECT_MOST} and the connections the server had to spare less "
              f"{MARGIN}; {args.processes} would need {args.processes} connections)")  # fmt: skip


if __name__ == "__main__":
    main()
