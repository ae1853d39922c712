"""Benchmarks: astra's DatabaseTarget against luigi's LocalTarget and PostgresTarget, and a million batched items.

    python bench/run.py            # everything, about 15 minutes; prints the tables that go into BENCHMARKS.md
    python bench/run.py --quick    # small sizes, to try it out in a minute

Every figure is measured in a new Python process (no caches carried over), around ``luigi.build`` only (imports
and interpreter start-up excluded, the same for every kind of target), with ``--repeat`` runs per figure,
interleaved, of which the median is shown. All databases live on the same PostgreSQL server: $ASTRA_TEST_POSTGRES,
default postgresql://postgres@127.0.0.1:5432, where the benchmark creates (and drops) databases astra_bench_*
($ASTRA_BENCH_DB names another prefix, so that two benchmarks can run at once).

(a) warm scan: every task done; luigi asked to build a root over N tasks. "all N asked": the root is a
    WrapperTask, so luigi asks each of the N tasks. "root only": the root has its own output, done, so luigi asks
    the root alone (astra still works out the root's identity, which includes those of the N tasks).
(b) cold run: N trivial tasks run from nothing, one worker.
(c) scale: N items of one batched task (bench.tasks.Spectra), cold (processed and recorded) and warm (found done).
(d) outputs: N items each with an output row of five floats and a 100-element float32 array (bench.tasks.FittedSpectra)
    beside the same N items without output rows, on PostgreSQL: `python bench/run.py --only outputs`.
(e) batch: EstimateSNRBatch over 20,000 simulated spectra against a plain loop over the same files, 1 and 2
    processes, SQLite and PostgreSQL: `python bench/run.py --only batch` (bench/batch_vs_loop.py, which has more
    options, e.g. --profile).
(f) root: the root-only warm check of (a) as whole processes, start-up and imports included, as a user meets it:
    `luigi --module bench.tasks AstraRoot --n N` (and LocalRoot, PostgresRoot), default N = 5,000:
    `python bench/run.py --only root [--root-tasks N] [--profile]`. ``--profile`` then runs each astra kind once
    more under cProfile and prints the top entries, to say where the time beyond LocalTarget's goes.
(g) recording: 100,000 batch items recorded on PostgreSQL and SQLite beside the same rows written without astra, and
    the all-done check over 1,000,000 items (bench/recording.py): `python bench/run.py --only recording [--profile]`.
(h) cold processes: N trivial tasks from nothing, timed as whole ``luigi`` command-line processes (interpreter start,
    imports, scan, runs, exit), astra on PostgreSQL and on SQLite beside LocalTarget and PostgresTarget:
    `python bench/run.py --only cold-cli [--cold-cli 1000] [--profile]`. ``--profile`` then runs astra once more on
    each database under cProfile and prints where its time goes (top functions, and the share of astra, peewee,
    the database driver and luigi).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("ASTRA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
#: The prefix of the benchmark's databases.
DB = os.environ.get("ASTRA_BENCH_DB", "astra_bench")
KINDS = ("local", "postgres", "astra", "astra-sqlite")
#: astra with ``[astra] synchronous_commit = true`` (done records wait for the disk), and the kind it is a variant of.
DURABLE = {"astra-durable": "astra", "astra-sqlite-durable": "astra-sqlite"}


# ---------------------------------------------------------------------------------------------------------------
# Measurements: each runs in its own process (python bench/run.py --measure ...) and prints one JSON line.


def _quiet_luigi() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("luigi-interface").setLevel(logging.WARNING)
    logging.getLogger("luigi").setLevel(logging.WARNING)


def _build(task) -> bool:
    import luigi

    return luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")


def measure(what: str, kind: str, n: int) -> dict:
    _quiet_luigi()
    from bench import tasks

    leaf_kind = "astra" if kind.startswith("astra") else kind
    if what == "warm-all":
        task = tasks.Everything(kind=leaf_kind, n=n)
    elif what == "warm-root":
        task = tasks.ROOTS[leaf_kind](n=n)
    elif what == "cold":
        task = tasks.Everything(kind=leaf_kind, n=n)
    elif what in ("scale-cold", "scale-warm"):
        task = tasks.Spectra(stop=n)
    elif what == "outputs-cold":
        task = tasks.FittedSpectra(stop=n)
    elif what == "record-astra":  # set-up of the warm scan, not measured
        tasks.AstraRecorded(n=n).run()
        from astra.batch import BatchTask

        type(
            "RootRecorded", (BatchTask,), {"item_class": tasks.AstraRoot, "parameter_sets": lambda self: [{"n": n}]}
        )().run()
        return {}
    else:
        raise ValueError(what)
    started = time.perf_counter()
    ok = _build(task)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "ok": bool(ok) and task.complete(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if what in ("scale-cold", "outputs-cold"):
        result["recording_seconds"] = getattr(task, "recording_seconds", None)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Orchestration.


def admin(*statements: str, database: str = "postgres") -> None:
    """Run ``statements`` on ``database`` of the benchmark's PostgreSQL server, each committed at once."""
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/{database}")
    connection.autocommit = True
    try:
        for statement in statements:
            connection.cursor().execute(statement)
    finally:
        connection.close()


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.databases: list[str] = []

    def new_postgres(self, name: str, astra_schema: bool) -> str:
        admin(f"drop database if exists {name} with (force)", f"create database {name}")
        self.databases.append(name)
        if astra_schema:
            admin((REPO / "schema" / "astradb" / "astradb.sql").read_text(), database=name)
        return f"{POSTGRES}/{name}"

    def drop_all(self) -> None:
        wait_for_postgres()
        for name in self.databases:
            admin(f"drop database if exists {name} with (force)")

    def env(self, kind: str, astra_url: str) -> dict:
        host = POSTGRES.split("://", 1)[1]
        user, server = host.split("@", 1) if "@" in host else ("postgres", host)
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
            "BENCH_DIR": str(self.workdir),
            "BENCH_POSTGRES": f"{server}/{DB}_luigi/{user}",
            "ASTRA_DATABASE_URL": astra_url,
            **({"LUIGI_CONFIG_PATH": str(self.durable_cfg())} if kind in DURABLE else {}),
        }

    def durable_cfg(self) -> Path:
        path = self.workdir / "durable.cfg"
        path.write_text("[astra]\nsynchronous_commit = true\n")
        return path

    def run(self, what: str, kind: str, n: int, astra_url: str, reset=None) -> dict:
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", what, "--kind", kind, "--n", str(n)]
        for attempt in range(3):
            # Other jobs on a shared machine may restart the PostgreSQL server: wait for it and measure again.
            wait_for_postgres()
            if reset:
                reset(kind)
            done = subprocess.run(command, env=self.env(kind, astra_url), capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
            if result is not None and result.get("ok", True):
                return result
            print(f"({what} with {kind} failed, attempt {attempt + 1}: {done.stderr.strip()[-300:]})", flush=True)
        raise RuntimeError(f"{what} {kind} {n} failed:\n{done.stdout}\n{done.stderr}")


def wait_for_postgres() -> None:
    for _ in range(120):
        if subprocess.run(["pg_isready", "-q", "-d", f"{POSTGRES}/postgres"]).returncode == 0:
            return
        time.sleep(1)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    server = subprocess.run(
        ["psql", "-At", f"{POSTGRES}/postgres", "-c", "select version()"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\nmachine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), "
        f"load average at start {load[0]:.2f}\nPython {platform.python_version()}, PostgreSQL: {server}\n"
        f"free -g:\n{memory}"
    )


def median(runs: list[dict], key: str = "seconds") -> float:
    return statistics.median(run[key] for run in runs)


def compare(bench: Bench, what: str, n: int, repeat: int, urls: dict, reset=None) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for turn in range(repeat):
        for kind in KINDS:  # interleaved, so a slow moment of the machine is spread over every kind
            if kind == "postgres" and turn > 0 and median(runs[kind]) > 20 * median(runs["local"]):
                continue  # one run of PostgresTarget is enough to see how far behind it is, and takes minutes
            runs[kind].append(bench.run(what, kind, n, urls[kind], reset))
    return runs


def table(title: str, runs: dict[str, list[dict]]) -> str:
    local = median(runs["local"])
    names = {
        "local": "luigi.LocalTarget (files)",
        "postgres": "luigi.contrib.postgres.PostgresTarget",
        "astra": "astra DatabaseTarget, PostgreSQL",
        "astra-sqlite": "astra DatabaseTarget, SQLite",
        "astra-durable": "astra DatabaseTarget, PostgreSQL, `synchronous_commit = true`",
        "astra-sqlite-durable": "astra DatabaseTarget, SQLite, `synchronous_commit = true`",
    }
    lines = [f"{title}", "", "| target | median wall time (s) | runs (s) | ratio to LocalTarget |", "|---|---|---|---|"]
    for kind, kind_runs in runs.items():
        seconds = [f"{run['seconds']:.2f}" for run in kind_runs]
        lines.append(
            f"| {names[kind]} | {median(kind_runs):.3f} | {', '.join(seconds)} | {median(kind_runs) / local:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: 1,000 / 200 tasks, 20,000 items")
    parser.add_argument("--warm", type=int, default=10000, help="tasks in the warm scan")
    parser.add_argument("--cold", type=int, default=2000, help="tasks in the cold run")
    parser.add_argument("--items", type=int, default=1_000_000, help="items in the scale benchmark")
    parser.add_argument("--output-items", type=int, default=100_000, help="items in the outputs benchmark")
    parser.add_argument("--record-items", type=int, default=100_000, help="items in the recording benchmark")
    parser.add_argument("--done-items", type=int, default=1_000_000, help="items of the all-done check")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--root-tasks", type=int, default=5000, help="tasks below the root in the root benchmark")
    parser.add_argument("--cold-cli", type=int, default=1000, help="tasks in the cold run of whole luigi processes")
    parser.add_argument(
        "--profile", action="store_true", help="root, recording and cold-cli: also print cProfile's top entries"
    )
    parser.add_argument(
        "--only",
        default="warm,cold,scale,outputs,root,recording,cold-cli",
        help="comma-separated: warm, cold, scale, outputs, batch, root, recording, cold-cli",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.kind, args.n)))
        return
    if args.quick:
        args.warm, args.cold, args.items, args.output_items, args.root_tasks = 1000, 200, 20000, 10000, 1000
        args.record_items, args.done_items, args.cold_cli = 20000, 100000, 200
    only = set(args.only.split(","))
    if "batch" in only:  # whole processes of its own, on databases of its own
        sys.path.insert(0, str(REPO))
        from bench import batch_vs_loop

        batch_vs_loop.main(["--count", "2000"] if args.quick else [])
        only.discard("batch")
        if not only:
            return

    print(machine(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="astra-bench-"))
    bench = Bench(workdir)
    try:
        bench.new_postgres(f"{DB}_luigi", astra_schema=False)
        urls = {
            "local": "",
            "postgres": "",
            "astra": bench.new_postgres(DB, astra_schema=True),
            "astra-sqlite": f"sqlite:///{workdir / 'astra.db'}",
        }
        if "warm" in only:
            warm(bench, args.warm, args.repeat, urls)
        if "cold" in only:
            cold(bench, args.cold, args.repeat, urls)
        if "scale" in only:
            scale(bench, args.items, urls)
        if "outputs" in only:
            with_outputs(bench, args.output_items, args.repeat)
        if "root" in only:
            root_processes(bench, args.root_tasks, max(args.repeat, 5), urls, args.profile)
        if "recording" in only:
            sys.path.insert(0, str(REPO))
            from bench.recording import recording

            recording(bench, args.record_items, args.done_items, args.profile)
        if "cold-cli" in only:
            cold_processes(bench, args.cold_cli, args.repeat, urls, args.profile)
    finally:
        bench.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def warm(bench: Bench, n: int, repeat: int, urls: dict) -> None:
    print(f"\n## (a) warm scan: {n:,} tasks, all done\n", flush=True)
    all_done(bench, n, urls)
    all_asked = compare(bench, "warm-all", n, repeat, urls)
    print(table(f"All {n:,} asked (WrapperTask root):", all_asked), flush=True)
    root_only = compare(bench, "warm-root", n, repeat, urls)
    print("\n" + table(f"Root only (root with its own output, done; {n:,} tasks below it):", root_only), flush=True)


