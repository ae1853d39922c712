"""What SLURM costs per task, four ways: locally; each task as its own job (the SLURM executor); many tasks packed
in one pilot job (``luigi`` inside one allocation); and per item of a batch run as a job array. With the number
of ``squeue``/``scontrol``/``sacct``/``sbatch`` calls each way made (wrappers on PATH count them).

    scripts/slurm-local start                 # a single-node cluster on this machine, if there is no other
    python bench/slurm_overhead.py            # prints the tables for BENCHMARKS.md

Each task of the first two ways is timed in the luigi worker from luigi's START event to its SUCCESS event: claim,
run (locally, or: submit, wait for the job, which starts Python, rebuilds the task, runs and records it), and
recording. One worker, so the tasks run one after another and no job queues behind another. The pilot and the
array are timed from submission to the end. The database is a new PostgreSQL database on $ASTRA_TEST_POSTGRES
(default postgresql://postgres@127.0.0.1:5432), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import luigi
import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's astra, not an installed one

from bench.tasks import Spectra, Trivial  # noqa: E402

POSTGRES = os.environ.get("ASTRA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


_started: dict[str, float] = {}
_took: list[float] = []


@Trivial.event_handler(luigi.Event.START)
def _start(task: Trivial) -> None:
    _started[task.task_id] = time.perf_counter()


@Trivial.event_handler(luigi.Event.SUCCESS)
def _success(task: Trivial) -> None:
    _took.append(time.perf_counter() - _started.pop(task.task_id))


COMMANDS = ("squeue", "scontrol", "sacct", "sbatch")


def count_calls(directory: Path) -> Path:
    """Wrap SLURM's commands (first on PATH) so that each call is logged; the log."""
    log = directory / "calls.log"
    for name in COMMANDS:
        real = shutil.which(name)
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\necho {name} >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    os.environ["PATH"] = f"{directory}:{os.environ['PATH']}"
    return log


def calls(log: Path, since: int) -> tuple[int, str]:
    """Lines of the log from ``since`` on: their number, and the calls by command."""
    lines = log.read_text().splitlines()[since:] if log.exists() else []
    return since + len(lines), ", ".join(f"{name} {lines.count(name)}" for name in COMMANDS)


def measure(executor: str, n: int, log_dir: str) -> list[float]:
    _took.clear()
    config = luigi.configuration.get_config()
    config.set("astra", "executor", executor)
    config.set("slurm", "log_dir", log_dir)
    config.set("slurm", "poll", "0.2")
    tasks = [Trivial(i=i, run_name=f"{executor}-{uuid.uuid4().hex[:8]}") for i in range(n)]
    assert luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")
    return list(_took)


def pilot(n: int, log_dir: str) -> float:
    """Seconds from sbatch to the end of one job that runs ``n`` Trivial tasks with luigi inside it."""
    command = [sys.executable, "-m", "luigi", "--module", "bench.tasks", "Trivials", "--n", str(n)]
    command += ["--run-name", f"pilot-{uuid.uuid4().hex[:8]}", "--workers", "1", "--local-scheduler"]
    started = time.perf_counter()
    job = subprocess.run(
        ["sbatch", "--parsable", f"--output={log_dir}/pilot-%j.out", f"--chdir={REPO}", "--wrap", shlex.join(command)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    while True:  # the benchmark's own look at the job (counted too: a real pilot needs none)
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
        if state.stdout.strip() in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
            assert state.stdout.strip() == "COMPLETED", Path(log_dir, f"pilot-{job}.out").read_text()[-3000:]
            return time.perf_counter() - started
        time.sleep(0.5)


def array(items: int, shares: int, log_dir: str) -> float:
    """Seconds to run a batch of ``items`` trivial items as a job array of ``shares`` elements."""
    config = luigi.configuration.get_config()
    config.set("astra", "executor", "slurm")
    config.set("slurm", "log_dir", log_dir)
    started = time.perf_counter()
    assert luigi.build([Spectra(stop=items, jobs=shares)], local_scheduler=True, workers=1, log_level="WARNING")
    return time.perf_counter() - started


def startup(what: str, repeat: int = 5) -> float:
    """Median wall time of ``python -c WHAT``: a job's start before run() (Python, astra, the task's module)."""
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", what], check=True, cwd=REPO)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def _admin(sql: str) -> None:
    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    connection.cursor().execute(sql)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="tasks per way")
    parser.add_argument("--items", type=int, default=10_000, help="items of the batch run as a job array")
    parser.add_argument("--shares", type=int, default=4, help="array elements of that batch")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    name = f"astra_bench_{uuid.uuid4().hex[:8]}"
    _admin(f"create database {name}")
    os.environ["ASTRA_DATABASE_URL"] = f"{POSTGRES}/{name}"
    rows = []
    try:
        from astra.database import create_schema

        create_schema()
        with tempfile.TemporaryDirectory() as log_dir:
            # astra shares its squeue answers with the user's other processes through $TMPDIR: count this run's own.
            os.environ["TMPDIR"], tempfile.tempdir = log_dir, None
            log = count_calls(Path(log_dir))
            seen, _ = calls(log, 0)
            for executor in ("local", "slurm"):
                took = measure(executor, args.n, log_dir)
                seen, made = calls(log, seen)
                rows.append((f"{executor}: one task per {'job' if executor == 'slurm' else 'worker call'}",
                             f"{args.n} tasks", statistics.median(took), sum(took), made))  # fmt: skip
            total = pilot(args.n, log_dir)
            seen, made = calls(log, seen)
            rows.append((f"pilot: {args.n} tasks in one job", f"{args.n} tasks", total / args.n, total, made))
            total = array(args.items, args.shares, log_dir)
            seen, made = calls(log, seen)
            rows.append((f"array: a batch in {args.shares} elements", f"{args.items} items", total / args.items,
                         total, made))  # fmt: skip
    finally:
        from astra.database import database

        database().close()
        _admin(f"drop database if exists {name} with (force)")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; host: {platform.node()}, {os.cpu_count()} CPUs")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| way | work | per task or item (s) | total (s) | SLURM commands called |")
    print("|---|---|---|---|---|")
    for way, work, each, total, made in rows:
        print(f"| {way} | {work} | {each:.3g} | {total:.1f} | {made} |")
    bare, luigi_only = startup("pass"), startup("import luigi")
    job = startup("import astra.executors.slurm_job, bench.tasks")
    print(f"\nstart-up, median of 5: `python -c pass` {bare:.2f} s, `import luigi` {luigi_only:.2f} s, a job's imports "
          f"before run() {job:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
