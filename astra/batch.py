"""Batched tasks: one luigi task that works through many parameter sets, each recorded as its own task.

Luigi's scheduler slows down with the square of the number of tasks in one run, so a survey's million spectra
cannot each be a luigi task. A :class:`BatchTask` is one luigi task standing for many *items*: parameter sets of
an ordinary :class:`~astra.BaseTask` class. Each item gets the ``astra.task`` row (same hash, same parameters) it
would get had it run alone, so a re-run processes only the items not yet done, a lone task
(``luigi ... EstimateSNR --spectrum-path ...``) sees an item done by a batch as done, and the other way round::

    class EstimateSNRBatch(BatchTask):
        item_class = EstimateSNR
        spectra_dir = luigi.Parameter()

        def parameter_sets(self):
            for path in sorted(glob.glob(os.path.join(self.spectra_dir, "*.fits"))):
                yield {"spectrum_path": path}

Items are processed by the item class's own ``run()`` (override :meth:`BatchTask.process` to do a whole chunk at
once, e.g. with numpy) and recorded ``chunk_size`` at a time, in one transaction per chunk. An item whose
``run()`` raises is recorded as failed with its error and the others carry on; at the end the batch fails, naming
how many items failed, so luigi reports it and a re-run tries just those again.

With ``--processes N`` (or ``[astra] batch_processes``) the chunks are worked in a pool of N processes, never
forks of this one, whose database connection and helper threads must stay its own: they are forked from a fresh
interpreter (multiprocessing's forkserver) that has imported astra and the batch's modules once, so N processes
cost one interpreter start and its imports rather than N. The pool only computes: it sends back each item's
record, and this process writes the records, one transaction per chunk, as with one process. (As in any program
that starts processes this way, a script that calls ``luigi.build`` itself must do so under ``if __name__ ==
"__main__":``.) A pool process that dies (killed, out of memory) takes nothing with it but the items it held: they
stay not done, the batch fails, and a re-run works them.

What a batch does not do: claim its items one by one (two batches over the same items may both compute an item;
the first to record it wins), or run the items' requirements. An item that requires astra tasks runs only if they
are recorded done, and is recorded done only if they still are when its chunk is written (in the same
transaction); else it is recorded failed, naming the task, as a lone task is never run before its input. Items
may need items of the batch before them (a chain): they are recorded in order, and a link that fails takes those
after it down; a link runs only once the link it needs is recorded (a pool hands it out again then; in one
process a link given before the link it needs fails unrun). An input
that is no astra task (a file's ``luigi.ExternalTask``) is for the item's ``run()`` to find.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

import luigi
from luigi.task import flatten

from astra import config, outputs, values
from astra.database import output_tables, queries
from astra.database.connection import close_thread_connection, retried, use_own_connection
from astra.executors import executor_for
from astra.executors.shares import check, shares_of
from astra.identity import Item, items, requirements, task_version
from astra.recording import ItemFailuresError, fields, interrupted_once, run_unrecorded, summarise
from astra.targets import BatchTarget, complete_hashes, database_targets, known, look_for_lost_model
from astra.tasks import BaseTask

logger = logging.getLogger("luigi-interface")


class BatchError(ItemFailuresError):
    """Some items of a batch failed (each is recorded as failed, with its error, in ``astra.task``)."""


class MissingInputError(RuntimeError):
    """An astra task that an item requires is not recorded done: the item is not run, or not recorded done."""


class PoolBrokenError(RuntimeError):
    """A process of a batch's pool died; the items it was working on are not recorded (a re-run works them)."""


#: The methods (and the property) of BatchTask that astra calls, which no luigi parameter of a batch may replace.
_METHODS = ("version", "parameter_sets", "items", "pending", "process", "work")


