"""The SLURM executor: a task's ``run()`` runs as a SLURM job, a batch's items as job arrays, while the luigi worker
that claimed them waits.

Chosen with ``[astra] executor = slurm`` (or ``--astra-executor slurm``, or ``executor = "slurm"`` on a task class).
The luigi worker claims the task as always and submits a job that runs :mod:`astra.executors.slurm_job` with the
same Python, working directory and configuration. The job takes over the attempt that names its job id,
heartbeats it and records the result against it. So the task runs once: while the job is pending the worker's
heartbeat keeps the claim, once it runs the job's does, and if the worker dies the job still records what it did
(a rerun that takes the task over from a dead worker adopts its pending job rather than submit another). A job
that ends without a done record (cancelled, out of time or memory, node failure, non-zero exit) leaves the task
failed, with the SLURM state and the tail of the job's stderr as its error.

The worker learns from the database that a job recorded its task, and from :mod:`astra.executors.slurm_queue`
(one ``squeue`` for all of this user's jobs, backing off to ``[slurm] poll_max``) whether the job still lives.

Settings come from ``[slurm]`` (:class:`astra.config.slurm`); a task class overrides any of them with a class
attribute named ``slurm_<setting>``, e.g. ``slurm_sbatch_args = "--gres=gpu:1"``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import luigi

from astra.config import command_line, database_url, luigi_config, settings, slurm, slurm_settings
from astra.database import queries
from astra.database.connection import DatabaseError
from astra.database.urls import mask_password
from astra.executors import Executor, ExecutorError
from astra.executors.shares import shares_of
from astra.executors.slurm_queue import JobState, details, max_array_size, queue

if TYPE_CHECKING:
    from astra.batch import BatchTask
    from astra.recording import Claim

logger = logging.getLogger("luigi-interface")

#: Lines of the job's stderr kept in the task's error.
STDERR_LINES = 20
#: The environment variable that hands a job its specification (:func:`submit`).
SPEC_ENV = "ASTRA_SLURM_SPEC"
#: Longest specification an environment variable takes (Linux refuses a longer single string: MAX_ARG_STRLEN).
SPEC_BYTES = 128 * 1024 - 1 - len(SPEC_ENV) - 1
#: The job's entry point. -c, not -m: under -m the module would be loaded twice (as __main__ and by name).
ENTRY = "import sys; from astra.executors.slurm_job import main; sys.exit(main())"


SETTINGS = tuple(slurm.get_param_names())
#: The numbers among them that must be more than 0, and those that may be 0 (below: a batch divided into no shares,
#: a poll that sleeps a negative time or asks squeue without a pause, an sbatch that refuses the job).
POSITIVE = ("jobs", "poll", "poll_max")
NOT_NEGATIVE = ("max_running", "cpus_per_task")


class SlurmJobError(ExecutorError):
    """A SLURM job ended without recording its task as done."""


def options(task: luigi.Task) -> dict:
    """The ``[slurm]`` settings for ``task``, with its class's ``slurm_<setting>`` attributes over them."""
    config = slurm_settings()
    for attribute in dir(type(task)):
        # A misspelt one (slurm_memory) would be ignored: every job sent with the [slurm] value instead.
        if attribute.startswith("slurm_") and attribute[len("slurm_") :] not in SETTINGS:
            raise SlurmJobError(
                f"astra: {task.task_family}.{attribute} is no [slurm] setting (misspelt?); known: "
                f"{', '.join(f'slurm_{name}' for name in SETTINGS)}"
            )
    chosen = {name: getattr(task, f"slurm_{name}", getattr(config, name)) for name in SETTINGS}

    def where(name: str) -> str:
        return f"{task.task_family}.slurm_{name}" if hasattr(task, f"slurm_{name}") else f"[slurm] {name}"

    for name in POSITIVE + NOT_NEGATIVE:
        if not (chosen[name] > 0 if name in POSITIVE else chosen[name] >= 0):  # NaN too
            more = "more than 0" if name in POSITIVE else "0 or more"
            raise SlurmJobError(f"astra: {where(name)} is {chosen[name]!r}; it must be {more}")
    try:
        shlex.split(chosen["sbatch_args"])
    except ValueError as exc:  # e.g. "No closing quotation"
        raise SlurmJobError(f"astra: {where('sbatch_args')} {chosen['sbatch_args']!r} cannot be split: {exc}") from None
    return chosen


