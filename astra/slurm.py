"""The SLURM executor: a task's ``run()`` runs as a SLURM job, while the luigi worker that claimed it waits.

Chosen with ``[astra] executor = slurm`` (or ``--astra-executor slurm``, or ``executor = "slurm"`` on a task class).
The luigi worker claims the task as always, submits a job that runs :func:`main` with the same Python,
working directory and configuration, and polls ``scontrol`` until the job ends. The job rebuilds the task, takes
over the worker's attempt (a compare-and-swap on ``astra.task.attempts``), heartbeats it and records the result
against that same attempt. So the task runs once: while the job is pending the worker's heartbeat keeps the claim,
once it runs the job's does, and if the worker dies the job still records what it did. A job that ends without a
done record (cancelled, out of time or memory, node failure, non-zero exit) leaves the task failed, with the SLURM
state and the tail of the job's stderr as its error.

Settings come from ``[slurm]`` (:class:`slurm`); a task class overrides any of them with a class attribute named
``slurm_<setting>``, e.g. ``slurm_sbatch_args = "--gres=gpu:1"``. A :class:`~astra.batch.BatchTask` runs as a job
array of ``--jobs`` shares (:func:`run_batch`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import luigi
from luigi.task_register import load_task

from astra.config import (
    DATABASE_URL_ENV,
    adopt_command_line,
    adopt_luigi_config,
    command_line,
    database_url,
    luigi_config,
    settings,
)
from astra.database import queries

if TYPE_CHECKING:
    from astra.recording import Claim

#: Job states after which a job runs no more (``scontrol`` names; COMPLETED means exit code 0).
FINISHED = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "SPECIAL_EXIT", "REVOKED",
}  # fmt: skip
#: Lines of the job's stderr kept in the task's error.
STDERR_LINES = 20
#: The environment variable that hands a job its specification (:func:`submit`).
SPEC_ENV = "ASTRA_SLURM_SPEC"
#: Longest specification an environment variable takes (Linux refuses a longer single string: MAX_ARG_STRLEN).
SPEC_BYTES = 128 * 1024 - 1 - len(SPEC_ENV) - 1

_in_job = False  # True inside a job (:func:`main`): there run() runs here, whatever the executor says


class slurm(luigi.Config):  # noqa: N801 -- luigi names the config section after the class
    """Settings of the jobs the SLURM executor submits: ``[slurm]`` in luigi.cfg or ``--slurm-<name>``."""

    partition = luigi.Parameter(default="", description="sbatch --partition (empty: the cluster's default)")
    account = luigi.Parameter(default="", description="sbatch --account")
    qos = luigi.Parameter(default="", description="sbatch --qos")
    time = luigi.Parameter(default="", description="sbatch --time, e.g. 2:00:00 (SLURM counts whole minutes)")
    mem = luigi.Parameter(default="", description="sbatch --mem, e.g. 4G")
    cpus_per_task = luigi.IntParameter(default=0, description="sbatch --cpus-per-task (0: the cluster's default)")
    sbatch_args = luigi.Parameter(default="", description="more sbatch arguments, e.g. --gres=gpu:1 --exclusive")
    log_dir = luigi.Parameter(
        default=os.path.join("~", ".astra", "slurm"),
        description="where each job's stdout and stderr go (<task_id>-<job>.out/.err); must be visible to the nodes",
    )
    jobs = luigi.IntParameter(default=1, description="array elements (shares) a BatchTask is split into")
    poll = luigi.FloatParameter(default=1.0, description="longest pause, in seconds, between two looks at a job")


SETTINGS = ("partition", "account", "qos", "time", "mem", "cpus_per_task", "sbatch_args", "log_dir", "jobs", "poll")


class SlurmJobError(RuntimeError):
    """A SLURM job ended without recording its task as done."""


def wanted(task: luigi.Task, config: luigi.Config | None = None) -> bool:
    """Whether ``task`` runs as a SLURM job: its class's ``executor``, else ``[astra] executor`` (of ``config``, the
    ``[astra]`` settings if read already)."""
    if _in_job:
        return False
    executor = getattr(task, "executor", None)
    where = f"{type(task).__name__}.executor"
    if not executor:
        executor, where = (config or settings()).executor, "[astra] executor (or --astra-executor)"
    if executor not in ("local", "slurm"):
        raise ValueError(f"astra: {where} is {executor!r}; use 'local' or 'slurm'")
    return executor == "slurm"


def options(task: luigi.Task) -> dict:
    """The ``[slurm]`` settings for ``task``, with its class's ``slurm_<setting>`` attributes over them."""
    config = slurm()
    return {name: getattr(task, f"slurm_{name}", getattr(config, name)) for name in SETTINGS}