def all_done(bench: Bench, n: int, urls: dict) -> None:
    """Record ``n`` leaves and their root as done, for every kind of target."""
    (bench.workdir / "local").mkdir(exist_ok=True)
    for i in range(n):
        (bench.workdir / "local" / f"{i}.txt").write_text("done\n")
    (bench.workdir / "local" / f"root-{n}.txt").write_text("done\n")
    admin(
        "create table if not exists table_updates (update_id text primary key, target_table text, "
        "inserted timestamp default now())",
        "truncate table_updates",
        f"insert into table_updates (update_id, target_table) select 'leaf-' || i, 'bench' from generate_series(0, "
        f"{n - 1}) i union all select 'root-{n}', 'bench'",
        database=f"{DB}_luigi",
    )
    for kind in ("astra", "astra-sqlite"):
        bench.run("record-astra", kind, n, urls[kind])


ROOTS = {"local": "LocalRoot", "postgres": "PostgresRoot", "astra": "AstraRoot", "astra-sqlite": "AstraRoot"}


def root_processes(bench: Bench, n: int, repeat: int, urls: dict, profile: bool) -> None:
    """The root-only warm check, each a whole ``luigi --module bench.tasks <Root> --n N`` process."""
    print(f"\n## (f) root-only warm check, whole processes: a done root over {n:,} done tasks\n", flush=True)
    all_done(bench, n, urls)

    def luigi(kind: str, *before: str) -> list[str]:
        return [sys.executable, *before, "-m", "luigi", "--module", "bench.tasks", ROOTS[kind], "--n", str(n)]

    def once(kind: str) -> dict:
        wait_for_postgres()
        started, cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run(
            [*luigi(kind), "--local-scheduler"], env=bench.env(kind, urls[kind]), capture_output=True, text=True
        )
        seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
        if done.returncode != 0 or "1 complete ones were encountered" not in done.stdout + done.stderr:
            raise RuntimeError(f"{ROOTS[kind]} ({kind}) did not find its root done:\n{done.stdout}\n{done.stderr}")
        return {"seconds": seconds, "cpu": cpu}

    for kind in KINDS:  # warm up the file system cache and the server, not measured
        once(kind)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    load = os.getloadavg()[0]
    for _ in range(repeat):
        for kind in KINDS:  # interleaved, so a slow moment of the machine is spread over every kind
            runs[kind].append(once(kind))
    title = (
        f"`luigi --module bench.tasks <Root> --n {n}` (root done, {n:,} done tasks below it), whole processes; "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after:"
    )
    print(table(title, runs), flush=True)
    # CPU time (user + system) of the same processes: on a busy machine it moves less than wall time does.
    local = median(runs["local"], "cpu")
    print("\n| target | median CPU time (s) | ratio to LocalTarget |\n|---|---|---|", flush=True)
    for kind, kind_runs in runs.items():
        print(f"| {kind} | {median(kind_runs, 'cpu'):.3f} | {median(kind_runs, 'cpu') / local:.2f}x |", flush=True)
    if profile:
        for kind in ("astra-sqlite", "astra"):
            stats = bench.workdir / f"root-{kind}.prof"
            subprocess.run(
                [*luigi(kind, "-m", "cProfile", "-o", str(stats)), "--local-scheduler"],
                env=bench.env(kind, urls[kind]), capture_output=True, check=True,
            )  # fmt: skip
            print(f"\n### cProfile of {ROOTS[kind]} ({kind})\n", flush=True)
            print_profile(stats)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_profile(path: Path, top: int = 25) -> None:
    """Where a root's check spends its time: module loading against luigi's scan, and the top entries of each."""
    import io
    import pstats

    stats = pstats.Stats(str(path)).strip_dirs()
    entries = stats.stats  # (file, line, function) -> (calls, primitive calls, own time, cumulative time, callers)
    total = sum(own for _, _, own, _, _ in entries.values())
    scan = max((cumulative for (_, _, name), (_, _, _, cumulative, _) in entries.items() if name == "add"), default=0)
    print(f"whole process {total:.2f} s under cProfile; luigi's scan (Worker.add, the check itself) {scan:.2f} s; "
          "the rest is start-up (imports: the same for LocalTarget)", flush=True)  # fmt: skip
    ours = r"(identity|creation|targets|tasks|queries|dialect|connection|worker|task_register|task)\.py"
    for order, restriction, what in (
        ("tottime", (top,), "most time of their own, whole process"),
        ("cumulative", (ours, top), "most time including callees, astra and luigi's scan only"),
    ):
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats(order).print_stats(*restriction)
        text = out.getvalue()
        print(f"By {order} ({what}):\n```\n{text[text.index('   ncalls') :].rstrip()}\n```", flush=True)


