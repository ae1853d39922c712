"""Scale: every ``astra`` command timed on a PostgreSQL database of N realistic task records.

    nice python bench/scale.py --tasks 1e6           # about 10 minutes here; prints the table for BENCHMARKS.md
    nice python bench/scale.py --tasks 1e7 --keep     # keeps the database (its name is printed) ...
    python bench/scale.py --database NAME             # ... to time the commands again, without filling it again

The database (its own name, astra_scale_<pid> unless ``--database``; dropped at the end unless ``--keep``) holds
N tasks of bench/scale_tasks.py: N/2 spectra, each with a reduction (ScaleVisit) and a fit of it (ScaleFit, which
requires the reduction: one dependency edge per fit, and one output row of five doubles and a ``real[100]``). Every
task has three parameters: the data release (shared by all), the night (shared by 5,000 spectra) and the path
(unique). The rows are written by SQL in the server, the same rows astra's own batches write for those spectra
(tests/test_scale.py checks that on a small N), then ANALYZE runs (``--no-analyze``: not, as on a server with
autovacuum off).

Each command is run ``--repeat`` times as a whole process (interpreter start-up and imports included) and the
median is shown, with its CPU time (user and system, which moves less than wall time on a busy machine) and the
peak memory of the process, then once more in a process that records every read
statement the command sends and runs ``EXPLAIN (ANALYZE, BUFFERS)`` of each afterwards: "server" is the sum of
their execution times, "pages" the shared buffers they touched (8 kB each; "read" of them from outside
PostgreSQL's cache). $ASTRA_TEST_POSTGRES names the server (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scale_tasks  # noqa: E402
from bench.run import POSTGRES, admin, machine  # noqa: E402
from bench.scale_tasks import RELEASE  # noqa: E402

#: Spectra written per statement of the fill (two tasks each).
FILL_CHUNK = 250_000
MODULE = "bench.scale_tasks"


# ---------------------------------------------------------------------------------------------------------------
# The fill: the rows astra writes for spectra 0 .. n-1, made by the server.


def _json(text: str) -> str:
    """SQL for a JSON string of the SQL text expression ``text`` (our values need no escape: checked by the test)."""
    return f"'\"' || {text} || '\"'"


def _identity_sql(name: str, requires: str | None) -> str:
    """SQL of the text astra hashes for a task of ``name`` (astra.identity), for row ``s`` of the fill."""
    from astra.identity import task_version
    from bench import scale_tasks

    version = task_version(getattr(scale_tasks, name))
    parameters = _parameters_sql()
    return (
        f"""'{{"module":"{MODULE}","name":"{name}","parameters":{{' || {parameters} || '}},"requires":[' """
        f"""|| {_json(requires) if requires else "''"} || '],"version":"{version}"}}'"""
    )


def _parameters_sql() -> str:
    """SQL of the JSON text of the parameters of row ``s``, keys sorted, without the braces."""
    return f"""'"night":' || {_json("s.night::text")} || ',"path":' || {_json("s.path")} || ',"release":"{RELEASE}"'"""


def _task_id_sql(name: str) -> str:
    """SQL of luigi's task_id (luigi.task.task_id_str) of a task of ``name`` for row ``s`` of the fill."""
    summary = f"left(s.night::text, 16) || '_' || left(s.path, 16) || '_' || left('{RELEASE}', 16)"
    summary = f"regexp_replace({summary}, '[^A-Za-z0-9_]', '_', 'g')"
    params = f"'{{' || {_parameters_sql()} || '}}'"
    return f"'{name}_' || {summary} || '_' || left(md5({params}), 10)"


def _sha256(text: str) -> str:
    """SQL of the sha256 of the SQL text expression ``text``, its 32 bytes (as astra stores a key, schema 11)."""
    return f"sha256(convert_to({text}, 'UTF8'))"


