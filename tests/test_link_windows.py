"""The link stage reads each source's record blocks and payload side by side, window by window
(pipeline.link.stage._windows), instead of joining them on record IDs: the two files must hold the
same records in the same order, and a pair that does not is refused, naming both files."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.errors import PipelineError
from pipeline.link import stage
from pipeline.link.plan import plan_link
from pipeline.settings import RunConfig

N = 7


@pytest.fixture
def plan(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "WINDOW", 3)  # three windows: 3, 3 and 1 rows
    plan = plan_link(RunConfig.from_conf({"raw_dir": str(tmp_path / "raw"), "work_dir": str(tmp_path / "work"), "release_label": "w"}))
    ids = [f"{i:064x}" for i in range(N)]
    plan.records["gp_events"].parent.mkdir(parents=True)
    pl.DataFrame({"record_id": ids, "token_block": list(range(N))}).write_parquet(plan.records["gp_events"])
    plan.payloads["gp_events"].parent.mkdir(parents=True)
    pl.DataFrame(
        {
            "record_id": ids,
            "event_date": [dt.date(2024, 1 + i, 1) for i in range(N)],
            "consultation_type": ["surgery"] * N,
            "provider_code": ["ZZ2001"] * N,
        }
    ).write_parquet(plan.payloads["gp_events"])
    return plan


def test_windows_carry_each_record_with_its_own_payload(plan):
    windows = list(stage._windows(plan, "gp_events", facts=True))
    assert [w.height for w in windows] == [3, 3, 1]
    whole = pl.concat(windows)
    assert whole.get_column("token_block").to_list() == list(range(N))
    assert whole.get_column("month").to_list() == [f"2024-{1 + i:02d}" for i in range(N)]


# Besides order and length: a payload whose record_id is not a token, or repeats another row's, is
# refused here too, in the last window as in the first, so the link stage does not lean on the
# payload's own validation having run.
DAMAGE = {
    "reordered": lambda p: p.reverse(),
    "shorter": lambda p: p.head(N - 1),
    "not_a_token": lambda p: p.with_columns(pl.when(pl.int_range(pl.len()) == N - 1).then(pl.lit("GP-0000123")).otherwise("record_id").alias("record_id")),
    "repeated": lambda p: p.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.col("record_id").shift(1)).otherwise("record_id").alias("record_id")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_payload_out_of_step_with_the_record_blocks_is_refused(plan, damage):
    DAMAGE[damage](pl.read_parquet(plan.payloads["gp_events"])).write_parquet(plan.payloads["gp_events"])
    with pytest.raises(PipelineError, match="do not hold the same records in the same order") as err:
        list(stage._windows(plan, "gp_events", facts=True))
    assert "payload" in str(err.value) and "records" in str(err.value)


@pytest.mark.parametrize("keys", [[3, 0, 2, 1], [0, 1, 5, 2], [1, 2, 3, 4], []], ids=["numbered", "gap", "from_one", "empty"])
def test_a_window_finds_its_rows_by_number_as_a_join_would(keys):
    """numbered_lookup gathers by position where the keys are 0..n-1 and joins otherwise; either way
    each window row gets what the left join gives it, nulls and unknown keys included, in its order."""
    table = pl.DataFrame({"k": keys, "v": [f"v{k}" for k in keys], "w": [float(k) for k in keys]}, schema={"k": pl.Int64, "v": pl.String, "w": pl.Float64})
    window = pl.DataFrame({"k": [2, None, 0, 9, 3, 2, -1, 1, 4, 5]}, schema={"k": pl.Int64})
    expected = window.join(table, on="k", how="left", maintain_order="left")
    assert stage.numbered_lookup(table, "k")(window).equals(expected)
