"""`make bench` refuses, before it starts, a size the disk cannot hold: at 3 million people the run
needs about 40 GB and would otherwise fail part way, half an hour in."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def free_gb(monkeypatch):
    """Pretend the disk has this many GB free (the test machine's real free space is whatever it is)."""

    def set_free(gb: float) -> None:
        real = shutil.disk_usage

        def usage(path):
            total, used, _ = real(path)
            return type(real(path))(total, used, int(gb * 1e9))

        monkeypatch.setattr(shutil, "disk_usage", usage)

    return set_free


def test_a_size_the_disk_cannot_hold_is_refused_with_what_to_do(tmp_path, free_gb):
    bench = _bench_run()
    free_gb(10.0)
    with pytest.raises(bench.NotEnoughDisk) as refused:
        bench.check_free_disk("xlarge", passes=1, world_cached=False, work_root=tmp_path, cache_root=tmp_path / "cache")
    message = str(refused.value)
    assert "--size xlarge" in message and f"{bench.RUN_DISK_GB['xlarge'] + bench.WORLD_DISK_GB['xlarge']:.0f} GB" in message
    assert "10.0 GB are free" in message and "TMPDIR=" in message and str(tmp_path) in message


def test_two_passes_need_twice_the_work_space_and_say_how_to_make_one(tmp_path, free_gb):
    bench = _bench_run()
    one_pass = bench.RUN_DISK_GB["large"]
    free_gb(one_pass * 1.5)
    bench.check_free_disk("large", passes=1, world_cached=True, work_root=tmp_path, cache_root=tmp_path)
    with pytest.raises(bench.NotEnoughDisk, match="BENCH_ARGS=--dags-only makes one pass"):
        bench.check_free_disk("large", passes=2, world_cached=True, work_root=tmp_path, cache_root=tmp_path)


def test_enough_disk_passes(tmp_path, free_gb):
    bench = _bench_run()
    free_gb(1000.0)
    bench.check_free_disk("xlarge", passes=2, world_cached=False, work_root=tmp_path, cache_root=tmp_path / "cache")
