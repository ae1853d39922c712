"""Recording batch items: astra against writing the same rows without it, and the all-done check at a million.

    python bench/run.py --only recording              # 100,000 items, the all-done check over 1,000,000
    python bench/recording.py --items 20000 --done-items 100000 --profile   # smaller, with cProfile's top entries

Every figure comes from a new process (``python bench/recording.py --measure ...``), on fresh databases:

- astra, end to end: ``luigi.build`` of ``bench.tasks.Spectra`` (N trivial items, chunks of 5,000), on PostgreSQL
  and SQLite; "recording" is the time the batch spent in its recording transactions (``recording_seconds``), and
  peak memory is the ru_maxrss of that luigi process;
- anchors, the same rows (task, parameter and link rows, as astra writes them) written without astra, one
  transaction per 5,000: ``COPY`` and ``INSERT`` (psycopg2 ``execute_values``) into the astra schema on
  PostgreSQL, ``executemany`` on SQLite; luigi's ``PostgresTarget.touch()`` (a marker row per item) on 200
  items (each opens a connection);
- the all-done check: ``Spectra(stop=M).complete()`` in a new process once M items are recorded (astra's batch
  records them first, itself a figure at that scale); then the same check of M items that each require a task:
  ``Continua`` (each item requires its ``Spectrum``, an astra task) and ``Extractions`` (each requires a plain
  luigi ``ExternalTask``), with the check of ``Spectra`` (items that require nothing) measured again beside them as
  the anchor. The checks report CPU time (this process's, all threads) beside wall time: on a shared machine the
  wall time says as much about the neighbours.

    python bench/recording.py --checks-only --done-items 1000000 --repeat 2   # the all-done checks alone
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sqlite3
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import DB, Bench, admin, machine  # noqa: E402

CHUNK = 5000
#: The batches of the all-done check, by the kind of requirement their items have.
CHECKED = {"none": "Spectra", "astra": "Continua", "luigi": "Extractions"}


def _chunks(n: int) -> list[tuple[list[tuple], list[tuple], list[tuple]]]:
    """The task, parameter and link rows astra records for Spectra(stop=n), with pks 1, 2, ..., per chunk of
    5,000 items (the parameters first used in each chunk)."""
    import astra
    from astra.identity import items, parameter_hash, task_version
    from bench.tasks import Spectrum

    chunks = []
    known: dict[str, int] = {}
    version = task_version(Spectrum)
    for pk, item in enumerate(items(Spectrum, ({"spectrum_id": i} for i in range(n))), start=1):
        if (pk - 1) % CHUNK == 0:
            chunks.append(([], [], []))
        tasks, parameters, links = chunks[-1]
        tasks.append(
            (pk, Spectrum.__module__, "Spectrum", item.task_id, bytes.fromhex(item.task_hash), version,
             astra.__version__, str(item.values["spectrum_id"] % 97), None, None, 0.0)
        )  # fmt: skip
        for name, value in item.parameters.items():
            key = parameter_hash(name, value)
            if key not in known:
                known[key] = len(known) + 1
                parameters.append((known[key], name, value, bytes.fromhex(key)))  # stored as bytes (schema 11)
            links.append((pk, known[key]))
    return chunks


TASK_COLUMNS = (
    "pk, task_module, task_name, task_id, task_hash, version, astra_version, result, error, traceback, duration, "
    "status, created, started, heartbeat, completed, host, pid, attempts"
)


def _anchor_postgres(url: str, n: int, how: str) -> float:
    """Seconds to write the rows of n items into the astra schema with psycopg2 alone (``copy`` or ``insert``)."""
    import psycopg2
    from psycopg2.extras import execute_values

    chunks = _chunks(n)
    connection = psycopg2.connect(url)
    cursor = connection.cursor()
    started = time.perf_counter()
    for tasks, parameters, links in chunks:
        if how == "copy":
            cursor.execute("select now()")
            (now,) = cursor.fetchone()
            for table, rows in (
                (f"astra.task ({TASK_COLUMNS})", [(*row, "done", now, now, now, now, "bench", 1, 1) for row in tasks]),
                ("astra.parameter (pk, parameter_name, parameter_value, parameter_hash)", parameters),
                ("astra.task_parameter (task_pk, parameter_pk)", links),
            ):
                text = "".join("\t".join(_copy_text(v) for v in row) + "\n" for row in rows)
                cursor.copy_expert(f"COPY {table} FROM STDIN", io.StringIO(text))
        else:
            template = f"({', '.join(['%s'] * 11)}, 'done', now(), now(), now(), now(), 'bench', 1, 1)"
            execute_values(cursor, f"INSERT INTO astra.task ({TASK_COLUMNS}) VALUES %s", tasks, template, CHUNK)
            execute_values(cursor, "INSERT INTO astra.parameter VALUES %s", parameters, page_size=CHUNK)
            execute_values(cursor, "INSERT INTO astra.task_parameter VALUES %s", links, page_size=2 * CHUNK)
        connection.commit()
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def _copy_text(value: object) -> str:
    """A value in COPY's text format (ours need no escapes but a bytea's backslash)."""
    if value is None:
        return r"\N"
    return "\\\\x" + value.hex() if isinstance(value, bytes) else str(value)


def _anchor_sqlite(path: str, n: int) -> float:
    """Seconds to write the rows of n items into an astra SQLite file with sqlite3's executemany alone."""
    chunks = _chunks(n)
    connection = sqlite3.connect(path)
    connection.execute("pragma journal_mode = wal")
    connection.execute("pragma synchronous = normal")
    stamp = "2026-01-01 00:00:00"
    started = time.perf_counter()
    for tasks, parameters, links in chunks:
        with connection:
            connection.executemany(
                f"INSERT INTO task ({TASK_COLUMNS}) VALUES ({', '.join('?' * 19)})",
                [(*row, "done", stamp, stamp, stamp, stamp, "bench", 1, 1) for row in tasks],
            )
            connection.executemany("INSERT INTO parameter VALUES (?, ?, ?, ?)", parameters)
            connection.executemany("INSERT INTO task_parameter VALUES (?, ?)", links)
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def _postgres_target(n: int) -> float:
    """Seconds for n ``PostgresTarget.touch()`` calls (a marker row each), luigi's way of recording a task."""
    from bench.tasks import _postgres_target

    started = time.perf_counter()
    for i in range(n):
        _postgres_target(f"item-{i}").touch()
    return time.perf_counter() - started


