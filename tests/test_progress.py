"""Progress of long stages (pipeline.progress): at most one report per interval, each saying rows or
steps done, elapsed time and an estimate of the time left, in the log and in the progress file the
embedded runner shows on the command line. The embedded runner's side is tested with the toy DAGs
in tests/test_dags.py."""

from __future__ import annotations

import json
import logging
import time

from pipeline.progress import FILE_VARIABLE, INTERVAL_VARIABLE, Progress, duration, interval_from_environment


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_report_says_done_total_elapsed_and_time_left() -> None:
    clock = FakeClock()
    progress = Progress("validate raw", total=2_000_000, unit="rows", interval=60, clock=clock)
    progress.advance(500_000)
    clock.now += 60
    assert progress.message() == "validate raw: 500,000 of 2,000,000 rows (25%), 1m00s elapsed, about 3m00s left"
    progress.step("hospital_apc")
    progress.advance(1_500_000)
    clock.now += 125
    assert progress.message() == "validate raw: 2,000,000 of 2,000,000 rows (100%), 3m05s elapsed; now hospital_apc"


def test_without_a_total_only_what_is_done_and_the_time() -> None:
    clock = FakeClock()
    progress = Progress("link", unit="steps", clock=clock)
    clock.now += 3725
    assert progress.message() == "link: 0 steps, 1h02m elapsed"


def test_reports_come_at_most_once_per_interval_and_not_for_a_short_stage(tmp_path, monkeypatch, caplog) -> None:
    progress_file = tmp_path / "progress.jsonl"
    monkeypatch.setenv(FILE_VARIABLE, str(progress_file))
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    with Progress("quick", total=1, interval=5):
        pass
    assert not progress_file.exists() and not caplog.records

    interval = 0.2
    times = []
    with Progress("slow", total=10, unit="rows", interval=interval) as progress:
        for _ in range(10):
            time.sleep(0.1)
            progress.advance()
            times.append(time.monotonic())
    lines = [json.loads(line) for line in progress_file.read_text().splitlines()]
    assert 2 <= len(lines) <= 6, lines
    assert all(line["stage"] == "slow" and line["message"].startswith("slow: ") and " of 10 rows (" in line["message"] for line in lines)
    logged = [r for r in caplog.records if r.name == "pipeline.progress"]
    assert [r.getMessage() for r in logged] == [f"progress: {line['message']}" for line in lines]
    spacing = [b.created - a.created for a, b in zip(logged, logged[1:])]
    assert all(gap >= interval * 0.9 for gap in spacing), spacing


def test_the_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.5")
    assert interval_from_environment() == 0.5 and Progress("x").interval == 0.5
    for bad in ("", "soon", "-1", "0"):
        monkeypatch.setenv(INTERVAL_VARIABLE, bad)
        assert interval_from_environment() == 60.0
    assert duration(59.6) == "1m00s"
