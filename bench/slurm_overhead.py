"""What running each task as a SLURM job costs: per-task wall time under the slurm executor beside the local one.

    scripts/slurm-local start                 # a single-node cluster on this machine, if there is no other
    python bench/slurm_overhead.py            # 40 trivial tasks each way; prints the table for BENCHMARKS.md

Each task is timed in the luigi worker from luigi's START event to its SUCCESS event: claim, run (locally, or:
submit, wait for the job, which starts Python, rebuilds the task, runs and records it), and recording. One worker,
so the tasks run one after another and no job queues behind another. The database is a new PostgreSQL database
on $ASTRA_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import luigi
import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's astra, not an installed one

from bench.tasks import Trivial  # noqa: E402

POSTGRES = os.environ.get("ASTRA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


_started: dict[str, float] = {}
_took: list[float] = []


@Trivial.event_handler(luigi.Event.START)
def _start(task: Trivial) -> None:
    _started[task.task_id] = time.perf_counter()


@Trivial.event_handler(luigi.Event.SUCCESS)
def _success(task: Trivial) -> None:
    _took.append(time.perf_counter() - _started.pop(task.task_id))


def measure(executor: str, n: int, log_dir: str) -> list[float]:
    _took.clear()
    config = luigi.configuration.get_config()
    config.set("astra", "executor", executor)
    config.set("slurm", "log_dir", log_dir)
    config.set("slurm", "poll", "0.2")
    tasks = [Trivial(i=i, run_name=f"{executor}-{uuid.uuid4().hex[:8]}") for i in range(n)]
    assert luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")
    return list(_took)


def startup(repeat: int = 5) -> float:
    """Median wall time of what a job does before run(): start Python, import astra and the task's module."""
    import subprocess

    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import astra.executors.slurm_job, bench.tasks"], check=True, cwd=REPO)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def _admin(sql: str) -> None:
    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    connection.cursor().execute(sql)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="tasks per executor")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    name = f"astra_bench_{uuid.uuid4().hex[:8]}"
    _admin(f"create database {name}")
    os.environ["ASTRA_DATABASE_URL"] = f"{POSTGRES}/{name}"
    try:
        from astra.database import create_schema

        create_schema()
        with tempfile.TemporaryDirectory() as log_dir:
            results = {executor: measure(executor, args.n, log_dir) for executor in ("local", "slurm")}
    finally:
        from astra.database import database

        database().close()
        _admin(f"drop database if exists {name} with (force)")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; host: {platform.node()}, {os.cpu_count()} CPUs")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| executor | tasks | median per task (s) | min (s) | max (s) | total (s) |")
    print("|---|---|---|---|---|---|")
    for executor, took in results.items():
        print(
            f"| {executor} | {len(took)} | {statistics.median(took):.3f} | {min(took):.3f} | {max(took):.3f} "
            f"| {sum(took):.1f} |"
        )
    print(f"\nof which Python start-up and imports in the job (measured apart, median of 5): {startup():.2f} s")
    overhead = statistics.median(results["slurm"]) - statistics.median(results["local"])
    print(f"\nsubmission-and-wait overhead per task (median slurm - median local): {overhead:.2f} s")


if __name__ == "__main__":
    main()
