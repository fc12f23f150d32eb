"""Hex HMAC-SHA256 tokens of a column of distinct values, on every core.

    >>> import hmac
    >>> hex_hmac(b"k" * 32, pl.Series(["a", "b"])).to_list()[0] == hmac.new(b"k" * 32, b"a", "sha256").hexdigest()
    True

SHA-256 of short messages in CPython holds the GIL, so threads cannot share the work; worker
processes can. Below `PARALLEL_MIN_VALUES` values the work is done in this process. Above it, the
values are cut into chunks, at least one per worker, that worker processes (`python -m
pipeline.crypto.hmac_batch`, started once and kept for the life of this process) hash, each chunk's
reply turned straight into an Arrow string array without a Python object per token. Record tokens
come a streaming batch (about 100,000 values) at a time, so a batch of that size is shared too.

Workers are plain subprocesses, not `multiprocessing`: forking a process that runs Polars' thread
pool (and, inside Airflow, several more threads) can deadlock, and the spawn start method would
re-import the parent's `__main__` (the Airflow CLI, say) in every worker. A worker is sent the field
key of one field at a time, never the linkage key: it is started without the environment variables
that can carry the key, and holds nothing after its reply.

A worker that sends nothing for `REPLY_TIMEOUT_S` is killed and the call fails (TimeoutError).

`PPRL_TOKEN_WORKERS` sets the number of workers; 0 keeps all the work in this process. The default
is one per CPU this process may run on (none on a one-CPU machine).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.crypto.hmac_batch import HEX_DIGEST, REQUEST, SEPARATOR, HmacSha256
# KEY_ENVIRONMENT: the variables a worker is started without.
from pipeline.crypto.keys import KEY_ENVIRONMENT
from pipeline.machine import usable_cpus

# A pipe round trip costs about what hashing a few hundred values does.
PARALLEL_MIN_VALUES = 16_384
# Chunks small enough that both workers stay busy to the end when one core is shared with other
# work, large enough that the per-request overhead (a pipe round trip) is lost in the hashing.
CHUNK_VALUES = 131_072
WORKER_MODULE = "pipeline.crypto.hmac_batch"
PIPE_BYTES = 1 << 20
# A worker answers a chunk in well under a second. One that has sent nothing for this long is stuck
# (stopped, or its reply lost: seen once under a profiler that pauses processes to sample them), and
# the call fails with an error the run can be retried after, instead of waiting for ever.
REPLY_TIMEOUT_S = 300.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def worker_count() -> int:
    """Worker processes to use: `PPRL_TOKEN_WORKERS`, else one per usable CPU (0 on one CPU)."""
    configured = os.environ.get("PPRL_TOKEN_WORKERS")
    if configured is not None and configured.strip():
        return max(0, int(configured))
    cpus = usable_cpus()
    return cpus if cpus > 1 else 0


class _Worker:
    """One worker process, spoken to over its stdin and stdout."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k.upper() not in KEY_ENVIRONMENT}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=_PACKAGE_ROOT,
        )
        # A reply is about 8 MB: pipes of 1 MB rather than 64 kB save most of the context switches.
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    def hex_digests(self, key: bytes, count: int, joined: bytes) -> bytes:
        self.proc.stdin.write(REQUEST.pack(key, count, len(joined)))
        self.proc.stdin.write(joined)
        self.proc.stdin.flush()
        reply = self._read(count * HEX_DIGEST)
        if len(reply) != count * HEX_DIGEST:
            raise RuntimeError(
                f"token worker {self.proc.pid} stopped (exit code {self.proc.poll()}); the run can be retried"
            )
        return reply

    def _read(self, n: int) -> bytes:
        """`n` bytes of the worker's reply (fewer if it closed its end). A worker that sends nothing
        for REPLY_TIMEOUT_S is killed and TimeoutError raised. Read from the pipe itself, never
        through `proc.stdout`'s buffer."""
        fd = self.proc.stdout.fileno()
        parts: list[bytes] = []
        got = 0
        while got < n:
            ready, _, _ = select.select([fd], [], [], REPLY_TIMEOUT_S)
            if not ready:
                self.proc.kill()
                raise TimeoutError(
                    f"token worker {self.proc.pid} sent no reply for {REPLY_TIMEOUT_S:.0f} s and was stopped; the run can be retried"
                )
            data = os.read(fd, min(n - got, PIPE_BYTES))
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class WorkerPool:
    """A fixed set of worker processes; each `hex_hmac_chunks` call shares its chunks among them."""

    def __init__(self, size: int):
        self.workers = [_Worker() for _ in range(size)]
        self._lock = threading.Lock()  # one call at a time: a worker serves one request at a time

    def hex_hmac_chunks(self, key: bytes, chunks: list[pl.Series]) -> list[bytes]:
        """Hex tokens of each chunk (64 ASCII bytes per value), in chunk order."""
        replies: list[bytes | None] = [None] * len(chunks)
        errors: list[BaseException] = []
        next_chunk = iter(range(len(chunks)))
        take = threading.Lock()

        def drive(worker: _Worker) -> None:
            # One thread per worker takes the next chunk as soon as its worker is free. The threads
            # mostly wait on pipes, with the GIL released.
            try:
                while True:
                    with take:
                        i = next(next_chunk, None)
                    if i is None or errors:
                        return
                    replies[i] = worker.hex_digests(key, chunks[i].len(), _joined(chunks[i]))
            except BaseException as exc:  # re-raised in the calling thread below
                errors.append(exc)

        with self._lock:
            threads = [threading.Thread(target=drive, args=(w,), daemon=True) for w in self.workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            _discard_pool()
            raise errors[0]
        return [r for r in replies if r is not None]

    def close(self) -> None:
        for w in self.workers:
            w.close()


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def _shared_pool(size: int) -> WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None or len(_pool.workers) != size:
            if _pool is not None:
                _pool.close()
            _pool = WorkerPool(size)
        return _pool


def _discard_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


atexit.register(_discard_pool)


def _joined(values: pl.Series) -> bytes:
    """The values as UTF-8, joined by the separator, built in Rust rather than value by value.

    Raises ValueError when a value contains the separator itself (no canonical form does).
    """
    if not values.len():
        return b""
    joined = values.str.join(SEPARATOR.decode()).item().encode("utf-8")
    if joined.count(SEPARATOR) != values.len() - 1:
        raise ValueError("a value to tokenise contains a line feed; canonical forms never do, so normalise first")
    return joined


def _as_strings(hex_tokens: bytes, count: int) -> pl.Series:
    """64-character tokens laid end to end -> a String Series, reusing the bytes as the Arrow data buffer."""
    offsets = np.arange(0, HEX_DIGEST * (count + 1), HEX_DIGEST, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(hex_tokens))
    return pl.Series(pl.from_arrow(array), dtype=pl.String)


def hex_hmac(key: bytes, values: pl.Series, workers: int | None = None) -> pl.Series:
    """Lower-case hex HMAC-SHA256 under `key` of each value of a String Series without nulls, in order.

    `workers` overrides `worker_count()`. Values must not contain a line feed (no canonical form does).
    """
    if values.null_count():
        raise ValueError("values to tokenise must not be null; drop nulls first (a missing value is never tokenised)")
    n = values.len()
    size = worker_count() if workers is None else workers
    if size < 1 or n < PARALLEL_MIN_VALUES:
        if n == 0:
            return pl.Series(values.name, [], dtype=pl.String)
        return _as_strings(HmacSha256(key).hex_lines(_joined(values)), n).alias(values.name)
    # A batch smaller than a chunk per worker is split evenly, so every worker has a share.
    step = min(CHUNK_VALUES, -(-n // size))
    chunks = [values.slice(start, step) for start in range(0, n, step)]
    replies = _shared_pool(size).hex_hmac_chunks(key, chunks)
    parts = [_as_strings(reply, chunk.len()) for reply, chunk in zip(replies, chunks, strict=True)]
    return pl.concat(parts, rechunk=False).alias(values.name)
