"""The bench's memory sampler reads a process's PSS (costly: the kernel walks its pages) only when the
process's RSS has moved, so it does not take a twentieth of the CPU of the run it measures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


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
    cache: dict = {}
    first = memory.tree_pss(os.getpid(), cache)
    assert reads == [os.getpid()] and first > 0
    assert memory.tree_pss(os.getpid(), cache) == first  # RSS has not moved by 2%: the PSS read stands
    assert reads == [os.getpid()]
    grown = bytearray(max(64 << 20, int(psutil.Process().memory_info().rss * 0.1)))  # RSS up by over 2%
    grown[:: 4096] = b"x" * len(grown[:: 4096])  # touched, so resident
    after = memory.tree_pss(os.getpid(), cache)
    assert reads == [os.getpid(), os.getpid()] and after > first
    assert memory.tree_pss(os.getpid()) > 0 and len(reads) == 3  # without a cache, always read
    del grown