#: The secondary indexes of the astra tables (and of the output table), made again after the fill: building an
#: index once is far quicker than keeping it up to date through millions of random inserts.
INDEXES = (
    "astra.task_task_hash",
    "astra.task_task_name_status",
    "astra.task_task_id",
    "astra.parameter_parameter_hash",
    "astra.parameter_parameter_name",
    "astra.task_parameter_parameter_pk",
    "astra.dependency_requires_pk",
    "astra.scale_fit_task_pk",
)


def schema_sql() -> list[str]:
    """The astra schema and the benchmark's output table, as ``astra db init --module bench.scale_tasks`` makes them."""
    from astra.database import output_tables
    from bench.scale_tasks import ScaleFitRow

    return [(REPO / "schema" / "astradb" / "astradb.sql").read_text(), *output_tables.ddl([ScaleFitRow])]


def fill(url: str, n: int, analyze: bool = True, say=print) -> None:
    """Write the rows of spectra 0 .. n/2-1 (two tasks each) into the (new) database at ``url``."""
    import psycopg2

    from astra import __version__

    spectra = n // 2
    nights = -(-spectra // scale_tasks.PER_NIGHT)
    connection = psycopg2.connect(url)
    connection.autocommit = True
    cursor = connection.cursor()
    for statement in schema_sql():
        cursor.execute(statement)
    cursor.execute("drop index if exists " + ", ".join(INDEXES))
    # No triggers (the link checks of schema 9, the foreign keys): the rows are made consistent here.
    cursor.execute("set session_replication_role = replica")
    cursor.execute("set maintenance_work_mem = '1GB'")
    host, pid = socket.gethostname(), os.getpid()
    parameter_hash = "sha256(convert_to(%s, 'UTF8') || '\\x00'::bytea || convert_to(%s, 'UTF8'))"
    # Parameter pks: the release 1, night j 2 + j, the path of spectrum k 2 + nights + k.
    cursor.execute(
        "insert into astra.parameter (pk, parameter_name, parameter_value, parameter_hash) "
        f"select 1, 'release', '{RELEASE}', {parameter_hash % (repr('release'), repr(RELEASE))} union all "
        f"select 2 + j, 'night', j::text, {parameter_hash % (repr('night'), 'j::text')} "
        f"from generate_series(0, {nights - 1}) j"
    )
    started = time.perf_counter()
    for start in range(0, spectra, FILL_CHUNK):
        stop = min(start + FILL_CHUNK, spectra)
        # Task pks: the visit of spectrum k is 2k + 1, its fit 2k + 2.
        spectra_sql = (
            f"select k, k / {scale_tasks.PER_NIGHT} as night, "
            f"'/sdss/{RELEASE}/spec-' || lpad(k::text, 9, '0') || '.fits' as path "
            f"from generate_series({start}, {stop - 1}) k"
        )
        columns = (
            "pk, task_module, task_name, task_id, task_hash, version, status, created, started, heartbeat, "
            "completed, duration, host, pid, attempts, astra_version, result"
        )
        same = f"'done', now(), now(), now(), now(), 0.001, '{host}', {pid}, 1, '{__version__}'"
        cursor.execute(
            # The visit's hash as hex text: the fit's identity names it so.
            f"with s as materialized (select s.*, encode({_sha256(_identity_sql('ScaleVisit', None))}, 'hex') as visit "
            f"from ({spectra_sql}) s) "
            f"insert into astra.task ({columns}) "
            f"select 2 * k + 1, '{MODULE}', 'ScaleVisit', {_task_id_sql('ScaleVisit')}, decode(visit, 'hex'), '', "
            f"{same}, "
            "jsonb_build_object('exposures', k % 5 + 1) from s union all "
            f"select 2 * k + 2, '{MODULE}', 'ScaleFit', {_task_id_sql('ScaleFit')}, "
            f"{_sha256(_identity_sql('ScaleFit', 's.visit'))}, '', {same}, null from s order by 1"
        )
        cursor.execute(
            "insert into astra.parameter (pk, parameter_name, parameter_value, parameter_hash) "
            f"select 2 + {nights} + s.k, 'path', s.path, {parameter_hash % (repr('path'), 's.path')} "
            f"from ({spectra_sql}) s"
        )
        cursor.execute(
            "insert into astra.task_parameter (task_pk, parameter_pk) "
            f"select 2 * s.k + t, p from ({spectra_sql}) s, generate_series(1, 2) t, "
            f"lateral (values (1::bigint), (2 + s.night), (2 + {nights} + s.k)) v(p) order by 1, 2"
        )
        cursor.execute(
            f"insert into astra.dependency (task_pk, requires_pk, dynamic) "
            f"select 2 * k + 2, 2 * k + 1, false from generate_series({start}, {stop - 1}) k"
        )
        # A different model spectrum per row: the subquery refers to k, so it runs for each row.
        cursor.execute(
            "insert into astra.scale_fit (pk, task_pk, teff, logg, fe_h, v_rad, chi2, model_flux) "
            "select k + 1, 2 * k + 2, random(), random(), random(), random(), random(), "
            "array(select (random() + 0 * k)::real from generate_series(1, 100)) "
            f"from generate_series({start}, {stop - 1}) k"
        )
        rate = 2 * stop / (time.perf_counter() - started)
        say(f"filled {2 * stop:,} of {2 * spectra:,} tasks ({rate:,.0f} tasks/s)")
    for table, key in (("task", 2 * spectra), ("parameter", 1 + nights + spectra), ("scale_fit", spectra)):
        cursor.execute(f"select setval(pg_get_serial_sequence('astra.{table}', 'pk'), {max(key, 1)})")
    cursor.execute("set session_replication_role = origin")
    say("making the indexes")
    for statement in schema_sql():  # makes again the indexes dropped above, by their own definitions
        cursor.execute(statement)
    if analyze:
        say("ANALYZE")
        cursor.execute("analyze")
    connection.close()


# ---------------------------------------------------------------------------------------------------------------
# The commands timed.


def commands(n: int, workdir: Path, url: str | None = None) -> list[tuple[str, list[str], list[str] | None]]:
    """(label, astra arguments, arguments of the explained run if not the same) of each command timed."""
    spectra = n // 2
    middle = spectra // 2
    night = middle // scale_tasks.PER_NIGHT
    path = f"/sdss/{RELEASE}/spec-{middle:09d}.fits"
    # A prefix that matches about 100,000 spectra (or half of them on a small database).
    digits = 9 - len(str(max(min(100_000, spectra // 2), 1) - 1))
    prefix = f"/sdss/{RELEASE}/spec-{middle:09d}"[: -9 + digits] if digits < 9 else path[:-5]
    big = f"path={prefix}*"
    # Nights of their own, from the last (full) ones down: each run forgets what it names, and a kept database
    # timed again still has the nights that come next.
    last = spectra // scale_tasks.PER_NIGHT - 1
    done = _forgotten_nights(url, last) if url else 0
    gone = [last - done - j for j in range(4)]
    forget = [["tasks", "forget", "--name", "ScaleVisit", "--where", f"night={j}", "--cascade", "-y"] for j in gone[:3]]
    checked = max(0, min(1_000_000, gone[3] * scale_tasks.PER_NIGHT))  # spectra that no run forgets
    return [
        ("--version (start-up, no database)", ["--version"], None),
        ("db status", ["db", "status"], None),
        ("tasks list (no filter)", ["tasks", "list"], None),
        (f"tasks list --where release={RELEASE} (every task)", ["tasks", "list", "--where", f"release={RELEASE}"],
         None),
        (f"tasks list --where night={night}", ["tasks", "list", "--where", f"night={night}"], None),
        ("tasks list --name ScaleFit --where path=P", ["tasks", "list", "--name", "ScaleFit", "--where",
                                                        f"path={path}"], None),
        ("tasks list --status failed (none)", ["tasks", "list", "--status", "failed"], None),
        ("tasks show (one task)", ["tasks", "show", str(2 * middle + 2)], None),
        (
            "tasks why (task not recorded)",
            ["tasks", "why", "--module", MODULE, "ScaleFit", "--release", RELEASE, "--night", str(night),
             "--path", f"/sdss/{RELEASE}/spec-missing.fits"],
            None,
        ),
        ("tasks why (task done)", ["tasks", "why", "--module", MODULE, "ScaleFit", "--release", RELEASE,
                                   "--night", str(night), "--path", path], None),
        (
            f"tasks forget --cascade ({2 * min(scale_tasks.PER_NIGHT, spectra):,} tasks)",
            forget,  # a night of its own per run: each forgets what it names
            ["tasks", "forget", "--name", "ScaleVisit", "--where", f"night={gone[3]}", "--cascade", "--dry-run"],
        ),
        ("results ScaleFit --where path=P (1 row)", ["results", "ScaleFit", "--where", f"path={path}"], None),
        (
            f"results ScaleFit --where night={night} --format fits",
            ["results", "ScaleFit", "--where", f"night={night}", "--format", "fits", "-o", str(workdir / "night.fits")],
            None,
        ),
        (f"results ScaleFit --where '{big}' --format fits", ["results", "ScaleFit", "--where", big, "--format", "fits",
                                                             "-o", str(workdir / "big.fits")], None),
        (f"results ScaleFit --where '{big}' --format csv", ["results", "ScaleFit", "--where", big, "--format", "csv",
                                                            "-o", str(workdir / "big.csv")], None),
        (f"results ScaleVisit --where '{big}' --format csv (JSON results)",
         ["results", "ScaleVisit", "--where", big, "--format", "csv", "-o", str(workdir / "visits.csv")], None),
        # luigi finds a batch of fits done: the all-done check of its items, each of which requires its visit.
        (f"luigi ScaleFits --n {checked:,} (all-done check, each item requires a task)",
         ["luigi", "--module", MODULE, "ScaleFits", "--n", str(checked), "--local-scheduler"], None),
    ]  # fmt: skip


def run_process(command: list[str], env: dict) -> dict:
    """Run ``command``; its wall time, peak memory and exit code."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read()
    process.stderr.close()
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "code": os.waitstatus_to_exitcode(status), "stderr": stderr[-500:]}  # fmt: skip


def astra_command(arguments: list[str]) -> list[str]:
    """The command line of ``astra ARGUMENTS`` (or of ``luigi ...``, when they start with ``luigi``)."""
    if arguments[0] == "luigi":
        return [sys.executable, "-m", "luigi", *arguments[1:]]
    return [sys.executable, "-m", "astra.cli", *arguments]


def explained(arguments: list[str], url: str) -> dict:
    """In this process: run ``astra ARGUMENTS``, keeping the read statements it sends, then EXPLAIN ANALYZE each."""
    import psycopg2

    statements: list[tuple[str, object]] = []
    settings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, tuple) and len(record.msg) == 2:
                sql, params = record.msg
                head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
                writes = any(word in sql.upper() for word in ("INSERT ", "UPDATE ", "DELETE "))
                if head in ("SELECT", "WITH") and not writes and ";" not in sql:
                    statements.append((sql, params))
                elif sql.upper().startswith("SET LOCAL JIT"):  # planned as the command planned it (reading())
                    settings.append(sql.replace("LOCAL ", ""))

    logger = logging.getLogger("peewee")
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    from astra.cli import main

    if arguments[0] == "luigi":
        from luigi.cmdline import luigi_run

        main, arguments = luigi_run, arguments[1:]
    started = time.perf_counter()
    try:
        main(arguments)
    except SystemExit:
        pass
    seconds = time.perf_counter() - started
    connection = psycopg2.connect(url)
    cursor = connection.cursor()
    for setting in dict.fromkeys(settings):
        cursor.execute(setting)
    server, hit, read, slowest = 0.0, 0, 0, (0.0, "")
    for sql, params in statements:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params or None)
        (plan,) = cursor.fetchone()[0]
        took = plan["Planning Time"] + plan["Execution Time"]
        server += took
        hit += plan["Plan"].get("Shared Hit Blocks", 0)
        read += plan["Plan"].get("Shared Read Blocks", 0)
        slowest = max(slowest, (took, sql))
    connection.rollback()
    connection.close()
    return {"seconds": seconds, "server_ms": server, "statements": len(statements), "hit": hit, "read": read,
            "slowest_ms": slowest[0], "slowest": slowest[1][:300]}  # fmt: skip


def time_commands(
    url: str, n: int, repeat: int, workdir: Path, only: str | None = None, bytecode: bool = True
) -> list[str]:
    """The table of the commands' figures, as Markdown lines. With ``bytecode``, every process reads astra's
    modules compiled, as an installed package has them (pip compiles them at install; luigi's and astropy's are):
    compiled here first, whatever $PYTHONDONTWRITEBYTECODE says (some containers set it, and each process would
    then compile astra's ~40 modules from source, ~0.15 s here)."""
    env = {
        **os.environ,
        "ASTRA_DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "astra"), str(REPO / "bench")], env=env,
                       check=True)  # fmt: skip
    print(f"bytecode: {'compiled first' if bytecode else 'as the environment has it'} "
          f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE') or 'unset'})", flush=True)  # fmt: skip
    lines = [
        "| command | median s (runs) | CPU s | peak MB | server ms (statements) | pages hit / read | slowest ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, arguments, explain_arguments in commands(n, workdir, url):
        if only and only not in label:
            continue
        runs = []
        for turn in range(repeat):
            this = arguments[turn % len(arguments)] if isinstance(arguments[0], list) else arguments
            runs.append(run_process(astra_command(this), env))
        explain_with = explain_arguments or (arguments[0] if isinstance(arguments[0], list) else arguments)
        done = subprocess.run(
            [sys.executable, __file__, "--explain", json.dumps(explain_with), "--url", url],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        server = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        codes = {run["code"] for run in runs}
        seconds = ", ".join(f"{run['seconds']:.2f}" for run in runs)
        broken = not codes <= {0, 1} or any("Traceback" in run["stderr"] for run in runs)
        failed = f" (FAILED, exit {codes}: {runs[-1]['stderr'].strip().splitlines()[-1:]})" if broken else ""
        cells = (
            [f"{server['server_ms']:,.0f} ({server['statements']})", f"{server['hit']:,} / {server['read']:,}",
             f"{server['slowest_ms']:,.0f}"]
            if server else ["?", "?", "?"]
        )  # fmt: skip
        shown = label if label.startswith("luigi ") else f"astra {label}"
        line = (
            f"| `{shown}`{failed} | {statistics.median(r['seconds'] for r in runs):.2f} ({seconds}) | "
            f"{statistics.median(r['cpu'] for r in runs):.2f} | {max(r['rss_mb'] for r in runs):.0f} | "
            f"{' | '.join(cells)} |"
        )
        lines.append(line)
        print(line, flush=True)
        if server and server["slowest_ms"] > 500:
            print(f"    slowest: {server['slowest']}", flush=True)
    return lines


def _forgotten_nights(url: str, last: int) -> int:
    """How many nights from ``last`` down earlier runs forgot (the first visit of each gone)."""
    missing = 0
    # The visit of spectrum k is task 2k + 1.
    while (
        last - missing >= 0
        and _one(url, "select 1 from astra.task where pk = %s", (2 * (last - missing) * scale_tasks.PER_NIGHT + 1,))
        is None
    ):
        missing += 1
    return missing


def sizes(url: str) -> list[str]:
    """Bytes per task of each astra table and index."""
    import psycopg2

    connection = psycopg2.connect(url)
    cursor = connection.cursor()
    cursor.execute("select count(*) from astra.task")
    (tasks,) = cursor.fetchone()
    cursor.execute(
        "select c.relname, c.relkind, pg_relation_size(c.oid), pg_total_relation_size(c.oid) from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'astra' and c.relkind in ('r', 'i') "
        "order by pg_relation_size(c.oid) desc"
    )
    lines = [f"{tasks:,} tasks", "", "| relation | kind | MB | bytes per task |", "|---|---|---|---|"]
    total = 0
    for name, kind, size, _ in cursor.fetchall():
        total += size
        kind = "table" if kind == "r" else "index"
        lines.append(f"| {name} | {kind} | {size / 2**20:,.0f} | {size / max(tasks, 1):,.0f} |")
    lines.append(f"| all (with TOAST: {_database_size(cursor) / 2**30:.1f} GB database) | | {total / 2**20:,.0f} | "
                 f"{total / max(tasks, 1):,.0f} |")  # fmt: skip
    connection.close()
    return lines


def _database_size(cursor) -> int:
    cursor.execute("select pg_database_size(current_database())")
    return cursor.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=float, default=1e6, help="tasks to fill the database with (default 1e6)")
    parser.add_argument("--database", help="use this database: fill it only if it holds no astra tables")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--no-analyze", action="store_true", help="no ANALYZE after the fill")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the median is shown)")
    parser.add_argument("--only", help="only the commands whose label holds this text")
    parser.add_argument("--fill-only", action="store_true", help="fill the database and stop (implies --keep)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="no compiled cache: with PYTHONDONTWRITEBYTECODE=1 set, each process compiles astra from source",
    )
    parser.add_argument("--explain", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.explain:
        print(json.dumps(explained(json.loads(args.explain), args.url)))
        return
    n = int(args.tasks)
    name = args.database or f"astra_scale_{os.getpid()}"
    url = f"{POSTGRES}/{name}"
    print(machine(), flush=True)
    keep = args.keep or args.fill_only or args.database is not None
    workdir = Path(tempfile.mkdtemp(prefix="astra-scale-"))
    try:
        if not _exists(name):
            admin(f"create database {name}")
        if not _has_tasks(url):
            print(f"\nfilling {name} with {n:,} tasks", flush=True)
            started = time.perf_counter()
            fill(url, n, analyze=not args.no_analyze, say=lambda text: print(text, flush=True))
            print(f"filled in {time.perf_counter() - started:.0f} s", flush=True)
        else:
            n = _task_count(url)
            print(f"\n{name} holds {n:,} tasks already: not filled again", flush=True)
        print("\n" + "\n".join(sizes(url)) + "\n", flush=True)
        if not args.fill_only:
            print(f"load average before: {os.getloadavg()[0]:.2f}\n", flush=True)
            time_commands(url, n, args.repeat, workdir, args.only, bytecode=not args.no_bytecode_cache)
            print(f"\nload average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if not keep:
            admin(f"drop database if exists {name} with (force)")
        else:
            print(f"kept database {name} ({url})", flush=True)


def _one(url: str, sql: str, params: tuple = ()) -> object:
    """The first value of the first row of ``sql`` on the database at ``url`` (None if no row)."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(sql, params)
        row = cursor.fetchone()
        return None if row is None else row[0]
    finally:
        connection.close()


def _exists(name: str) -> bool:
    return _one(f"{POSTGRES}/postgres", "select 1 from pg_database where datname = %s", (name,)) is not None


def _has_tasks(url: str) -> bool:
    return bool(_one(url, "select to_regclass('astra.task') is not null")) and _task_count(url) > 0


def _task_count(url: str) -> int:
    return _one(url, "select max(pk) from astra.task") or 0  # not count(*): a probe of the pk index


if __name__ == "__main__":
    main()
