"""The memory of process trees, sampled, for the benches: a stage or a DAG run is a process that
starts others (the key holder's child, token and validation workers, Celery task processes), and
what the machine must hold is their sum at one moment, which no single process's peak shows.

PSS (proportional set size, from smaps_rollup) counts a page shared by forked processes once across
them, where a sum of RSS would count it in each. A peak shorter than the sampling interval can be
missed. Reading it costs the kernel time: about 65 ms of CPU for one 5 GB process, so a long run on
this 2-core machine is sampled every few seconds, not every half second, and a process's PSS is read
again only when its RSS (cheap to read) has moved by more than `RSS_MOVE` since it was last read:
a 1M run through the DAGs spent 63 CPU seconds reading PSS every two seconds, 5% of the CPU time of
the run it measured (a py-spy profile, 8 December 2026). Between two reads a process's PSS is taken
to be what it was, so a peak can be under-read by about RSS_MOVE (and by whatever another process's
start or end changed in the pages they share, which is small here: the pipeline's workers are
started, not forked).
"""

from __future__ import annotations

import contextlib
import threading
import time

import psutil

SAMPLE_SECONDS = 0.5
MB = 1024 * 1024


def family(pid: int) -> list[psutil.Process]:
    """A process and all its descendants; none if it has ended."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


RSS_MOVE = 0.02

# A process (pid, start time) -> (its RSS, its PSS) when its PSS was last read.
PssCache = dict[tuple[int, float], tuple[int, int]]


def tree_pss(pid: int, cache: PssCache | None = None) -> int:
    """Bytes of PSS of a process and all its descendants (a process that ends while it is read
    counts as nothing). With `cache`, a process's PSS is read again only when its RSS has moved by
    more than RSS_MOVE since the PSS in `cache` was read (and `cache` is brought up to date)."""
    total = 0
    for proc in family(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if cache is None:
                total += proc.memory_full_info().pss
                continue
            rss = proc.memory_info().rss
            key = (proc.pid, proc.create_time())
            last = cache.get(key)
            if last is None or abs(rss - last[0]) > RSS_MOVE * last[0]:
                last = cache[key] = (rss, proc.memory_full_info().pss)
            total += last[1]
    return total


class TreeMemory(threading.Thread):
    """Samples the PSS of each named process tree every `every` seconds until stopped; keeps each
    tree's peak (`peak_mb`, by name), the peak of their sum at one sampling time (`peak_total_mb`),
    and every sample of that sum with its time (`samples`: Unix time, MB), for `peak_between`."""

    def __init__(self, roots: dict[str, int], every: float = SAMPLE_SECONDS):
        super().__init__(daemon=True)
        self.roots = roots
        self.every = every
        self.peak_mb = {name: 0.0 for name in roots}
        self.peak_total_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        # The CPU time sampling took (this thread's, with the kernel's time reading smaps_rollup for it).
        self.cpu_seconds = 0.0
        self._stopping = threading.Event()

    def run(self) -> None:
        cache: PssCache = {}
        while not self._stopping.wait(self.every):
            total = 0.0
            for name, pid in self.roots.items():
                mb = tree_pss(pid, cache) / MB
                self.peak_mb[name] = max(self.peak_mb[name], mb)
                total += mb
            self.peak_total_mb = max(self.peak_total_mb, total)
            self.samples.append((time.time(), total))
            self.cpu_seconds = time.thread_time()

    def peak_between(self, start: float, end: float) -> float | None:
        """The largest sampled sum from Unix time `start` to `end`; None when no sample fell in them
        (a span shorter than the sampling interval)."""
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return max(inside) if inside else None

    def stop(self) -> None:
        self._stopping.set()
        self.join()
