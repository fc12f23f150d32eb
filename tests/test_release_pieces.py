"""Issue 19: stage_release sorts a long release table in pieces of study IDs, with the same bytes."""

from __future__ import annotations

import random

import polars as pl

from pipeline.contracts import Column, Contract
from pipeline.publish import release


def _table(n_people: int, months: int) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    rng = random.Random(19)
    ids = [f"S{rng.getrandbits(64):016x}" for _ in range(n_people)]
    rows = pl.DataFrame({"study_id": ids}).join(pl.DataFrame({"month": list(range(months))}, schema={"month": pl.Int8}), how="cross")
    rows = rows.sample(fraction=1.0, shuffle=True, seed=3).with_columns(units=pl.int_range(pl.len()).cast(pl.Float64))
    return rows.lazy(), pl.DataFrame({"study_id": ids}).lazy()


CONTRACT = Contract(
    name="panel_like", zone="release", description="test", primary_key=("study_id", "month"),
    columns=(
        Column("study_id", "string", False, "key", "study ID"),
        Column("month", "int8", False, "payload", "month"),
        Column("units", "float64", False, "payload", "units"),
    ),
)  # fmt: skip


def test_a_table_sorted_in_pieces_is_byte_for_byte_the_table_sorted_whole(tmp_path, monkeypatch):
    lf, ids = _table(300, 7)
    release._sink_sorted(lf, CONTRACT, tmp_path / "whole.parquet", ids, tmp_path / "scratch")
    monkeypatch.setattr(release, "SORT_PIECE_ROWS", 100)
    release._sink_sorted(lf, CONTRACT, tmp_path / "pieces.parquet", ids, tmp_path / "scratch")
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "pieces.parquet").read_bytes()
    assert not (tmp_path / "scratch").exists()
    out = pl.read_parquet(tmp_path / "pieces.parquet")
    assert out.height == 2100 and out.equals(out.sort("study_id", "month"))
