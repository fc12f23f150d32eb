"""Validating batches in worker processes, so every core does GX work.

GX's pandas engine holds the GIL for much of its work, so threads cannot share it; processes can.
A zone's batches (each file is one or more batches, see pipeline.validate.batches) are jobs; the
validating process hands them to `worker_count()` workers, `python -m pipeline.validate.workers`,
started for the call and stopped after it. Each worker reads its batch from the Parquet file itself,
so no data crosses a pipe: a job is a path and a span, and a reply is the scrubbed GX suite result
(pipeline.validate.privacy), counts only. The validating process stores the results and builds the
Data Docs as before, in file and batch order, so the reports do not depend on which worker ran what.

Workers are plain subprocesses rather than `multiprocessing`, for the reasons given in
pipeline.crypto.hmac_pool (forking a process running Polars' threads can deadlock; spawn re-imports
the parent's `__main__`, which under Airflow is its CLI). They start without the environment
variables that can carry the linkage key: validation never needs it.

The validating process is one of the workers itself, so it starts at once; `PPRL_VALIDATION_WORKERS`
sets the number of worker processes besides it (0: this process alone). The default is one per CPU
this process may run on, less its own, and none for a zone under `PARALLEL_MIN_ROWS` rows, where a
worker's start (importing GX takes seconds) costs more than it saves.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.machine import usable_cpus
from pipeline.secret_store import KEY_ENVIRONMENT  # the variables a worker is started without

if TYPE_CHECKING:
    from pipeline.progress import Progress

WORKER_MODULE = "pipeline.validate.workers"
_LENGTH = struct.Struct("<Q")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# A worker spends several seconds importing GX before its first batch: below this many rows in a
# zone, this process alone finishes sooner. Raised from 2 million when the pattern, range and
# uniqueness rules moved to Polars (pipeline.validate.vectorised) made a row about three times
# cheaper to validate (100k people: the linked zone's 4.8 million rows took 8 s in one process, less
# than twice a worker's import), so the break-even moved up by about as much.
PARALLEL_MIN_ROWS = 6_000_000


@dataclass(frozen=True)
class BatchJob:
    """Validate row groups [first, stop) of `path` against `dataset`'s suite (less cross-row rules
    when `cross_row_elsewhere`: the whole file's uniqueness is checked apart, see whole_file)."""

    dataset: str
    path: str
    first: int
    stop: int
    rows: int
    whole_file: bool
    cross_row_elsewhere: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def worker_count(jobs: list[BatchJob]) -> int:
    """Worker processes besides this one for `jobs`: `PPRL_VALIDATION_WORKERS`, else one per usable
    CPU but this process's own; none for a zone too small to repay a worker's start (GX's import)."""
    configured = os.environ.get("PPRL_VALIDATION_WORKERS")
    if configured is not None and configured.strip():
        wanted = max(0, int(configured))
    else:
        wanted = usable_cpus() - 1 if sum(job.rows for job in jobs) >= PARALLEL_MIN_ROWS else 0
    return min(wanted, len(jobs) - 1)


class _Validator:
    """The GX objects one process validates with: an in-memory context, one batch definition per dataset."""

    def __init__(self) -> None:
        import tempfile

        from pipeline.validate import docs

        # The context's Data Docs site is never built here; the validating process builds its own.
        self._context = docs.ephemeral_context(Path(tempfile.gettempdir()) / "pprl-unused-data-docs")
        self._source = self._context.data_sources.add_pandas("pipeline")
        self._definitions: dict[str, Any] = {}

    def run(self, job: BatchJob) -> Any:
        from pipeline.validate._gx import gx
        from pipeline.validate.batches import BatchSpan, ParquetBatch
        from pipeline.validate.column_groups import validate_batch
        from pipeline.validate.privacy import RESULT_FORMAT, scrub_suite_result
        from pipeline.validate.suites import validated_contract, validation_suite
        from pipeline.validate.whole_file import split_cross_row

        if job.dataset not in self._definitions:
            asset = self._source.add_dataframe_asset(job.dataset)
            self._definitions[job.dataset] = asset.add_batch_definition_whole_dataframe(job.dataset)
        suite = validation_suite(job.dataset)
        expectations = split_cross_row(suite.expectations)[0] if job.cross_row_elsewhere else suite.expectations
        batch_suite = gx.ExpectationSuite(name=job.dataset, expectations=expectations, meta=suite.meta)
        span = BatchSpan(job.first, job.stop, job.rows, job.whole_file)
        batch = ParquetBatch(Path(job.path), span, validated_contract(job.dataset))
        result = validate_batch(self._definitions[job.dataset], batch, batch_suite, job.parameters, RESULT_FORMAT)
        return scrub_suite_result(result)