def cold(bench: Bench, n: int, repeat: int, urls: dict) -> None:
    print(f"\n## (b) cold run: {n:,} trivial tasks from nothing, one worker\n", flush=True)

    def reset(kind: str) -> None:
        shutil.rmtree(bench.workdir / "local", ignore_errors=True)
        admin("drop table if exists table_updates", database=f"{DB}_luigi")
        admin("truncate astra.task, astra.parameter, astra.task_parameter, astra.dependency", database=DB)
        sqlite = bench.workdir / "astra.db"
        for path in (sqlite, sqlite.with_name("astra.db-wal"), sqlite.with_name("astra.db-shm")):
            path.unlink(missing_ok=True)

    runs = compare(bench, "cold", n, repeat, urls, reset)
    print(table(f"{n:,} tasks run:", runs), flush=True)


def _reset_cold(bench: Bench, kind: str) -> None:
    """Nothing done: no files, no marker table, empty astra tables (PostgreSQL) and no SQLite file."""
    shutil.rmtree(bench.workdir / "local", ignore_errors=True)
    (bench.workdir / "local").mkdir()
    admin("drop table if exists table_updates", database=f"{DB}_luigi")
    admin("truncate astra.task, astra.parameter, astra.task_parameter, astra.dependency", database=DB)
    sqlite = bench.workdir / "astra.db"
    for path in (sqlite, sqlite.with_name("astra.db-wal"), sqlite.with_name("astra.db-shm")):
        path.unlink(missing_ok=True)


