"""What SLURM says about this user's jobs: one ``squeue`` per poll for every job the astra processes of this user
follow on this host, however many luigi workers (each a process of its own) wait on them.

The answer is shared through a file (``$TMPDIR/astra-slurm-<uid>/squeue.json``, written under a lock): a process
that wants to know about its jobs reads it, and only when it is older than the current interval does one process
run ``squeue`` again, for all of this user's jobs at once. The interval starts at ``[slurm] poll`` and doubles
after each poll up to ``[slurm] poll_max``, as HPC centres ask (a status query every few minutes rather than
several a second); it starts short again once nobody has asked for a while. A job that squeue no longer shows
(slurmctld forgets an ended job after ``MinJobAge``) is asked of ``sacct`` once.

The luigi worker learns that a job succeeded from the database, which it asks at ``[slurm] poll``: SLURM is asked
only whether a job is still alive.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Job states after which a job runs no more (COMPLETED means exit code 0).
FINISHED = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "SPECIAL_EXIT", "REVOKED", "UNKNOWN",
}  # fmt: skip
#: A job submitted this long (seconds) before a poll that does not show it has ended and been forgotten.
FORGOTTEN_AFTER = 5.0


@dataclass
class JobState:
    """One job (or array element, ``ARRAYID_INDEX``) as SLURM reports it."""

    job_id: str
    state: str
    node: str = ""
    reason: str = ""
    name: str = ""
    exit_code: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def live(self) -> bool:
        return self.state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


class Queue:
    """This process's view of the user's jobs, shared with the other processes of the user on this host."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.gettempdir()) / f"astra-slurm-{os.getuid()}"
        self._ended: dict[str, JobState] = {}  # what sacct said of jobs squeue forgot: it does not change

    def states(self, job_ids: Iterable[str], submitted: float, first: float, most: float) -> dict[str, JobState]:
        """The state of each of ``job_ids`` (submitted by wall time ``submitted`` or earlier), from a poll at most
        the current interval old. A job that no poll since its submission has seen counts as PENDING."""
        answer = self._answer(first, most)
        states, missing = {}, []
        for job_id in job_ids:
            if job_id in answer["jobs"]:
                states[job_id] = JobState(job_id, *answer["jobs"][job_id])
            elif job_id in self._ended:
                states[job_id] = self._ended[job_id]
            elif answer["at"] - submitted < FORGOTTEN_AFTER:
                states[job_id] = JobState(job_id, "PENDING", reason="submitted")
            else:
                missing.append(job_id)
        if missing:
            self._ended.update(accounted(missing))
            for job_id in missing:
                # Neither knows it any more: it has ended, and the database says whether it recorded its work.
                states[job_id] = self._ended.setdefault(job_id, JobState(job_id, "UNKNOWN", reason="forgotten"))
        return states

    def live(self, name: str) -> list[JobState]:
        """This user's live jobs (array elements one by one) named ``name`` or ``name.*``, asked of SLURM now."""
        answer = self._answer(0.0, 0.0)
        return [
            JobState(job_id, *fields)
            for job_id, fields in answer["jobs"].items()
            if fields[3] == name or fields[3].startswith(f"{name}.")
            if JobState(job_id, *fields).live
        ]

    def _own_directory(self) -> None:
        """The shared directory, which must be this user's alone: another user's could feed us false answers."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        found = self.directory.lstat()
        if found.st_uid != os.getuid() or found.st_mode & 0o077 or not stat.S_ISDIR(found.st_mode):
            raise RuntimeError(
                f"astra: {self.directory} is not a directory only you can use; remove it (astra shares SLURM's "
                "answers between your processes there)"
            )

    def _answer(self, first: float, most: float) -> dict:
        """The shared answer of the last poll; a new one if it is older than the interval (0: always)."""
        self._own_directory()
        with open(self.directory / "squeue.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.directory / "squeue.json"
            try:
                answer = json.loads(path.read_text())
            except (OSError, ValueError):
                answer = {"at": 0.0, "interval": 0.0, "jobs": {}}
            now = time.time()
            if now - answer["at"] < answer["interval"] and most > 0:
                return answer
            jobs = squeue()
            if jobs is None:  # slurmctld did not answer (busy): the old answer, and ask again at the next look
                return answer
            if most <= 0:  # a look forced now: the others' interval stays as it was
                interval = answer["interval"]
            elif now - answer["at"] > 2 * max(most, answer["interval"]):  # nobody asked for a while
                interval = first
            else:
                interval = min(most, max(first, 2 * answer["interval"]))
            answer = {"at": now, "interval": interval, "jobs": jobs}
            temporary = path.with_suffix(".new")
            temporary.write_text(json.dumps(answer))
            temporary.replace(path)
            return answer


def squeue() -> dict[str, list[str]] | None:
    """All of this user's jobs that slurmctld knows, array elements one by one: id -> [state, node, reason, name]."""
    done = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%N|%r|%j"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    jobs = {}
    for line in done.stdout.splitlines():
        job_id, state, node, reason, name = line.split("|", 4)
        jobs[job_id] = [state.split()[0], node, reason, name]
    return jobs


def accounted(job_ids: list[str]) -> dict[str, JobState]:
    """Jobs slurmctld has forgotten, as accounting remembers them (one ``sacct`` call; none without accounting)."""
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,NodeList,ExitCode,JobName"],
        capture_output=True,
        text=True,
    )
    states = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        job_id, state, node, exit_code, name = line.split("|", 4)
        states[job_id] = JobState(job_id, state.split()[0], node, name=name, exit_code=exit_code)
    return states


_FIELD = re.compile(r"(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|NodeList|BatchHost|ExitCode)=(\S*)")


def details(job_id: str) -> JobState:
    """All SLURM says of one ended job (its exit code, its reason), for the error of a task it did not record."""
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        fields = dict(_FIELD.findall(line))
        if "JobState" in fields:
            node = fields.get("BatchHost") or fields.get("NodeList", "")
            return JobState(job_id, fields["JobState"], node, fields.get("Reason", ""), exit_code=fields["ExitCode"])
    return accounted([job_id]).get(job_id) or JobState(job_id, "UNKNOWN", reason="forgotten")


_max_array_size: int | None = None


def max_array_size() -> int:
    """The cluster's ``MaxArraySize``: array indices go from 0 to one less (1001 if SLURM does not say)."""
    global _max_array_size
    if _max_array_size is None:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", done.stdout, re.MULTILINE)
        _max_array_size = int(found.group(1)) if found else 1001
    return _max_array_size


_queue: Queue | None = None


def queue() -> Queue:
    """This process's :class:`Queue`."""
    global _queue
    if _queue is None:
        _queue = Queue()
    return _queue