def measure(what: str, n: int, url: str, profile: bool) -> dict:
    """One figure, in this (new) process."""
    from bench.run import _build, _quiet_luigi

    _quiet_luigi()
    import bench.tasks  # noqa: F401  (imported before the profile starts: it is about the work, not imports)

    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    result: dict = {}
    what, _, required = what.partition(":")  # e.g. "check:astra": the check of items that require an astra task
    if what in ("astra", "check"):
        import bench.tasks

        task = getattr(bench.tasks, CHECKED[required or "none"])(stop=n)
        started, cpu = time.perf_counter(), time.process_time()
        if what == "astra":
            result["ok"] = bool(_build(task))
            result["recording_seconds"] = task.recording_seconds
        else:
            result["ok"] = task.complete()
        result["seconds"] = time.perf_counter() - started
        result["cpu_seconds"] = time.process_time() - cpu
    elif what in ("copy", "insert"):
        result["seconds"] = _anchor_postgres(url, n, what)
    elif what == "sqlite-insert":
        result["seconds"] = _anchor_sqlite(url[len("sqlite:///") :], n)
    elif what == "postgres-target":
        result["seconds"] = _postgres_target(n)
    else:
        raise ValueError(what)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if profiler:
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(15)
        result["profile"] = out.getvalue()
    return result


