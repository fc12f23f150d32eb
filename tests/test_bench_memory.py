"""The bench's memory sampler reads a process's PSS (costly: the kernel walks its pages) only when the
process's RSS has moved, so it does not take a twentieth of the CPU of the run it measures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
# A process that says it is ready, then, each time it reads a line, holds 200 MB more (every page
# touched, so resident) and says so.
GROWS = """
import sys
held = []
print("ready", flush=True)
for _ in sys.stdin:
    held.append(bytearray(200 << 20))
    held[-1][::4096] = b"x" * len(held[-1][::4096])
    print("grown", flush=True)
"""


def _bench_memory():
    spec = importlib.util.spec_from_file_location("bench_memory", REPO / "bench" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pss_is_read_again_only_when_rss_moves(monkeypatch):
    memory = _bench_memory()
    reads = []
    real = psutil.Process.memory_full_info
    monkeypatch.setattr(psutil.Process, "memory_full_info", lambda self: reads.append(self.pid) or real(self))
    child = subprocess.Popen([sys.executable, "-c", GROWS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        cache: dict = {}
        first = memory.tree_pss(child.pid, cache)
        assert reads == [child.pid] and first > 0
        assert memory.tree_pss(child.pid, cache) == first  # its RSS has not moved by 2%: the PSS read stands
        assert reads == [child.pid]
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "grown\n"
        grown = memory.tree_pss(child.pid, cache)
        assert reads == [child.pid] * 2 and grown > first + (150 << 20)
        assert memory.tree_pss(child.pid) > 0 and reads == [child.pid] * 3  # without a cache: read every time
    finally:
        child.kill()
        child.wait()