class BatchTask(luigi.Task):
    """One luigi task that runs many items, parameter sets of ``item_class``; each item is recorded on its own.

    Subclasses set ``item_class`` and write :meth:`parameter_sets`. The batch is complete when every item is done.
    """

    #: The BaseTask class whose parameter sets this batch runs.
    item_class: type[BaseTask] = BaseTask
    #: Items processed and recorded per transaction.
    chunk_size: int = 1000
    #: Where run() runs: "local", "slurm" (a SLURM job array of ``jobs`` shares) or None for ``[astra] executor``.
    executor: str | None = None
    #: Shares (SLURM array elements) under the SLURM executor; 0: ``slurm_jobs`` of the class, else ``[slurm] jobs``.
    jobs = luigi.IntParameter(default=0, significant=False, description="SLURM array elements to split the items into")
    #: Processes that work the chunks at once; 0: ``[astra] batch_processes`` (default 1: this process alone).
    processes = luigi.IntParameter(
        default=0, significant=False, description="processes that work the items at once (0: [astra] batch_processes)"
    )
    #: Seconds spent inside the transactions that write records, in a thread beside the work (for benchmarks).
    recording_seconds: float = 0.0
    #: Longest time, in seconds of work, between two progress reports to luigid.
    progress_seconds: float = 2.0
    #: Seconds between two progress lines in the log (items done, rate, time left) when stderr is a terminal.
    log_seconds: float = 30.0

    _skipped = 0
    _given_twice = 0
    _share: tuple[int, int] | None = None
    _chained = False
    _share_sets: list[dict] | None = None
    _job: tuple[str, str] | None = None
    _part_size = 1
    _reported_at = 0.0
    _logged_at = 0.0
    _started = 0.0
    _furthest = (0, 0)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A luigi parameter leaves the class its Parameter in place of the method astra calls (items() of a batch
        # that a task requires, say), which would fail every task downstream with "'tuple' object is not callable".
        for name in _METHODS:
            if isinstance(getattr(cls, name), luigi.Parameter):
                raise config.DefinitionError(
                    f"{cls.__module__}.{cls.__name__}: a luigi parameter named {name!r} takes the place of "
                    f"BatchTask.{name}, which astra calls; give the parameter another name"
                )

    @property
    def version(self) -> str:
        """The version of its items: part of the identity of a task that requires the batch, which bumping it
        runs again, as it would a task that requires the items themselves."""
        return task_version(self.item_class)

    def parameter_sets(self) -> Iterable[dict]:
        """The items, as keyword arguments of ``item_class`` (a generator is fine: items are streamed)."""
        raise NotImplementedError(f"{type(self).__name__} must define parameter_sets()")

    def items(self) -> Iterator[Item]:
        """The items with their identities (task hashes), in the order of :meth:`parameter_sets`."""
        return items(self.item_class, self._parameter_sets())

    def _numbered_items(self) -> Iterator[tuple[int, Item]]:
        """Each item with its place among the parameter sets (which decides its share); a set without an identity
        is counted in ``self._unidentified`` instead."""
        self._unidentified = _Unidentified()
        return _numbered(self.item_class, self.parameter_sets(), self._unidentified)

    def _parameter_sets(self) -> Iterable[dict]:
        """The parameter sets of the share this process works (all of them outside a share)."""
        if self._share is None:
            return self.parameter_sets()
        if self._share_sets is None:
            self._share_sets = self._sets_of_share()
        return self._share_sets

    def _sets_of_share(self, split: dict | None = None) -> list[dict]:
        """The parameter sets of this process's share; with ``split`` (:meth:`Placed.split`), of the first
        ``split["sets"]`` only, checked to be those the luigi process split (else :class:`SplitChangedError`)."""
        share, shares = self._share
        sets = self.parameter_sets() if split is None else islice(self.parameter_sets(), split["sets"])
        if not self._chained:
            mine, found = [], 0
            for index, values in enumerate(sets):
                found = index + 1
                if index % shares == share:
                    mine.append(values)
            if split is not None:
                check(
                    split,
                    self._share,
                    found,
                    (item.task_hash for item in items(self.item_class, mine, _Unidentified())),
                )
            return mine
        every = list(sets)
        placed = shares_of(_numbered(self.item_class, every, _Unidentified()), shares)
        if split is not None:
            check(split, self._share, len(every), (h for h, at in zip(placed.hashes, placed.shares) if at == share))
        return [values for index, values in enumerate(every) if placed.share(index) == share]

    def pending(self) -> Iterator[Item]:
        """The items not yet recorded as done, asking the database once per chunk of items; an item given twice
        (the same identity) comes once, and a parameter set without an identity (its ``requires()`` raised) is
        counted in ``self._unidentified`` instead."""
        self._skipped = self._given_twice = 0
        self._unidentified = _Unidentified()
        given: set[int] = set()
        # The first chunks are small: complete() of a batch not yet run stops at the first item not done, having
        # worked out the identities of just the first chunk.
        chunks = _chunks(items(self.item_class, self._parameter_sets(), self._unidentified), queries.CHUNK, first=100)
        # The database answers about earlier chunks (in threads of their own, each with its connection) while the
        # next chunk is hashed. Two askers once chunks are full: a lookup of 5,000 hashes keeps the server busier
        # than hashing them keeps this process, and two queries at once use two of the server's cores.
        askers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="astra-batch") for _ in range(_ASKERS)]
        asked: deque[tuple[list[Item], Future]] = deque()
        try:
            for number, chunk in enumerate(chunks):
                asked.append((chunk, askers[number % _ASKERS].submit(_done, chunk)))
                # A small chunk (the first few, the last) is answered before the next is hashed; full ones keep a
                # question open per asker.
                while asked and (len(asked) == _ASKERS or len(chunk) < queries.CHUNK):
                    yield from self._not_done(*asked.popleft(), given)
            while asked:
                yield from self._not_done(*asked.popleft(), given)
        finally:
            for asker in askers:
                asker.submit(_close_connection)
                asker.shutdown(wait=True, cancel_futures=False)

    def _not_done(self, chunk: list[Item], answer: Future, given: set[int]) -> Iterator[Item]:
        done = answer.result()
        for item in chunk:
            if item.task_hash in done:
                self._skipped += 1
            elif _first_time(item.task_hash, given):
                yield item
            else:
                self._skipped += 1
                self._given_twice += 1

    def output(self) -> BatchTarget:
        """Its items' records (``self.input()`` of a task that requires the batch)."""
        return BatchTarget(self)

    def complete(self) -> bool:
        # Asked anew each time, never answered from an earlier check: the items may have grown since (a folder
        # that new files arrive in), with the batch's parameters the same.
        model = outputs.output_model(self.item_class)
        if model is not None:
            output_tables.ready(model)  # stop the scan at once if the items' output table is missing
        else:
            look_for_lost_model(self.item_class)
        with _fewer_collections():
            return next(self.pending(), None) is None and not self._unidentified.count

    def process(self, chunk: list[Item]) -> list[object]:
        """The results of a chunk of items, in order; an exception in place of a result marks that item failed.

        By default each item runs the item class's own ``run()``. Override this to process a chunk at once.
        """
        results = []
        for item in chunk:
            try:
                results.append(_unrecorded_run(item.task))
            except Exception as exc:  # one bad spectrum must not cost the others their results
                results.append(exc)
        return results

    def run(self) -> None:
        with interrupted_once():  # Ctrl-C in luigi's forked worker: the items' records, then one line
            executor_for(self).run_batch(self)  # here (work()), or in shares elsewhere, each running work() itself

    def work(
        self,
        share: tuple[int, int] | None = None,
        job: tuple[str, str] | None = None,
        chained: bool = False,
        split: dict | None = None,
    ) -> None:
        """Work the items not yet done, here or in this process's pool; with ``share`` = (k, n) only items k, k + n,
        k + 2n, ... (``chained``: as :func:`shares_of` places them), and with ``split`` only if they are those the
        luigi process split (:meth:`Placed.split`), else raise :class:`SplitChangedError` having worked nothing;
        ``job`` = (SLURM job id, node) is recorded with each item."""
        self._share, self._job, self._chained, self._share_sets = share, job, chained, None
        if share is not None:
            self._share_sets = self._sets_of_share(split)
        total = _length(self._parameter_sets())
        done = failed = 0
        first_error = ""
        lost: list[str] = []
        self._started = time.monotonic()
        self._logged_at = self._started
        self._furthest = (0, 0)
        model = outputs.output_model(self.item_class)
        processes = self.processes or config.settings().batch_processes
        self._unidentified = _Unidentified()
        writing: deque[Future] = deque()

        def written() -> None:  # every chunk handed to the writer is written (a chain's next link may run)
            while writing:
                lost.extend(self._written(writing.popleft()))

        if processes > 1:
            worked = self._work_in_pool(model, total, processes, written)
        else:
            worked = self._work_here(model, total, written)
        # Each chunk's records are written by a thread of their own while the next chunk is worked: the database
        # (the PostgreSQL server, or SQLite's C code) then works beside this thread, as both let go of the
        # interpreter while they work. One chunk at most waits to be written.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="astra-batch-writer")
        try:
            for records, output_rows in worked:
                refused = queries.unrecordable(records)
                if refused:  # these alone fail; a record of the others is no less true without them
                    records = [record for record in records if record["task_hash"] not in refused]
                    for reason in refused.values():
                        logger.error("%s", reason)
                    failed += len(refused)
                    first_error = first_error or next(iter(refused.values()))
                good = [record for record in records if "error" not in record]
                bad = [record for record in records if "error" in record]
                written()  # the chunk before: one at most waits to be written
                writing.append(writer.submit(_write, model, good, bad, output_rows, self._job))
                done += len(good)
                failed += len(bad)
                if bad and not first_error:
                    first_error = f"{bad[0]['task_id']}: {bad[0]['error']}"
                self._progress(done + failed, total, failed + len(lost))
            written()
        finally:
            # However run() ends (a pool process died, say), what was handed to the writer is written first.
            writer.submit(_close_connection)
            writer.shutdown(wait=True)
            # Then the chunks' generator ends, with its pool or the threads (and connections) that ask which items
            # are done: now, not when the garbage collector finds it (a failed write's traceback holds it), maybe at
            # exit, where that clean-up fails ("cannot schedule new futures after shutdown").
            worked.close()
        # Items recorded failed rather than done, an astra task they need having gone as they were worked.
        done, failed, first_error = done - len(lost), failed + len(lost), first_error or next(iter(lost), "")
        tried = done + failed + self._unidentified.count
        self._progress(tried, total, failed + self._unidentified.count, final=True)
        if self._given_twice:
            logger.info("%s: %d parameter sets repeat one worked earlier in this run (the same task): not worked "
                        "again", self.task_id, self._given_twice)  # fmt: skip
        self._fail_unidentified(f" ({failed} of {done + failed} others failed, recorded in astra.task)" * bool(failed))
        if failed:
            raise BatchError(f"{failed} of {done + failed} items failed (recorded in astra.task); first: {first_error}")

    def _fail_unidentified(self, others: str = "") -> None:
        """Raise if parameter sets without an identity were met (by :meth:`work` or :meth:`_numbered_items`)."""
        if self._unidentified.count:
            raise BatchError(self._unidentified.line(others))

    def _written(self, writing: Future) -> list[str]:
        """Wait for a chunk's records to be written; the errors of its items found without their input then (each
        is in its item's row, as an item's own failure is: a chain that broke early may count thousands)."""
        seconds, lost = writing.result()
        self.recording_seconds += seconds
        return lost

    def _work_here(
        self, model: type | None, total: int | None, written: Callable[[], None]
    ) -> Iterator[tuple[list[dict], dict]]:
        """The records of the pending items and their output rows by task hash, a chunk at a time, worked here.

        An item that needs an item worked earlier in this run (a chain) starts a new chunk, worked once the chunks
        before it are written (``written()`` waits for that): its ``run()`` finds the link before recorded, as a
        lone task would, and it is not run at all if that link failed.
        """
        before = failed = 0
        for chunk in _linked_chunks(self.pending(), self.chunk_size, written):
            started = time.perf_counter()
            process = functools.partial(self._process_reporting, total=total, before=before, failed=failed)
            results, needs = _with_inputs(chunk, process, every_need=True)
            records, output_rows = _records(model, chunk, results, time.perf_counter() - started, needs)
            before += len(chunk)
            failed += sum(1 for record in records if "error" in record)
            yield records, output_rows

    def _work_in_pool(
        self, model: type | None, total: int | None, processes: int, written: Callable[[], None]
    ) -> Iterator[tuple[list[dict], dict]]:
        """As :meth:`_work_here`, the chunks worked by a pool of ``processes`` processes, in parts.

        A pool process gets a part of a chunk as parameter sets, and works out the items' identities, which of
        them are done (one query), and the records of the others: all that costs per item, so this process is
        left with handing out parts and writing records. A part starts as one item and grows to as many as take
        about ``progress_seconds / 2``, at most a share of a chunk, so every process has work and luigid hears
        of progress. Two parts per process are kept in flight, and the next chunk is handed out while the oldest
        is finished and recorded, so the pool does not wait for the database. The pool processes rebuild the
        batch from its class and parameters, and work from :meth:`parameter_sets` (not :meth:`items` or
        :meth:`pending`), with :meth:`process`.
        """
        try:
            spec = pickle.dumps((type(self), self.param_kwargs))
        except Exception as exc:  # e.g. a class made by type() at run time: a new interpreter cannot import it
            logger.warning("%s: working in one process: the pool cannot rebuild the batch (%s)", self.task_id, exc)
            yield from self._work_here(model, total, written)
            return
        initargs = (spec, _env(), os.getcwd(), config.command_line(), config.luigi_config(), os.getpid())
        pool = ProcessPoolExecutor(processes, mp_context=_context(self), initializer=_start_worker, initargs=initargs)
        for _ in range(processes):  # start them all now: they import while this process reads the parameter sets
            pool.submit(_ready)
        chunks = _chunks(self._parameter_sets(), self.chunk_size)
        open_chunks: deque[_Chunk] = deque()
        busy: dict[Future, tuple[_Chunk, list[dict]]] = {}  # each part handed out, with its chunk
        given: set[int] = set()
        self._skipped = self._given_twice = worked = worked_failed = 0
        per_item = 0.0
        # Items that waited for a link of a chain not yet recorded (a pool process cannot wait for this process's
        # writes): handed out again, before any new chunk, once every record so far is written, those waiting for
        # none of the others first. Once a batch has links, a chunk is handed out only after the one before it is
        # written, as in one process (else the next night of each star would wait, each chunk worked twice).
        waiting: list[tuple[dict, str, frozenset[str]]] = []
        linked = False
        try:
            while True:
                while len(busy) < 2 * processes:  # hand out parts: of the oldest chunk not yet handed out in full
                    chunk = next((c for c in open_chunks if c.sent < len(c.sets)), None)
                    if chunk is None:
                        if (waiting or linked) and (open_chunks or busy):
                            break
                        if waiting:
                            written()
                            chunk = _Chunk(_next_links(waiting), last_try=True)
                        else:
                            sets = next(chunks, None) if len(open_chunks) < 2 else None
                            if sets is None:
                                break
                            if linked:
                                written()
                            chunk = _Chunk(sets)
                        open_chunks.append(chunk)
                    share = -(-len(chunk.sets) // processes)
                    wanted = int(self.progress_seconds / 2 / per_item) if per_item > 0 else share
                    self._part_size = max(1, min(share, wanted, 2 * self._part_size))
                    part = chunk.sets[chunk.sent : chunk.sent + self._part_size]
                    chunk.sent += len(part)
                    chunk.waiting += 1
                    busy[pool.submit(_work_part, part, chunk.last_try)] = (chunk, part)
                if open_chunks and open_chunks[0].finished():
                    chunk = open_chunks.popleft()
                    waiting += chunk.deferred
                    if chunk.records:
                        yield chunk.records, chunk.output_rows
                    continue
                if not busy:
                    return
                finished, _ = wait(busy, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk, part = busy.pop(future)
                    chunk.waiting -= 1
                    part_records, part_rows, seconds, skipped, twice, unidentified, deferred = future.result()
                    chunk.deferred += [(part[place], key, needs) for place, key, needs in deferred]
                    linked = linked or bool(deferred)
                    per_item = seconds / max(1, len(part_records) + skipped + unidentified.count + len(deferred))
                    # Given twice, in two parts, an item was worked twice (the pool hashes, not this process); it
                    # is recorded and counted once.
                    kept = [record for record in part_records if _first_time(record["task_hash"], given)]
                    twice += len(part_records) - len(kept)
                    self._given_twice += twice
                    self._skipped += skipped + twice
                    worked += len(kept)
                    worked_failed += sum(1 for record in kept if "error" in record)
                    chunk.records += kept
                    chunk.output_rows.update(part_rows)
                    self._unidentified.add(unidentified)
                self._progress(worked, total, worked_failed)
        except BrokenProcessPool as exc:
            raise PoolBrokenError(
                f"a process of {self.task_id}'s pool ended abruptly (killed, or out of memory?); the items it and "
                "the others were working on are not recorded: run the batch again to finish them"
            ) from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _process_reporting(self, chunk: list[Item], total: int | None, before: int, failed: int) -> list[object]:
        """:meth:`process` the chunk in parts of about ``progress_seconds / 2`` each, reporting after each part.

        A part starts as one item and grows to as many as take that long, so fast items still reach
        :meth:`process` a whole chunk at a time, and slow ones show their progress while the chunk is worked on.
        """
        results: list[object] = []
        while len(results) < len(chunk):
            part = chunk[len(results) : len(results) + self._part_size]
            started = time.perf_counter()
            part_results = self.process(part)
            seconds = time.perf_counter() - started
            if len(part_results) != len(part):
                name = type(self).__name__
                raise ValueError(f"{name}.process() gave {len(part_results)} results for {len(part)} items")
            results += part_results
            failed_here = failed + sum(1 for r in results if _failed(r))
            self._progress(before + len(results), total, failed_here)
            per_item = seconds / len(part)
            wanted = int(self.progress_seconds / 2 / per_item) if per_item > 0 else len(chunk)
            self._part_size = max(1, min(self.chunk_size, wanted, 2 * self._part_size))
        return results

    def _progress(self, processed: int, total: int | None, failed: int, final: bool = False) -> None:
        """Tell luigid (at most once a second) and, in a terminal, the log (every ``log_seconds``) how far it got."""
        # A pool reports items worked before they are recorded: never show fewer than shown already.
        processed, failed = max(processed + self._skipped, self._furthest[0]), max(failed, self._furthest[1])
        self._furthest = (processed, failed)
        now = time.monotonic()
        if now - self._logged_at >= self.log_seconds and _in_terminal():
            self._logged_at = now
            logger.info("%s: %s", self.task_id, self._rate_line(processed, total, failed, now))
        # set_progress_percentage and set_status_message are given by luigi's worker; None anywhere else.
        if now - self._reported_at < 1.0 and processed != total and not final:
            return  # each report is a request to the scheduler: at most one a second
        self._reported_at = now
        message = f"{processed} of {total if total is not None else '?'} items done or tried, {failed} failed"
        if callable(self.set_status_message):
            self.set_status_message(message)
        if total and callable(self.set_progress_percentage):
            self.set_progress_percentage(round(100 * processed / total))

    def _rate_line(self, processed: int, total: int | None, failed: int, now: float) -> str:
        worked = processed - self._skipped
        seconds = now - self._started
        rate = worked / seconds if seconds > 0 else 0.0
        line = f"{processed} of {total if total is not None else '?'} items done or tried ({failed} failed), "
        line += f"{rate:.3g} items/s"
        if total is not None and rate > 0:
            line += f", about {_duration((total - processed) / rate)} left"
        return line


def _in_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


#: Threads that ask the database which items are done, each about a chunk of its own.
_ASKERS = 2


@retried
def _write(
    model: type | None, good: list[dict], bad: list[dict], output_rows: dict[str, list[dict]], job: tuple | None
) -> tuple[float, list[str]]:
    """Record a chunk's items, done or failed, and their output rows (and the SLURM ``job`` (id, node) that worked
    them), in one transaction (all of it again if the connection drops meanwhile); the seconds it took, and the
    errors of the items recorded failed instead of done, as an astra task they need is not recorded done any more.
    """
    started = time.perf_counter()
    use_own_connection()  # the writer works beside the main thread, which keeps the process's connection
    if model is not None:
        output_tables.ready(model)  # before the records: a table that does not fit stops the batch
    with queries.transaction():
        # First, before any other row is touched: the inputs stay done until this commits (a forget waits, and
        # then finds these items by their edges), or are seen gone (forgotten meanwhile: the items fail). An
        # input that is an item of this chunk (a chain) is recorded by this transaction, if it is done itself.
        lost = _without_inputs(good, bad)
        if lost:
            good = [record for record in good if record["task_hash"] not in lost]
            bad = bad + list(lost.values())
        written = queries.record_items(good, queries.DONE)
        failed = queries.record_items(bad, queries.FAILED)
        if job is not None:
            queries.note_items_job([*written.values(), *failed.values()], *job)
        if model is not None:
            # Only for the rows this chunk wrote: an item another batch recorded first keeps its rows. An item
            # recorded again (reopened, or a claim taken over) loses the rows of its earlier run.
            made = [(pk, row) for task_hash, pk in written.items() for row in output_rows.get(task_hash, ())]
            output_tables.delete_rows(model, written.values())
            output_tables.insert(model, made)
    return time.perf_counter() - started, [f"{record['task_id']}: {record['error']}" for record in lost.values()]


def _without_inputs(good: list[dict], bad: list[dict]) -> dict[str, dict]:
    """The failed records, by hash, of the items of ``good`` that need an astra task neither recorded done (and
    now held so, see :func:`queries.hold_done`) nor done in this chunk (whose failed items are ``bad``). Call first
    in the chunk's transaction."""
    chunk = {record["task_hash"]: record for record in good}
    gone = queries.hold_done({key for record in good for key in record.get("needs", ())} - chunk.keys())
    needing: dict[str, list[dict]] = {}  # by the hash of an item of the chunk, the items that need it
    for record in good:
        for key in record.get("needs", ()):
            if key in chunk:
                needing.setdefault(key, []).append(record)
    lost: dict[str, dict] = {}
    waiting = [record for record in good if gone.intersection(record.get("needs", ()))]
    while waiting:  # an item lost takes with it those of the chunk that need it, and so on
        record = waiting.pop()
        if record["task_hash"] not in lost:
            lost[record["task_hash"]] = record
            waiting += needing.get(record["task_hash"], ())
    if not lost:
        return {}
    # What they need, by name: an item of the chunk by its record, another task by its row if it has one.
    names = {**queries.task_ids(gone), **{record["task_hash"]: record["task_id"] for record in good + bad}}
    return {key: _lost(record, gone | lost.keys(), names) for key, record in lost.items()}


def _lost(record: dict, absent: set[str], names: dict[str, str]) -> dict:
    """The failed record of an item worked without a task it needs recorded done by the time of its record."""
    missing = [key for key in record["needs"] if key in absent]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    error = MissingInputError(
        f"{names.get(missing[0], f'the astra task of hash {missing[0]}')}{more}, which this item needs, is not "
        "recorded done: it failed or never ran before this item, or was forgotten while the batch worked; make it, "
        "then run the batch again"
    )
    failed = {key: value for key, value in record.items() if key != "result"}
    failed["error"], failed["traceback"] = summarise(error)
    return failed


#: Collect cyclic garbage once per this many new containers while items are checked (CPython's default: 700).
_CHECK_COLLECT_EVERY = 50_000
_collections_lock = threading.Lock()
_checks_under_way = 0  # in this process, in any thread
_threshold_before = 700


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run Python's cyclic garbage collector less often while a check identifies items.

    Each item leaves a few containers (its values, their texts, the item) and no cycle, but at CPython's default
    threshold a check of 10^6 items runs the collector ~6,000 times, each walking the chunks in flight: 2-3 s of a
    10 s check (bench/recording.py). Checks at once in several threads share one setting, restored by the last.
    """
    global _checks_under_way, _threshold_before
    with _collections_lock:
        if _checks_under_way == 0:
            _threshold_before, *older = gc.get_threshold()
            gc.set_threshold(max(_CHECK_COLLECT_EVERY, _threshold_before), *older)
        _checks_under_way += 1
    try:
        yield
    finally:
        with _collections_lock:
            _checks_under_way -= 1
            if _checks_under_way == 0:
                gc.set_threshold(_threshold_before, *gc.get_threshold()[1:])


def _linked_chunks(pending: Iterable[Item], size: int, written: Callable[[], None]) -> Iterator[list[Item]]:
    """Chunks of ``size`` items, each cut short before an item that needs an item of it or of the chunk before
    (which may not be written yet): that item waits for ``written()``, which returns once every chunk handed out
    so far is written (the generator resumes when its last chunk has been handed to the writer)."""
    chunk: list[Item] = []
    here: set[str] = set()  # the hashes of the chunk
    before: set[str] = set()  # of the chunk handed out last, perhaps not yet written (those before it are)
    for item in pending:
        if item.requires and not (here.isdisjoint(item.requires) and before.isdisjoint(item.requires)):
            if chunk:
                yield chunk
                chunk, here = [], set()
            written()
            before = set()
        chunk.append(item)
        here.add(item.task_hash)
        if len(chunk) == size:
            yield chunk
            chunk, here, before = [], set(), here
    if chunk:
        yield chunk


def _with_inputs(
    chunk: list[Item],
    process: Callable[[list[Item]], list[object]],
    every_need: bool = False,
    defer: bool = False,
) -> tuple[list[object], dict[str, dict[str, bool]]]:
    """The results of ``process`` of the chunk's items whose astra inputs are recorded done, and for the others
    the :class:`MissingInputError` that fails them unrun (or the error their ``requires()`` raised when asked
    again); and what each item needs (:func:`_needs`), by hash. Inputs of the items' own class are checked only
    with ``every_need`` (else they may be items of the batch not yet recorded, checked as the chunk is). With
    ``defer``, an item waiting only for tasks of its own class not recorded done, in the chunk or not, is not run:
    its result is a :class:`_Waiting` naming them."""
    # A "not done" this process keeps (a prefetch's, see astra.targets.Known) may be of a link recorded since, by
    # this batch (the chunk before) or by the luigi process that writes a pool's records: an item's run() must find
    # its input done, as a lone task would (self.input().exists() said False where read() gave the result).
    known().not_done.clear()
    needs: dict[str, dict[str, bool]] = {}
    missing: dict[str, Exception] = {}
    for item in chunk:
        if item.requires:
            try:
                needs[item.task_hash] = _needs(item)
            except Exception as exc:  # a requires() that raised only now: this item fails, the others go on
                missing[item.task_hash] = exc
    missing.update(_missing_inputs(chunk, needs, every_need, defer))
    results = iter(process([item for item in chunk if item.task_hash not in missing] if missing else chunk))
    return [missing[item.task_hash] if item.task_hash in missing else next(results) for item in chunk], needs


def _missing_inputs(
    chunk: list[Item], needs: dict[str, dict[str, bool]], every_need: bool = False, defer: bool = False
) -> dict[str, MissingInputError | _Waiting]:
    """The items of ``chunk`` that need an astra task of another class (with ``every_need``, of any class) not
    recorded done (one query), each with its error. A task of the items' own class may be an item of this batch (a
    chain, each item needing the one before), recorded before this one is: without ``every_need``, that is for the
    check at the record (:func:`_without_inputs`). With ``every_need`` an item of the chunk itself counts as not
    done too: no chunk holds an item with the link it needs before it (:func:`_linked_chunks` cuts it there, a
    last try hands out links that need none of the others), so such a link comes after it in ``parameter_sets()``,
    and would be recorded only after this item's ``run()`` found no input. With ``defer``, those of the own class
    are checked too, and an item missing only such tasks is :class:`_Waiting`."""

    def checked(key: str, before: bool) -> bool:
        return before or defer or every_need

    # Complete as luigi would find them before running a lone item: done, and what they yielded still done.
    done = complete_hashes({key for keys in needs.values() for key, before in keys.items() if checked(key, before)})
    missing = {}
    for item in chunk:
        needed = needs.get(item.task_hash, {})
        absent = [key for key, before in needed.items() if checked(key, before) and key not in done]
        if absent and defer and not any(needed[key] for key in absent):
            missing[item.task_hash] = _Waiting(frozenset(absent))
        elif absent:
            try:
                names = {key: str(task) for key, task in _astra_requirements(item)}
            except Exception:  # a requires() that raises only now: the hash must do
                names = {}
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            if needed[absent[0]]:
                why = ("is not complete (not recorded done, or what it yielded has changed): run it first (a batch "
                       "does not run what its items require; its requires() may name it)")  # fmt: skip
            else:  # of the item's own class: a link of a chain, as _lost says it
                why = ("is not recorded done: it failed or never ran before this item; make it, then run the batch "
                       "again")  # fmt: skip
            missing[item.task_hash] = MissingInputError(
                f"{names.get(absent[0], absent[0])}{more}, which this item needs, {why}"
            )
    return missing


def _needs(item: Item) -> dict[str, bool]:
    """The hashes of the astra tasks (recorded in astra.task) that the item requires, each with whether it is of
    another class than the item (and so may be checked before the item runs, see :func:`_missing_inputs`)."""
    needs = {}
    for key, cls in item.required():
        recorded = _recorded(cls)
        if recorded is None:  # an output() of its own: only the task knows what it gives
            return {key: type(task) is not item.cls for key, task in _astra_requirements(item)}
        if recorded:
            needs[key] = cls is not item.cls
    return needs


def _astra_requirements(item: Item) -> Iterator[tuple[str, luigi.Task]]:
    """The hash and the task of each astra task the item requires, asking each task (the slow way)."""
    for task in flatten(requirements(item.task)):
        for target in database_targets([task]):
            if target.task_hash is not None:
                yield target.task_hash, task


def _recorded(cls: type) -> bool | None:
    """Whether tasks of ``cls`` are recorded in astra.task: those of BaseTask classes, whose output is astra's
    target. None for a BaseTask class with an ``output()`` of its own: only a task of it can tell."""
    if not isinstance(cls, type) or not issubclass(cls, BaseTask):
        return False  # a plain luigi task (an input file's): nothing records it in astra.task
    return True if cls.output is BaseTask.output else None


def _done(chunk: list[Item]) -> set[str]:
    use_own_connection()  # an asker works beside the other and the main thread, each on a connection of its own
    return queries.done_hashes([item.task_hash for item in chunk])


def _close_connection() -> None:
    close_thread_connection()  # the helper thread's own connection (an asker's, the writer's)


def _next_links(waiting: list[tuple[dict, str, frozenset[str]]]) -> list[dict]:
    """Take from ``waiting`` the sets that wait for none of the others (what they wait for is recorded by now,
    or failed, or never came), in their order."""
    keys = {key for _, key, _ in waiting}
    ready = [one for one in waiting if keys.isdisjoint(one[2])] or list(waiting)  # all: no cycle is left to wait on
    taken = {id(one) for one in ready}
    waiting[:] = [one for one in waiting if id(one) not in taken]
    return [values for values, _, _ in ready]


class _Waiting:
    """What an item not run waits for: the hashes of the tasks of its own class (links of a chain, perhaps in
    the same part) that were not recorded done when a pool process looked."""

    __slots__ = ("needs",)

    def __init__(self, needs: frozenset[str]) -> None:
        self.needs = needs


class _Chunk:
    """Parameter sets whose records are written in one transaction, handed to the pool in parts."""

    def __init__(self, sets: list[dict], last_try: bool = False) -> None:
        self.sets = sets
        self.last_try = last_try  # sets that waited for links: not to wait again (see BatchTask._work_in_pool)
        self.sent = 0  # parameter sets handed out
        self.waiting = 0  # parts handed out and not yet back
        self.records: list[dict] = []
        self.output_rows: dict[str, list[dict]] = {}
        self.deferred: list[tuple[dict, str, frozenset[str]]] = []  # (set, its hash, the links it waits for)

    def finished(self) -> bool:
        return self.sent == len(self.sets) and not self.waiting


#: The batch a pool process works for (set by _start_worker in each pool process).
_worker_batch: BatchTask | None = None


def _context(batch: BatchTask) -> multiprocessing.context.BaseContext:
    """Where pool processes come from: forks of a server process started afresh (a fork of this process would share
    its connection and threads), which imports astra and the batch's modules once for all of them.

    The server lives as long as this process, so a later batch (of other modules) has its pool processes import
    those themselves; ``_start_worker`` gives each process this process's working directory and database URL.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    modules = {__name__, type(batch).__module__, batch.item_class.__module__} - {"__main__", "__mp_main__"}
    context.set_forkserver_preload(sorted(modules))  # only until the server has started: then it is as it is
    return context


def _env() -> dict[str, str | None]:
    """What decides a pool process's settings and may not be in the environment it starts with: the database URL
    (given on the luigi command line, say), so that it finds done items and an item's run() reads the same one."""
    return {config.DATABASE_URL_ENV: config.database_url() or None}


def _start_worker(
    spec: bytes,
    env: dict[str, str | None],
    directory: str,
    command_line: dict | None,
    luigi_config: dict | None,
    owner: int,
) -> None:
    """In a new pool process: the settings, and the batch rebuilt from its class and parameters; the process ends
    when ``owner``, the process whose pool it is, does."""
    global _worker_batch
    threading.Thread(target=_end_with, args=(owner,), name="astra-pool-owner", daemon=True).start()
    os.chdir(directory)  # a fork of the server is where the server started: relative paths must mean the same here
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    config.adopt_command_line(command_line)  # the item parameters it sets decide identities
    config.adopt_luigi_config(luigi_config)  # so does luigi's configuration, as a script may have changed it
    # Close the connection as the process ends (a pool process does not run atexit), so the server sees a goodbye.
    multiprocessing.util.Finalize(None, close_thread_connection, exitpriority=10)
    _main_named_main()
    cls, kwargs = pickle.loads(spec)
    _worker_batch = cls(**kwargs)


def _main_named_main() -> None:
    """In a pool process of a script that calls ``luigi.build``: multiprocessing ran the script as ``__mp_main__``
    (``sys.modules["__main__"]`` is that module here), so the task classes it defines say they are of module
    ``__mp_main__``. A task's module is part of its identity, and in the script it is ``__main__``: give them that
    name back, else each item would be another task than the script's, recorded and never found done."""
    main = sys.modules.get("__mp_main__")
    if main is None or sys.modules.get("__main__") is not main:
        return
    for value in list(vars(main).values()):
        if isinstance(value, type) and value.__module__ == "__mp_main__":
            value.__module__ = "__main__"


def _end_with(owner: int) -> None:
    """End this pool process as soon as process ``owner`` ends, however it ends (a SIGKILL says no goodbye).

    Without this a pool process whose owner was killed waits for work forever (it holds the write end of its own
    queue), and keeps the forkserver, the resource tracker and its database connection alive with it; once the
    pool processes are gone, the forkserver and the resource tracker see their pipes close and end themselves.
    The kernel closes the connection's socket, so the server ends that session at once.
    """
    try:
        handle = os.pidfd_open(owner)  # Linux: readable once the process has ended
    except (AttributeError, OSError):  # elsewhere, or it has ended already
        handle = None
    if handle is not None:
        select.select([handle], [], [])
    else:
        while _alive(owner):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone; or another user's process took its number
        return False
    return True


def _ready() -> None:
    """Nothing: submitted once per process to start it."""


def _work_part(sets: list[dict], last_try: bool = False) -> tuple[
    list[dict], dict[str, list[dict]], float, int, int, _Unidentified, list[tuple[int, str, frozenset[str]]]
]:  # fmt: skip
    """In a pool process: the records (and output rows) of the items of ``sets`` not yet done, the seconds it
    took, how many were done already, how many repeat an item of the part, those without an identity, and the
    items not run because a link of a chain they need is not recorded yet (their places in ``sets``, hashes and
    what they wait for). On the ``last_try`` of such items, one that still misses a link fails unrun instead."""
    batch = _worker_batch
    started = time.perf_counter()
    unidentified = _Unidentified()
    numbered = list(_numbered(batch.item_class, sets, unidentified))
    part = [item for _, item in numbered]
    done = _done(part)
    given: set[int] = set()
    todo = [item for item in part if item.task_hash not in done and _first_time(item.task_hash, given)]
    skipped = sum(1 for item in part if item.task_hash in done)
    twice = len(part) - len(todo) - skipped
    if not todo:
        return [], {}, time.perf_counter() - started, skipped, twice, unidentified, []
    working = time.perf_counter()
    # A link run before the one it needs is recorded would read no input (this process cannot wait for it: the
    # luigi process writes the records), so it waits, and the luigi process hands it out again later.
    results, needs = _with_inputs(todo, functools.partial(_processed, batch), every_need=last_try, defer=not last_try)
    waiting = {item.task_hash: result.needs for item, result in zip(todo, results) if type(result) is _Waiting}
    if waiting:
        worked = [(item, result) for item, result in zip(todo, results) if type(result) is not _Waiting]
        todo, results = [item for item, _ in worked], [result for _, result in worked]
    deferred = []
    for place, item in numbered:
        if waiting.get(item.task_hash) is not None:
            deferred.append((place, item.task_hash, waiting.pop(item.task_hash)))  # a set given twice waits once
    records: list[dict] = []
    output_rows: dict[str, list[dict]] = {}
    if todo:
        model = outputs.output_model(batch.item_class)
        records, output_rows = _records(model, todo, results, time.perf_counter() - working, needs)
    return records, output_rows, time.perf_counter() - started, skipped, twice, unidentified, deferred


def _processed(batch: BatchTask, todo: list[Item]) -> list[object]:
    results = batch.process(todo)
    if len(results) != len(todo):
        raise ValueError(f"{type(batch).__name__}.process() gave {len(results)} results for {len(todo)} items")
    return results


def _records(
    model: type | None, chunk: list[Item], results: list[object], seconds: float, needs: dict[str, dict[str, bool]]
) -> tuple[list[dict], dict]:
    """The records of a chunk's items (done with their results and what they need, or failed), and output rows by
    task hash."""
    output_rows: dict[str, list[dict]] = {}
    if model is not None:  # the results go into the output table, not the result column
        results = [_output_rows(model, item, r, output_rows) for item, r in zip(chunk, results)]
    duration = seconds / len(chunk)
    records = [_row(item, duration, result, needs.get(item.task_hash)) for item, result in zip(chunk, results)]
    return records, output_rows


def _numbered(cls: type, sets: Iterable[dict], unidentified: _Unidentified) -> Iterator[tuple[int, Item]]:
    """Each item with its place among ``sets``; a set without an identity is counted in ``unidentified``."""
    for number, item in enumerate(items(cls, sets, unidentified)):
        yield number + unidentified.count, item


def _chunks(iterable: Iterable, size: int, first: int | None = None) -> Iterator[list]:
    """Lists of ``size`` items; with ``first``, the first list has that many and each next one four times more."""
    iterator = iter(iterable)
    length = min(first or size, size)
    while chunk := list(islice(iterator, length)):
        yield chunk
        length = min(4 * length, size)


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Unidentified:
    """Parameter sets of a batch without an identity (see :func:`identity.items`): how many, and the first error."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def __call__(self, values: dict, error: Exception) -> None:
        if not self.count:
            self.first = str(error)
        self.count += 1

    def add(self, other: _Unidentified) -> None:
        if other.count and not self.count:
            self.first = other.first
        self.count += other.count

    def line(self, between: str = "") -> str:
        """What a batch that met them fails with."""
        have = "1 item has" if self.count == 1 else f"{self.count} items have"
        return f"{have} no identity (not run, not recorded){between}; first: {self.first}"


def _first_time(task_hash: str, given: set[int]) -> bool:
    """Whether a batch meets this identity for the first time (then it is kept in ``given``).

    Kept for the items a run works (not those done already): 128 bits of the hash, as an int, ~100 B per item
    with the set's own (100 MB per 10^6 items, half what the hex text would cost); two different tasks share them
    with a chance of 10^-22 among 10^8 items.
    """
    key = int(task_hash[:32], 16)
    if key in given:
        return False
    given.add(key)
    return True


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)


def _output_rows(model: type, item: Item, result: object, rows: dict[str, list[dict]]) -> object:
    """Check ``result`` as rows of ``model`` and keep them by the item's hash; the item fails if they are wrong."""
    if _failed(result):
        return result
    try:
        rows[item.task_hash] = outputs.rows(model, result, f"{item.task_id}: run()")
    except Exception as exc:
        return exc
    return None


def _unrecorded_run(task: luigi.Task) -> object:
    """The item's own ``run()``, without the claim and record around it (the batch records items itself)."""
    result = run_unrecorded(task)
    if isinstance(result, Iterator):
        raise TypeError(f"{task.task_family}.run() yields dynamic dependencies; it cannot run inside a batch")
    return result


def _row(item: Item, duration: float, result: object, needs: dict[str, bool] | None = None) -> dict:
    """The record of one item: done with its result (and the astra tasks it ``needs``, checked again as it is
    written), or failed with the exception it gave (or its result caused)."""
    row = {
        **fields(item.cls, item.task_id, item.task_hash, item.version),  # as a lone task's row has them
        "parameters": item.parameters,
        "requires": item.requires,
        "duration": duration,
    }
    if not _failed(result):
        try:
            row["result"] = None if result is None else values.dumps(result)
            if needs:
                row["needs"] = list(needs)
            return row
        except values.UnstorableError as exc:  # this item fails; the others of its chunk keep their results
            result = exc
    row["error"], row["traceback"] = summarise(result)  # as a lone task's failure is recorded
    return row