def _luigi_command(n: int, kind: str) -> list[str]:
    leaf_kind = "astra" if kind.startswith("astra") else kind
    return [
        "-m", "luigi", "--module", "bench.tasks", "Everything", "--kind", leaf_kind, "--n", str(n),
        "--local-scheduler", "--workers", "1", "--log-level", "WARNING",
        "--retcode-task-failed", "1", "--retcode-scheduling-error", "1", "--retcode-missing-data", "1",
    ]  # fmt: skip


def cold_process(bench: Bench, n: int, kind: str, url: str, profile: Path | None = None) -> dict:
    """One whole ``luigi`` process running ``n`` trivial tasks from nothing (optionally under cProfile)."""
    wait_for_postgres()
    _reset_cold(bench, kind)
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), *_luigi_command(n, kind)]
    started = time.perf_counter()
    done = subprocess.run(command, env=bench.env(kind, url), capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cold-cli {kind} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"seconds": seconds}


def cold_processes(bench: Bench, n: int, repeat: int, urls: dict, profile: bool) -> None:
    print(f"\n## (e) cold run, whole luigi processes: {n:,} trivial tasks from nothing, one worker\n", flush=True)
    kinds = (*KINDS, *DURABLE)
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for turn in range(repeat):
        for kind in kinds:  # interleaved, so a slow moment of the machine is spread over every kind
            if kind == "postgres" and turn > 0:
                continue  # one run of PostgresTarget shows how far behind it is, and takes minutes
            runs[kind].append(cold_process(bench, n, kind, urls[DURABLE.get(kind, kind)]))
    load = os.getloadavg()
    print(table(f"{n:,} tasks run, each figure a whole `luigi` process (load average {load[0]:.2f}):", runs))
    postgres_anchor = median(runs["postgres"])
    print(
        f"\nastra on PostgreSQL / PostgresTarget: {median(runs['astra']) / postgres_anchor:.2f}x; "
        f"astra on SQLite / PostgresTarget: {median(runs['astra-sqlite']) / postgres_anchor:.2f}x",
        flush=True,
    )
    if profile:
        for kind in ("astra", "astra-sqlite"):
            path = bench.workdir / f"{kind}.prof"
            cold_process(bench, n, kind, urls[kind], profile=path)
            name = "SQLite" if kind == "astra-sqlite" else "PostgreSQL"
            print(f"\n### Where astra's time goes on {name} ({n:,} tasks, one profiled process)\n", flush=True)
            print(profile_summary(path), flush=True)


