"""How many tasks one luigi run can push through luigid before it slows down, and what batching does instead.

    python bench/luigid_scaling.py                          # about six minutes on two cores
    python bench/luigid_scaling.py --sizes 250 --batch-sizes 1000    # a quick look
    python bench/luigid_scaling.py --sizes 4000             # the slow end: another twelve minutes

Each figure is one ``luigi`` command line (a new process, so its interpreter start-up of ~1 s is included) that
runs N trivial astra tasks (``Tick``, run() does nothing) under one ``Ticks`` wrapper, from nothing, either through
a real luigid started by this script or with ``--local-scheduler``. "luigid CPU" is the CPU time luigid itself
used during that run. The last rows run the same N items as ONE luigi task (``TickBatch``, an astra.batch.BatchTask)
through luigid. The astra database is a fresh PostgreSQL database (created and dropped here) on
$ASTRA_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import luigi

import astra
from astra.batch import BatchTask

REPO = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("ASTRA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
BIN = Path(sys.executable).parent


class Tick(astra.BaseTask):
    """A task that does nothing: what is left is the cost of scheduling and recording it."""

    run_id = luigi.Parameter()
    i = luigi.IntParameter()

    def run(self) -> None:
        pass


class Ticks(luigi.WrapperTask):
    run_id = luigi.Parameter()
    n = luigi.IntParameter()

    def requires(self) -> list[Tick]:
        return [Tick(run_id=self.run_id, i=i) for i in range(self.n)]


class TickBatch(BatchTask):
    """The same N ticks as items of one luigi task."""

    item_class = Tick
    chunk_size = 5000
    run_id = luigi.Parameter()
    n = luigi.IntParameter()

    def parameter_sets(self):
        return ({"run_id": self.run_id, "i": i} for i in range(self.n))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _admin(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    try:
        connection.cursor().execute(sql)
    finally:
        connection.close()


class Luigid:
    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        (directory / "logs").mkdir(parents=True)
        command = [str(BIN / "luigid"), "--address", "127.0.0.1", "--port", str(self.port)]
        command += ["--state-path", str(directory / "state.pickle"), "--logdir", str(directory / "logs")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/task_list?data=%7B%7D", timeout=2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("luigid did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def _luigi(args: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "luigi"), "--module", "bench.luigid_scaling", *args, "--no-lock", "--log-level", "INFO"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0 or ":)" not in result.stdout:
        raise RuntimeError(f"luigi {' '.join(args)} failed:\n{result.stdout[-3000:]}")
    return seconds, result.stdout


def _ran(output: str) -> int:
    found = re.search(r"\* (\d+) ran successfully", output.split("===== Luigi Execution Summary =====")[1])
    return int(found.group(1)) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4000, 100000])
    parser.add_argument("--json", action="store_true", help="print one JSON line per figure as well")
    options = parser.parse_args()

    name = f"astra_bench_luigid_{uuid.uuid4().hex[:8]}"
    _admin(f"create database {name}")
    env = {**os.environ, "ASTRA_DATABASE_URL": f"{POSTGRES}/{name}", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", "from astra.database import create_schema; create_schema()"], env=env)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        server = Luigid(Path(directory))
        central = ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(server.port)]
        # The repository's luigi.cfg picks the local scheduler; this run names its scheduler on each command line.
        (Path(directory) / "client.cfg").write_text("[core]\nlocal_scheduler = false\n")
        env["LUIGI_CONFIG_PATH"] = str(Path(directory) / "client.cfg")
        try:
            for n in options.sizes:
                for scheduler, extra in (("luigid", central), ("local", ["--local-scheduler"])):
                    cpu = _cpu_seconds(server.process.pid)
                    seconds, output = _luigi(["Ticks", "--run-id", uuid.uuid4().hex, "--n", str(n), *extra], env)
                    cpu = _cpu_seconds(server.process.pid) - cpu if scheduler == "luigid" else None
                    rows.append(("individual tasks", scheduler, n, _ran(output), seconds, cpu))
                    _print(rows[-1], options.json)
            for n in options.batch_sizes:
                cpu = _cpu_seconds(server.process.pid)
                seconds, output = _luigi(["TickBatch", "--run-id", uuid.uuid4().hex, "--n", str(n), *central], env)
                rows.append(
                    ("one batch task", "luigid", n, _ran(output), seconds, _cpu_seconds(server.process.pid) - cpu)
                )
                _print(rows[-1], options.json)
        finally:
            server.stop()
            _admin(f"drop database if exists {name} with (force)")


def _print(row: tuple, as_json: bool) -> None:
    kind, scheduler, n, ran, seconds, cpu = row
    if not hasattr(_print, "header"):
        _print.header = True
        print(f"{'what':<18}{'scheduler':<11}{'N':>8}{'ran':>8}{'wall s':>9}{'ms/task':>9}{'luigid CPU s':>14}")
    cpu_text = f"{cpu:.1f}" if cpu is not None else "-"
    print(f"{kind:<18}{scheduler:<11}{n:>8}{ran:>8}{seconds:>9.1f}{1000 * seconds / n:>9.2f}{cpu_text:>14}", flush=True)
    if as_json:
        print(json.dumps(dict(zip(("what", "scheduler", "n", "ran", "seconds", "luigid_cpu"), row))), flush=True)


if __name__ == "__main__":
    main()