def execute(task: luigi.Task, claim: Claim, run: Callable[[], object]) -> object:
    """Run ``run`` here, or, under the SLURM executor, the task as a job: the one call from astra's recording."""
    if not wanted(task, claim.settings):
        return run()
    run_as_job(task, claim)
    return None


# The luigi worker's side.


@dataclass
class JobState:
    """One job (or array element) as ``scontrol`` reports it."""

    job_id: str
    state: str
    node: str = ""
    exit_code: str = ""
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED or self.state == "UNKNOWN"


def run_as_job(task: luigi.Task, claim: Claim) -> None:
    """Run the claimed ``task`` as a SLURM job and wait; return when the job recorded it done, else raise."""
    settings_ = options(task)
    if task.task_module == "__main__":
        raise SlurmJobError(
            f"astra: {task.task_family} is defined in the script being run (__main__), which a SLURM job cannot "
            "import; move it into a module, or give the class executor = 'local'"
        )
    spec = _spec(task)
    attempt = claim.attempt
    spec["attempt"] = [attempt.pk, attempt.task_hash, attempt.token, attempt.attempts]
    name = _job_name(task)
    started = time.monotonic()
    job_id = submit(spec, name, settings_)
    queries.note_job(claim.attempt, job_id)
    _status(task, f"SLURM job {job_id} submitted")
    try:
        states = wait([job_id], task, settings_["poll"], lambda states: _describe(job_id, states))
    except BaseException as exc:
        _cancel(job_id)
        claim.release()
        if queries.attempt_status(claim.attempt) != queries.DONE:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                why = f"SLURM job {job_id} cancelled: the luigi process was interrupted ({type(exc).__name__})"
            else:
                why = f"SLURM job {job_id} cancelled: astra could not follow it ({type(exc).__name__}: {exc})"
            queries.job_failed(claim.attempt, why, why, time.monotonic() - started)
            claim.recorded = True
        raise
    claim.release()  # the job has ended: nothing to heartbeat any more
    if queries.attempt_status(claim.attempt) == queries.DONE:
        claim.recorded = True
        return
    state = states[0]
    tail = _stderr_tail(_log_path(settings_, name, job_id, ".err"))
    where = f" on {state.node}" if state.node and state.node != "(null)" else ""
    error = f"SLURM job {job_id} {state.state} (exit code {state.exit_code or '?'}){where}"
    if state.reason and state.reason != "None":
        error += f", reason {state.reason}"
    error += f"; stderr tail:\n{tail}" if tail else "; its stderr is empty"
    queries.job_failed(claim.attempt, error[-2000:], tail or error, time.monotonic() - started)
    claim.recorded = True
    raise SlurmJobError(error)


def run_batch(batch: luigi.Task) -> None:
    """Run a BatchTask as a job array: one element per share holding items not yet done; raise if any fails."""
    settings_ = options(batch)
    shares = getattr(batch, "jobs", 0) or settings_["jobs"]
    hashes: list[str] = []
    share_of: list[int] = []
    for index, item in enumerate(batch.items()):
        hashes.append(item.task_hash)
        share_of.append(index % shares)
    done = queries.done_hashes(hashes)
    pending = [h for h in hashes if h not in done]
    needed = sorted({share for h, share in zip(hashes, share_of) if h not in done})
    if not needed:
        return
    spec = _spec(batch)
    spec["shares"] = shares
    name = _job_name(batch)
    job_id = submit(spec, name, settings_, array=",".join(map(str, needed)))
    _status(batch, f"SLURM job array {job_id}: {len(needed)} of {shares} shares submitted")
    progress = _BatchProgress(batch, job_id, pending, len(hashes) - len(pending), len(hashes))
    try:
        states = wait([job_id], batch, settings_["poll"], progress.describe, expected=len(needed))
    except BaseException:
        _cancel(job_id)
        raise
    _status(batch, progress.describe(states, force=True))
    bad = [state for state in states if state.state != "COMPLETED"]
    if bad:
        first = bad[0]
        tail = _stderr_tail(_log_path(settings_, name, first.job_id, ".err"))
        summary = ", ".join(f"{state.job_id} {state.state}" for state in bad)
        raise SlurmJobError(
            f"{len(bad)} of {len(states)} shares of SLURM job array {job_id} failed ({summary}); "
            f"stderr tail of {first.job_id}:\n{tail}"
        )