class SlurmExecutor(Executor):
    def run(self, task: luigi.Task, claim: Claim, call: Callable[[], object]) -> None:
        """Run the claimed ``task`` as a SLURM job and wait; return when the job recorded it done, else raise."""
        if task.task_module == "__main__":
            raise SlurmJobError(
                f"astra: {task.task_family} is defined in the script being run (__main__), which a SLURM job cannot "
                "import; move it into a module, or give the class executor = 'local'"
            )
        settings_ = options(task)
        name = _job_name(task)
        started = time.monotonic()
        attempt = claim.attempt
        job_id = _pending_job(name) if attempt.previous is not None else None
        if job_id:  # its worker died before it started: this attempt takes it on, in its place in the queue
            queries.note_job(attempt, job_id)
            logger.info("astra: SLURM job %s (pending) adopted for %s", job_id, task)
        else:
            job_id = submit(_spec(task), name, settings_)
            queries.note_job(attempt, job_id)
            logger.info("astra: SLURM job %s submitted for %s", job_id, task)
        submitted = time.time()
        _status(task, f"SLURM job {job_id} submitted")

        def recorded() -> bool:  # by the job, done or failed (a row taken over or forgotten: SLURM says when it ends)
            return queries.attempt_status(attempt) in (queries.DONE, queries.FAILED)

        try:
            states = _follow(task, [job_id], submitted, settings_, recorded, lambda s: _describe(job_id, s))
        except DatabaseError as exc:
            _left_running([job_id], task, exc)
            claim.release()
            claim.recorded = True  # by the job, which holds the claim once it runs (else a rerun adopts it)
            raise
        except BaseException as exc:
            with _uninterrupted():
                _cancel([job_id])
                claim.release()
                if queries.attempt_status(attempt) != queries.DONE:
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        why = f"SLURM job {job_id} cancelled: the luigi process was interrupted ({type(exc).__name__})"
                    else:
                        why = f"SLURM job {job_id} cancelled: astra could not follow it ({type(exc).__name__}: {exc})"
                    queries.job_failed(attempt, why, why, time.monotonic() - started)
                    claim.recorded = True
            raise
        claim.release()  # the job has ended or recorded the task: nothing to heartbeat any more
        if queries.attempt_status(attempt) == queries.DONE:
            claim.recorded = True
            return None
        state = _ended(job_id, states, settings_["poll"])
        tail = _stderr_tail(_log_path(settings_, name, job_id, ".err"))
        where = f" on {state.node}" if state.node and state.node != "(null)" else ""
        error = f"SLURM job {job_id} {state.state} (exit code {state.exit_code or '?'}){where}"
        if state.reason and state.reason != "None":
            error += f", reason {state.reason}"
        error += f"; stderr tail:\n{tail}" if tail else "; its stderr is empty"
        queries.job_failed(attempt, error[-2000:], tail or error, time.monotonic() - started)
        claim.recorded = True
        raise SlurmJobError(error)

    def run_batch(self, batch: BatchTask, adopt: bool = True) -> None:
        """Run a batch as job arrays, one element per share holding items not yet done; raise if any fails.

        Item k goes to share k mod the number of shares, but linked items (a chain) go together to the share of
        the first (:func:`astra.executors.shares.shares_of`). Live elements of an earlier run's arrays for this
        batch (its luigi process was killed) are adopted: only shares with items neither done nor in a live element
        are submitted again.
        """
        settings_ = options(batch)
        base = _job_name(batch)
        live = [state for state in queue().live(base) if "_" in state.job_id] if adopt else []  # array elements
        shares = getattr(batch, "jobs", 0) or settings_["jobs"]
        if shares < 0:
            raise SlurmJobError(f"astra: {batch.task_family} --jobs is {shares}; it must be 0 ([slurm] jobs) or more")
        layouts = {_layout(state) for state in live}
        if layouts:
            shares = max(count for _, count in layouts)  # as the live arrays split the items
        placed = shares_of(batch._numbered_items(), shares)
        hashes, share_of = placed.hashes, placed.shares
        done = queries.done_hashes(hashes)
        pending = [h for h in hashes if h not in done]
        needed = {share for h, share in zip(hashes, share_of) if h not in done}
        if not needed:
            batch._fail_unidentified()
            return
        running = {_share(state): state for state in live}
        names = {running[share].job_id: running[share].name for share in needed & running.keys()}
        if names:
            logger.info("astra: %d live SLURM array elements adopted for %s: %s", len(names), batch, " ".join(names))
        spec = _spec(batch)
        arrays = []
        for offset, indices, throttle in _arrays(sorted(needed - running.keys()), settings_["max_running"]):
            name = f"{base}.from{offset}of{shares}"
            array = _ranges(indices) + (f"%{throttle}" if throttle else "")
            # Each element checks that its share's items are those split here (see shares.check).
            split = placed.split(len(hashes) + batch._unidentified.count, [offset + index for index in indices])
            element = {**spec, "shares": shares, "offset": offset, "chained": placed.chained, "split": split}
            job_id = submit(element, name, settings_, array)
            logger.info("astra: SLURM array %s (%d shares) submitted for %s", job_id, len(indices), batch)
            arrays.append(job_id)
            names.update((f"{job_id}_{index}", name) for index in indices)
        submitted = time.time()
        said = f"SLURM job array {' '.join(arrays)}" if arrays else "SLURM array elements adopted"
        progress = _BatchProgress(batch, said, pending, len(hashes) - len(pending), len(hashes))
        try:
            states = _follow(batch, list(names), submitted, settings_, progress.all_done, progress.describe)
        except DatabaseError as exc:
            _left_running(list(names), batch, exc)
            raise
        except BaseException:
            with _uninterrupted():
                _cancel(list(names))
            raise
        _status(batch, progress.describe(states, force=True))
        bad = [state for state in states if state.finished and state.state != "COMPLETED"]
        if adopt and running and not bad and not progress.all_done():
            # Adopted elements ended without recording all their items (they were working for a run whose items
            # were forgotten meanwhile, say): submit what is left, adopting nothing this time.
            return self.run_batch(batch, adopt=False)
        if bad and not progress.all_done():
            first = details(bad[0].job_id)
            tail = _stderr_tail(_log_path(settings_, names[first.job_id], first.job_id, ".err"))
            summary = ", ".join(f"{state.job_id} {state.state}" for state in bad)
            said = f"{first.job_id} ended with exit code {first.exit_code or '?'}"
            if first.reason and first.reason != "None":
                said += f", reason {first.reason}"
            said += f"; stderr tail of {first.job_id}:\n{tail}" if tail else f"; the stderr of {first.job_id} is empty"
            raise SlurmJobError(
                f"{len(bad)} of {len(states)} shares of SLURM job array {' '.join(arrays) or '(adopted)'} failed "
                f"({summary}); {said}"
            )
        if not bad and not progress.all_done():
            # Every element ended well, yet items it recorded are not done: forgotten (or deleted) meanwhile.
            missing = len(progress.pending) - progress.done_now
            raise SlurmJobError(
                f"{missing} of the {len(progress.pending)} items the SLURM array {' '.join(arrays) or 'elements'} "
                "worked are not recorded done, although every element ended COMPLETED: forgotten (astra tasks "
                "forget) while the array ran? Run the batch again to make them"
            )
        batch._fail_unidentified()  # the shares worked the others; such an item can be neither run nor recorded