def profile_summary(path: Path, top: int = 25) -> str:
    """The share of the profiled time spent in astra, peewee, the database drivers, luigi and the rest, and the
    functions that take most time of their own."""
    import pstats

    stats = pstats.Stats(str(path))
    total = stats.total_tt
    areas = {"astra": 0.0, "peewee": 0.0, "database driver": 0.0, "luigi": 0.0, "other": 0.0}
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        if "/astra/" in filename:
            area = "astra"
        elif "peewee" in filename or "playhouse" in filename:
            area = "peewee"
        elif any(driver in filename or driver in name for driver in ("psycopg", "sqlite3")):
            area = "database driver"
        elif "/luigi/" in filename:
            area = "luigi"
        else:
            area = "other"
        areas[area] += own
        rows.append((own, calls, cumulative, f"{Path(filename).name}:{line}({name})"))
    lines = [f"total {total:.2f} s; own time by area: " + ", ".join(f"{a} {s:.2f} s" for a, s in areas.items())]
    lines += ["", "| own s | calls | cumulative s | function |", "|---|---|---|---|"]
    for own, calls, cumulative, where in sorted(rows, reverse=True)[:top]:
        lines.append(f"| {own:.3f} | {calls} | {cumulative:.3f} | {where} |")
    lines += ["", "astra's functions by cumulative time (what they spend, with what they call):", ""]
    stats_astra = [
        (cumulative, calls, f"{Path(f).name}:{line}({name})")
        for (f, line, name), (_, calls, _own, cumulative, _) in stats.stats.items()
        if "/astra/" in f
    ]
    for cumulative, calls, where in sorted(stats_astra, reverse=True)[:top]:
        lines.append(f"- {cumulative:.3f} s, {calls} calls: {where}")
    return "\n".join(lines)