class Recording:
    def __init__(self, bench: Bench, profile: bool) -> None:
        self.bench = bench
        self.profile = profile

    def run(self, what: str, n: int, url: str, reset=None, profile: bool = False) -> dict:
        import subprocess

        command = [sys.executable, str(Path(__file__).resolve()), "--measure", what, "--n", str(n), "--url", url]
        if profile:
            command.append("--profile")
        if reset:
            reset()
        done = subprocess.run(command, env=self.bench.env("astra", url), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{what} {n} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if not result.get("ok", True):
            raise RuntimeError(f"{what} {n}: the batch did not finish\n{done.stderr[-2000:]}")
        return result

    def fresh_postgres(self, name: str) -> str:
        return self.bench.new_postgres(name, astra_schema=True)

    def fresh_sqlite(self, name: str) -> str:
        path = self.bench.workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"


def recording(bench: Bench, n: int, done_items: int, profile: bool, checks_only: bool = False, repeat: int = 1) -> None:
    """Print the recording figures (see the module docstring); ``checks_only``: the all-done checks alone, each
    ``repeat`` times."""
    print(f"\n## (e) recording: {n:,} batch items, and the all-done check over {done_items:,}\n", flush=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    r = Recording(bench, profile)
    lines = [
        "| what | database | s | CPU s | items/s | items/s recording only | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    profiles: list[str] = []
    line = _table_line(lines, profiles)
    if not checks_only:
        url = r.fresh_postgres(f"{DB}_recording")
        line("astra batch, end to end", "PostgreSQL", r.run("astra", n, url, profile=profile), n)
        url = r.fresh_postgres(f"{DB}_recording")
        line("anchor: COPY of the same rows (psycopg2)", "PostgreSQL", r.run("copy", n, url), n)
        url = r.fresh_postgres(f"{DB}_recording")
        line("anchor: INSERT of the same rows (execute_values)", "PostgreSQL", r.run("insert", n, url), n)
        markers = min(n, 200)  # a new connection per touch: a thousand take a minute
        admin("drop table if exists table_updates", database=f"{DB}_luigi")
        line(f"anchor: luigi PostgresTarget.touch() ({markers:,} items)", "PostgreSQL",
             r.run("postgres-target", markers, url), markers)  # fmt: skip
        url = r.fresh_sqlite("recording")
        line("astra batch, end to end", "SQLite", r.run("astra", n, url, profile=profile), n)
        anchor = r.fresh_sqlite("recording-anchor")
        _sqlite_schema(anchor)
        line("anchor: executemany INSERT of the same rows (sqlite3)", "SQLite", r.run("sqlite-insert", n, anchor), n)

    url = r.fresh_postgres(f"{DB}_done")
    for required in CHECKED:  # the items that require a Spectrum are recorded after the Spectra they require
        batch = CHECKED[required]
        line(f"astra batch, end to end (setting up the check): {batch}", "PostgreSQL",
             r.run(f"astra:{required}", done_items, url), done_items)  # fmt: skip
    # What autovacuum does to a table a million rows were written to (this test server runs without it): marks its
    # pages all visible, so that the checks read task_hash's index alone (schema 12), and gathers statistics.
    admin("VACUUM ANALYZE", database=f"{DB}_done")
    for _ in range(repeat):  # interleaved, so that a busy moment of the machine is shared by every kind
        for required, batch in CHECKED.items():
            line(f"all-done check: {batch}.complete() (requires: {required})", "PostgreSQL",
                 r.run(f"check:{required}", done_items, url, profile=profile), done_items)  # fmt: skip
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print("\n" + "\n".join(lines), flush=True)
    for text in profiles:
        print("\n" + text, flush=True)


def _table_line(lines: list[str], profiles: list[str]):
    """A function that adds one figure to ``lines`` (and its profile, if any, to ``profiles``) and prints it."""

    def line(what: str, database: str, result: dict, items: int) -> None:
        recording = result.get("recording_seconds")
        rate = f"{items / recording:,.0f}" if recording else "-"
        cpu = f"{result['cpu_seconds']:.2f}" if "cpu_seconds" in result else "-"
        lines.append(
            f"| {what} | {database} | {result['seconds']:.2f} | {cpu} | {items / result['seconds']:,.0f} | {rate} "
            f"| {result['peak_rss_mb']:.0f} |"
        )
        print(f"{what}, {database}: {result['seconds']:.2f} s, CPU {cpu} s, load {os.getloadavg()[0]:.2f}", flush=True)
        if "profile" in result:
            profiles.append(f"### profile: {what}, {database}\n\n```\n{result['profile']}```")

    return line


def _sqlite_schema(url: str) -> None:
    """An astra SQLite file with its tables (as astra creates them) and nothing in them."""
    import subprocess

    code = "from astra.database import database; database()"
    env = {**os.environ, "ASTRA_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--done-items", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true", help="cProfile's top entries of the astra runs")
    parser.add_argument("--checks-only", action="store_true", help="only the all-done checks (and their set-up)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each all-done check, interleaved")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.url, args.profile)))
        return
    import shutil
    import tempfile

    print(machine(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="astra-bench-"))
    bench = Bench(workdir)
    try:
        bench.new_postgres(f"{DB}_luigi", astra_schema=False)
        recording(bench, args.items, args.done_items, args.profile, args.checks_only, args.repeat)
    finally:
        bench.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
