"""Progress of a long stage, said at most once a minute: rows (or steps) done, elapsed, time left.

A stage at a million people can run for minutes inside one task, and a task's end is the first
thing the command line would otherwise hear of it. A `Progress` is a context manager around such a
stage: the stage says what it has done (`advance`) and what it is doing (`step`), and a timer
thread reports every `interval` seconds while the stage runs, never more often, so a stage that
ends within the interval says nothing. Reports carry counts and stage names only, never a value.

Each report goes to the log (the task log under Airflow) and, where `PPRL_PROGRESS_FILE` names a
file, as a JSON line to it: the embedded runner (pipeline.orchestration.embedded) sets it and
prints what arrives, from whichever process the stage runs in (the key holder's tasks run in
children of their own, which inherit the variable).

    >>> with Progress("validate", total=2_000_000, interval=60) as progress:  # doctest: +SKIP
    ...     progress.advance(500_000)
    # a minute later, in the log and on the command line:
    # validate: 500,000 of 2,000,000 rows (25%), 1m00s elapsed, about 3m00s left
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

# Seconds between reports; tests set it small. Read when a Progress starts, so children see the
# value their parent had.
INTERVAL_VARIABLE = "PPRL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 60.0
# A file each report is appended to as one JSON line, for a runner to show (unset: the log only).
FILE_VARIABLE = "PPRL_PROGRESS_FILE"


def interval_from_environment() -> float:
    value = os.environ.get(INTERVAL_VARIABLE, "").strip()
    try:
        return float(value) if value and float(value) > 0 else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """`42s`, `3m05s` or `1h02m`.

    >>> duration(42.4), duration(185), duration(3725)
    ('42s', '3m05s', '1h02m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Report a stage's progress every `interval` seconds while it runs (see the module docstring)."""

    def __init__(
        self,
        stage: str,
        total: int | None = None,
        unit: str = "rows",
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stage, self.total, self.unit = stage, total, unit
        self.interval = interval if interval is not None else interval_from_environment()
        self.clock = clock
        self.done = 0
        self.current: str | None = None
        self.started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def advance(self, n: int = 1) -> None:
        """`n` more rows (or steps) done."""
        with self._lock:
            self.done += n

    def step(self, name: str) -> None:
        """Say what the stage is doing now ("tokenising", "writing the link map")."""
        with self._lock:
            self.current = name

    def message(self) -> str:
        """The report as it reads now, e.g. `link: 2 of 5 sources (40%), 1m00s elapsed, about 1m30s left`."""
        with self._lock:
            done, current = self.done, self.current
        elapsed = self.clock() - self.started
        parts = [f"{done:,} of {self.total:,} {self.unit}" if self.total else f"{done:,} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * done // self.total}%)"
        parts.append(f"{duration(elapsed)} elapsed")
        if self.total and 0 < done < self.total:
            parts.append(f"about {duration(elapsed * (self.total - done) / done)} left")
        text = f"{self.stage}: " + ", ".join(parts)
        return f"{text}; now {current}" if current else text

    def report(self) -> None:
        """Say where the stage is, in the log and in the progress file (if one is set)."""
        text = self.message()
        log.info("progress: %s", text)
        path = os.environ.get(FILE_VARIABLE)
        if path:
            try:
                # One short write in append mode: lines from several processes do not interleave.
                with open(path, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"stage": self.stage, "message": text}) + "\n")
            except OSError as exc:  # progress is a courtesy; the stage must not fail for it
                log.debug("progress file %s not written (%s)", path, exc.strerror)

    def __enter__(self) -> Progress:
        self.started = self.clock()
        self._thread = threading.Thread(target=self._every_interval, name=f"progress {self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()