def _layout(state: JobState) -> tuple[int, int]:
    """The first share and the number of shares of the array an element belongs to, from its job name."""
    found = re.search(r"\.from(\d+)of(\d+)$", state.name)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 1)


def _share(element: JobState) -> int:
    """The share an array element (``ARRAYID_INDEX``) works."""
    return _layout(element)[0] + int(element.job_id.split("_")[1])


def _arrays(shares: list[int], max_running: int) -> list[tuple[int, list[int], int]]:
    """The arrays that run ``shares``: (first share, array indices, throttle) each. Indices stay below the
    cluster's ``MaxArraySize``; ``max_running`` is divided among the arrays."""
    size = max_array_size()
    groups: dict[int, list[int]] = {}
    for share in shares:
        groups.setdefault(share // size * size, []).append(share % size)
    throttle = max(1, max_running // len(groups)) if max_running and groups else 0
    return [(offset, indices, throttle) for offset, indices in sorted(groups.items())]


def _ranges(indices: list[int]) -> str:
    """``0-3,5,7-9`` for sbatch --array."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def _pending_job(name: str) -> str | None:
    """A job of this user for the task named ``name`` that has not started: a dead worker's, to adopt."""
    pending = [state.job_id for state in queue().live(name) if state.name == name and state.state == "PENDING"]
    return pending[0] if len(pending) == 1 else None


class _BatchProgress:
    """Items done so far, for luigid's dashboard, counted at most every few seconds."""

    def __init__(self, batch: luigi.Task, said: str, pending: list[str], done: int, total: int) -> None:
        self.batch, self.said, self.pending, self.done, self.total = batch, said, pending, done, total
        self.counted_at, self.cost, self.done_now = 0.0, 0.0, 0

    def all_done(self) -> bool:
        self._count()
        return self.done_now == len(self.pending)

    def _count(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.counted_at > max(2.0, 5 * self.cost):
            self.done_now = len(queries.done_hashes(self.pending))
            self.cost, self.counted_at = time.monotonic() - now, time.monotonic()
            if callable(self.batch.set_progress_percentage) and self.total:
                self.batch.set_progress_percentage(round(100 * (self.done + self.done_now) / self.total))

    def describe(self, states: list[JobState], force: bool = False) -> str:
        self._count(force)
        counts: dict[str, int] = {}
        for state in states:
            counts[state.state] = counts.get(state.state, 0) + 1
        shares = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"{self.said}: {self.done + self.done_now} of {self.total} items done; shares {shares}"


def submit(spec: dict, name: str, settings_: dict, array: str | None = None) -> str:
    """Submit a job running the job's entry point for ``spec``; the job id (of the array, for an array)."""
    log_dir = Path(os.path.expanduser(settings_["log_dir"])).absolute()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlurmJobError(
            f"astra: the SLURM log_dir {str(log_dir)!r} cannot be made ({exc.strerror}); set [slurm] log_dir to a "
            "directory the nodes can write to"
        ) from None
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
    script = f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(ENTRY)}\n"
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


def _follow(
    task: luigi.Task,
    job_ids: list[str],
    submitted: float,
    settings_: dict,
    recorded: Callable[[], bool],
    describe: Callable[[list[JobState]], str],
) -> list[JobState]:
    """Wait until the database says the work is recorded (then return []) or SLURM says every job has ended (then
    return their states); say each change in luigid.

    SIGTERM acts as Ctrl-C does (the caller cancels the jobs). If the luigi process that forked this worker is
    gone (killed), this worker leaves: the jobs run on and record their work, and a rerun adopts them.
    """
    parent, in_child = os.getppid(), _is_task_process()
    previous = _on_sigterm()
    said = ""
    try:
        while True:
            if recorded():
                return []
            states = list(queue().states(job_ids, submitted, settings_["poll"], settings_["poll_max"]).values())
            if all(state.finished for state in states):
                return states
            message = describe(states)
            if message != said:
                _status(task, message)
                said = message
            if in_child and os.getppid() != parent:
                logger.warning("astra: the luigi process is gone; SLURM jobs %s go on without it", " ".join(job_ids))
                os._exit(0)  # nothing to report to; the claim's row is left to the jobs (or a rerun) to finish
            time.sleep(settings_["poll"])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _ended(job_id: str, states: list[JobState], pause: float) -> JobState:
    """What SLURM says of a job that has ended, or (having recorded its failure) is about to: exit code, reason."""
    deadline = time.monotonic() + 60
    while True:
        state = details(job_id)
        if state.finished or time.monotonic() > deadline:
            return state
        time.sleep(pause)


def _describe(job_id: str, states: list[JobState]) -> str:
    state = states[0]
    if state.state == "RUNNING":
        return f"SLURM job {job_id} RUNNING on {state.node}"
    return f"SLURM job {job_id} {state.state}"


def _left_running(job_ids: list[str], task: luigi.Task, exc: DatabaseError) -> None:
    """The database stopped answering this process while ``job_ids`` run: they reach it themselves and record their
    work (as when the luigi process is killed), so they are not cancelled; a rerun waits for them or adopts them."""
    logger.warning(
        "astra: SLURM jobs %s of %s are left to run and record their work: this process lost the database (%s); "
        "run luigi again once it answers",
        " ".join(job_ids),
        task,
        exc,
    )


def _cancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored while the jobs are cancelled and the task recorded: with several workers, luigi's
    main process passes an interrupt on to its workers, and a second one here would cut the record short (the task
    recorded failed with a bare KeyboardInterrupt, its jobs perhaps not cancelled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _on_sigterm():
    """While waiting: SIGTERM acts as Ctrl-C does, so the jobs are cancelled and the task recorded failed."""
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
        "values": _values(task),
        "astra": {name: str(getattr(config, name)) for name, _ in config.get_params() if name != "executor"},
        "database_url": database_url(),  # as this process resolved it (command line, environment, luigi.cfg)
        "command_line": command_line(),  # it decides parameters not given, of the tasks below and of batch items
        "luigi_config": luigi_config(),  # so does luigi's configuration, which a script may have set in memory
    }


def _values(task: luigi.Task) -> str | None:
    """The task's parameter values, pickled (base64), for the job to make the very task (or batch) the worker has;
    None where they do not pickle (the job reads its text then). The text need not read back as the same values: a
    FloatParameter given 2 is "2", read back 2.0, which is another task (luigi's task_id, astra's hash) that the job
    would find no claim of, or a batch whose items are others."""
    try:
        return base64.b64encode(pickle.dumps(task.param_kwargs)).decode("ascii")
    except Exception:
        return None


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
    """The task's luigi id and its database as a job name (which finds a task's jobs again, for this database
    only): cut short, the id keeps its hash at the end."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", task.task_id)
    name = name if len(name) <= 90 else f"{name[:79]}_{name[-10:]}"
    config = settings()
    where = mask_password(database_url()) or f"{config.profile}/{config.dbname}"  # no password, not even hashed
    return f"{name}.{hashlib.sha256(where.encode()).hexdigest()[:8]}"


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