class _BatchProgress:
    """Items done so far, for luigid's dashboard, counted at most every few seconds."""

    def __init__(self, batch: luigi.Task, job_id: str, pending: list[str], done: int, total: int) -> None:
        self.batch, self.job_id, self.pending, self.done, self.total = batch, job_id, pending, done, total
        self.counted_at, self.cost = 0.0, 0.0

    def describe(self, states: list[JobState], force: bool = False) -> str:
        now = time.monotonic()
        if force or now - self.counted_at > max(2.0, 5 * self.cost):
            self.done_now = len(queries.done_hashes(self.pending))
            self.cost, self.counted_at = time.monotonic() - now, time.monotonic()
            if callable(self.batch.set_progress_percentage) and self.total:
                self.batch.set_progress_percentage(round(100 * (self.done + self.done_now) / self.total))
        counts: dict[str, int] = {}
        for state in states:
            counts[state.state] = counts.get(state.state, 0) + 1
        shares = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"SLURM job array {self.job_id}: {self.done + self.done_now} of {self.total} items done; shares {shares}"


def submit(spec: dict, name: str, settings_: dict, array: str | None = None) -> str:
    """Submit a job running :func:`main` for ``spec``; the job id (of the array, for an array)."""
    log_dir = Path(os.path.expanduser(settings_["log_dir"])).absolute()
    log_dir.mkdir(parents=True, exist_ok=True)
    ids = "%A_%a" if array else "%j"
    command = ["sbatch", "--parsable", f"--job-name={name}", f"--chdir={os.getcwd()}", "--export=ALL"]
    command += [f"--output={log_dir}/{name}-{ids}.out", f"--error={log_dir}/{name}-{ids}.err"]
    for setting in ("partition", "account", "qos", "time", "mem"):
        if settings_[setting]:
            command.append(f"--{setting}={settings_[setting]}")
    if settings_["cpus_per_task"]:
        command.append(f"--cpus-per-task={settings_['cpus_per_task']}")
    if array:
        command.append(f"--array={array}")
    command += shlex.split(settings_["sbatch_args"])
    # The specification holds secrets (the database URL's password, luigi's whole configuration): it goes in the
    # job's environment, which only its owner can read, never on the command line (`ps` shows that to everyone)
    # or in the job script. sbatch's --export=ALL hands the environment it runs with to the job.
    env = _environment(spec)
    env[SPEC_ENV] = json.dumps(spec)
    if len(env[SPEC_ENV].encode()) > SPEC_BYTES:
        raise SlurmJobError(
            f"astra: the SLURM job's specification (the task's parameters and luigi's configuration) is "
            f"{len(env[SPEC_ENV].encode())} bytes, more than an environment variable holds ({SPEC_BYTES}); "
            "make luigi.cfg smaller"
        )
    # -c, not -m astra.slurm: under -m this module would be loaded twice (as __main__ and by astra.tasks).
    entry = "import sys; from astra.slurm import main; sys.exit(main())"
    script = f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(entry)}\n"
    try:
        done = subprocess.run(command, input=script, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise SlurmJobError(
            "astra: sbatch not found; run on a host of a SLURM cluster (or start one here with "
            "scripts/slurm-local start), or set [astra] executor = local"
        ) from None
    if done.returncode != 0:
        raise SlurmJobError(f"astra: sbatch refused the job: {done.stderr.strip()} (command: {shlex.join(command)})")
    return done.stdout.strip().split(";")[0]


def wait(
    job_ids: list[str],
    task: luigi.Task,
    poll: float,
    describe: Callable[..., str],
    expected: int = 1,
) -> list[JobState]:
    """Poll until every job (and ``expected`` array elements) has finished; say each change in luigid."""
    parent = os.getppid()
    in_child = _is_task_process()
    previous = _on_sigterm()
    said = ""
    pause = 0.05
    try:
        while True:
            states = [state for job_id in job_ids for state in job_states(job_id)]
            if states and all(state.finished for state in states) and len(states) >= expected:
                return states
            message = describe(states)
            if message != said:
                _status(task, message)
                said = message
            if in_child and os.getppid() != parent:
                raise KeyboardInterrupt("the luigi process that ran this worker is gone")
            time.sleep(pause)
            pause = min(poll, pause * 2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_FIELD = re.compile(r"(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|NodeList|BatchHost|ExitCode)=(\S*)")


def job_states(job_id: str) -> list[JobState]:
    """What SLURM says about a job, one entry per array element (pending elements not yet split: one entry)."""
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        return _accounted(job_id, done.stderr)
    states = []
    for line in done.stdout.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobState" not in fields:
            continue
        element = fields.get("ArrayTaskId")
        name = f"{fields['ArrayJobId']}_{element}" if element else fields["JobId"]
        node = fields.get("BatchHost") or fields.get("NodeList", "")
        states.append(JobState(name, fields["JobState"], node, fields.get("ExitCode", ""), fields.get("Reason", "")))
    return states


def _accounted(job_id: str, why: str) -> list[JobState]:
    """A job scontrol has forgotten (older than MinJobAge), as accounting remembers it, if there is accounting."""
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,NodeList,ExitCode"], capture_output=True, text=True
    )
    states = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        name, state, node, exit_code = line.split("|")
        states.append(JobState(name, state.split()[0], node, exit_code))
    if not states and "Invalid job id" in why:
        # Neither knows it any more: it is over, and the database row says whether it was recorded.
        states = [JobState(job_id, "UNKNOWN", reason="forgotten_by_slurmctld")]
    return states  # empty when slurmctld did not answer (busy): ask again


def _describe(job_id: str, states: list[JobState]) -> str:
    if not states:
        return f"SLURM job {job_id} submitted"
    state = states[0]
    if state.state == "RUNNING":
        return f"SLURM job {job_id} RUNNING on {state.node}"
    return f"SLURM job {job_id} {state.state}"


def _cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True)