_local: _Validator | None = None


def validate_here(job: BatchJob) -> tuple[Any, float]:
    """Validate one batch in this process; its scrubbed result and the seconds it took."""
    global _local
    started = time.perf_counter()
    if _local is None:
        _local = _Validator()
    return _local.run(job), time.perf_counter() - started


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class _ThisProcess:
    """This process as one of the workers: it starts at once, GX being imported already."""

    def run(self, job: BatchJob) -> tuple[Any, float]:
        return validate_here(job)

    def close(self) -> None:
        pass


class _Worker:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k.upper() not in KEY_ENVIRONMENT}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        # One core per worker: several workers each running Polars' and Arrow's thread pools on two
        # cores would only take turns.
        env.setdefault("POLARS_MAX_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_PACKAGE_ROOT
        )

    def run(self, job: BatchJob) -> Any:
        _send(self.proc.stdin, job)
        try:
            status, value = _receive(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"validation worker {self.proc.pid} stopped (exit code {self.proc.poll()}); the task can be retried") from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def validate_all(jobs: list[BatchJob], progress: Progress | None = None) -> list[tuple[Any, float]]:
    """(scrubbed GX result, seconds) of every job, in job order, on worker processes when it pays.
    Each job's rows are counted into `progress` as it finishes."""
    done = progress.advance if progress is not None else (lambda rows: None)
    size = worker_count(jobs)
    if size == 0:
        results = []
        for job in jobs:
            results.append(validate_here(job))
            done(job.rows)
        return results
    results: list[tuple[Any, float]] = [None] * len(jobs)  # type: ignore[list-item]
    errors: list[BaseException] = []
    # Biggest batches first, so a long one does not start last and leave the other workers idle.
    queue = iter(sorted(range(len(jobs)), key=lambda i: -jobs[i].rows))
    take = threading.Lock()

    def drive(worker: _Worker) -> None:
        # One thread per worker: those of worker processes mostly wait on pipes, with the GIL
        # released, while this process's own thread validates.
        try:
            while not errors:
                with take:
                    i = next(queue, None)
                if i is None:
                    return
                results[i] = worker.run(jobs[i])
                done(jobs[i].rows)
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)

    workers: list[_ThisProcess | _Worker] = [_ThisProcess(), *(_Worker() for _ in range(size))]
    try:
        threads = [threading.Thread(target=drive, args=(w,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in workers:
            w.close()
    if errors:
        raise errors[0]
    return results


def main() -> None:
    """Serve jobs from stdin until it closes. Replies go to the real stdout; anything GX prints, to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    while True:
        try:
            job = _receive(requests)
        except EOFError:
            return
        try:
            reply = ("ok", validate_here(job))
        except Exception as exc:  # sent back and raised in the validating process
            try:
                pickle.dumps(exc)
                reply = ("error", exc)
            except Exception:
                reply = ("error", RuntimeError(f"validation worker failed with {type(exc).__name__}"))
        _send(replies, reply)


__all__ = ["BatchJob", "validate_all", "validate_here", "worker_count"]

if __name__ == "__main__":
    main()