def scale(bench: Bench, n: int, urls: dict) -> None:
    print(f"\n## (c) scale: {n:,} items through one batched task (chunks of 5,000)\n", flush=True)
    lines = [
        "| database | cold: process + record (s) | items/s end to end | items/s recording only | peak RSS cold (MB) "
        "| warm: find all done (s) | peak RSS warm (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    sqlite = bench.workdir / "scale.db"

    def fresh(kind: str) -> None:
        if kind == "astra":
            bench.new_postgres(f"{DB}_scale", astra_schema=True)
        for path in (sqlite, sqlite.with_name("scale.db-wal"), sqlite.with_name("scale.db-shm")):
            path.unlink(missing_ok=True)

    for kind, name in (("astra", "PostgreSQL"), ("astra-sqlite", "SQLite")):
        url = f"{POSTGRES}/{DB}_scale" if kind == "astra" else f"sqlite:///{sqlite}"
        cold_run = bench.run("scale-cold", kind, n, url, reset=fresh)
        warm_run = bench.run("scale-warm", kind, n, url)
        recording = cold_run["recording_seconds"]
        lines.append(
            f"| {name} | {cold_run['seconds']:.1f} | {n / cold_run['seconds']:,.0f} | {n / recording:,.0f} | "
            f"{cold_run['peak_rss_mb']:.0f} | {warm_run['seconds']:.1f} | {warm_run['peak_rss_mb']:.0f} |"
        )
        print(f"{name}: cold {cold_run}, warm {warm_run}", flush=True)
    print("\n" + "\n".join(lines), flush=True)


def with_outputs(bench: Bench, n: int, repeat: int) -> None:
    print(f"\n## (d) output rows: {n:,} batch items on PostgreSQL, with and without an output row each\n", flush=True)
    sys.path.insert(0, str(REPO))  # this checkout's astra, as in the measuring processes
    from astra.database import output_tables
    from bench import tasks

    def fresh(kind: str) -> None:
        bench.new_postgres(f"{DB}_outputs", astra_schema=True)
        admin(*output_tables.ddl([tasks.Fit]), database=f"{DB}_outputs")

    url = f"{POSTGRES}/{DB}_outputs"
    runs: dict[str, list[dict]] = {"scale-cold": [], "outputs-cold": []}
    for _ in range(repeat):
        for what in runs:  # interleaved, so a busy moment of the machine is spread over both
            runs[what].append(bench.run(what, "astra", n, url, reset=fresh))
    lines = [
        "| items | runs | median s | items/s end to end | items/s recording only | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for what, name in (("scale-cold", "without output rows"), ("outputs-cold", "with an output row each")):
        seconds = median(runs[what])
        recording = median(runs[what], "recording_seconds")
        each = ", ".join(f"{r['seconds']:.1f}" for r in runs[what])
        lines.append(
            f"| {name} | {each} | {seconds:.1f} | {n / seconds:,.0f} "
            f"| {n / recording:,.0f} | {max(r['peak_rss_mb'] for r in runs[what]):.0f} |"
        )
        print(f"{name}: {runs[what]}", flush=True)
    print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