def _on_sigterm():
    """While waiting: SIGTERM acts as Ctrl-C does, so the job is cancelled and the task recorded failed."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    return signal.signal(signal.SIGTERM, interrupt)


def _is_task_process() -> bool:
    """Whether this is a process luigi forked for one task (``--workers`` > 1), whose parent is the luigi process."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _status(task: luigi.Task, message: str) -> None:
    if callable(task.set_status_message):
        task.set_status_message(message)


def _spec(task: luigi.Task) -> dict:
    """What the job needs to rebuild the task, and the astra settings of this process."""
    config = settings()
    return {
        "module": task.task_module,
        "family": task.task_family,
        "params": task.to_str_params(),
        "astra": {name: str(getattr(config, name)) for name, _ in config.get_params() if name != "executor"},
        "database_url": database_url(),  # as this process resolved it (command line, environment, luigi.cfg)
        "command_line": command_line(),  # it decides parameters not given, of the tasks below and of batch items
        "luigi_config": luigi_config(),  # so does luigi's configuration, which a script may have set in memory
    }


def _environment(spec: dict) -> dict:
    """This process's environment, with the task's and astra's source directories on PYTHONPATH."""
    roots = []
    for module in (spec["module"], __name__):
        top = sys.modules[module.split(".")[0]]
        if getattr(top, "__file__", None):
            roots.append(str(Path(top.__file__).resolve().parent.parent))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *filter(None, env.get("PYTHONPATH", "").split(":"))]))
    return env


def _job_name(task: luigi.Task) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task.task_id)[:120]


def _log_path(settings_: dict, name: str, job_id: str, suffix: str) -> Path:
    return Path(os.path.expanduser(settings_["log_dir"])).absolute() / f"{name}-{job_id}{suffix}"


def _stderr_tail(path: Path) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-STDERR_LINES:])


# The job's side.


def main() -> int:
    """The job's entry point: run (a share of) the task that ``$ASTRA_SLURM_SPEC`` (JSON) describes, in a SLURM job."""
    global _in_job
    _in_job = True
    spec = json.loads(os.environ.pop(SPEC_ENV))  # not for the task's own subprocesses
    adopt_luigi_config(spec.get("luigi_config"))
    config = luigi.configuration.get_config()
    for name, value in spec["astra"].items():
        config.set("astra", name, value)
    if spec["database_url"]:
        os.environ[DATABASE_URL_ENV] = spec["database_url"]
    importlib.import_module(spec["module"])
    adopt_command_line(spec.get("command_line"))
    task = load_task(spec["module"], spec["family"], spec["params"])
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if "shares" in spec:
        return _run_share(task, int(os.environ["SLURM_ARRAY_TASK_ID"]), spec["shares"])
    return _run_attempt(task, queries.Attempt(*spec["attempt"]), job_id, node)


def _run_attempt(task: luigi.Task, attempt: queries.Attempt, job_id: str, node: str) -> int:
    from astra.recording import Claim, run_unrecorded  # not at the top: astra.recording imports this module

    if not queries.hand_over(attempt, job_id, node):
        print(f"astra: {task} is no longer claimed by attempt {attempt.attempts} (taken over or finished); "
              "not run", file=sys.stderr)  # fmt: skip
        return 3
    claim = Claim(task)
    claim.adopt(attempt)
    task._astra_claim = claim
    try:
        result = run_unrecorded(task)
        if isinstance(result, Iterator):
            raise TypeError(
                f"{task.task_family}.run() yields dynamic dependencies, which a SLURM job cannot hand to luigi; "
                "give the class executor = 'local'"
            )
        if not claim.recorded:
            claim.finish(result)
    except BaseException as exc:
        claim.fail(exc)
        raise
    finally:
        claim.release()
        task._astra_claim = None
    return 0


def _run_share(batch: luigi.Task, share: int, shares: int) -> int:
    every = batch.parameter_sets
    chosen = [values for index, values in enumerate(every()) if index % shares == share]
    batch.parameter_sets = lambda: chosen
    batch.run()
    return 0
