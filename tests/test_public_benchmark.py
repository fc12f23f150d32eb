"""The public-data part of bench/linkage_quality.py (bench/public_linkage.py): the FEBRL data load
offline with their ground truth, the postcode map keeps equality, and on the development set (FEBRL3)
token linkage is within half an F1 point of plaintext Splink at equal precision (issue 20).

The last test runs both models on 2,000 participants and 3,000 records (about 25 s on two cores):
it is the one check that the token model keeps up with plaintext on data the project did not make.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import public_linkage as pub  # noqa: E402

from pipeline.crypto.normalise import canonical_postcode  # noqa: E402


def test_four_digit_postcodes_map_one_to_one_onto_canonical_uk_units():
    codes = pl.Series("pc", [f"{i:04d}" for i in range(10_000)] + ["123", "12345", None])
    mapped = pl.DataFrame({"pc": codes}).select(pub.uk_form(pl.col("pc"))).to_series().to_list()
    units = mapped[:10_000]
    assert len(set(units)) == 10_000
    assert all(canonical_postcode(u) == u for u in units)
    assert mapped[10_000:] == [None, None, None]
    # The first two digits are the district, the first three the sector.
    assert units[4223] == "Q422AD" and units[4223][:-3] == units[4299][:-3] != units[4323][:-3]


@pytest.mark.parametrize(("name", "participants", "records"), [("febrl1", 500, 500), ("febrl3", 2000, 3000), ("febrl4", 5000, 5000)])
def test_febrl_loads_offline_with_every_duplicate_pointing_at_an_original(name, participants, records):
    p, r = pub.load(name)
    assert (p.height, r.height) == (participants, records)
    assert r.join(p, on="person", how="anti").height == 0
    assert p.get_column("person").is_unique().all()
    assert set(pub.DEVELOPMENT).isdisjoint(pub.HELD_OUT) and set(pub.DEVELOPMENT) | set(pub.HELD_OUT) == set(pub.DATA_SETS)


def test_recall_at_precision_takes_the_best_recall_at_that_precision_or_better():
    curve = [
        {"threshold": 0.5, "precision": 0.98, "recall": 0.99},
        {"threshold": 0.7, "precision": 1.0, "recall": 0.95},
        {"threshold": 0.9, "precision": 1.0, "recall": 0.90},
    ]
    assert pub.recall_at_precision(curve, 1.0)["threshold"] == 0.7
    assert pub.recall_at_precision(curve, 0.97)["threshold"] == 0.5
    assert pub.recall_at_precision(curve[1:], 1.01) is None


def test_tokens_are_within_half_an_f1_point_of_plaintext_splink_on_the_development_set(tmp_path):
    (res,) = pub.run(pub.DEVELOPMENT, tmp_path, log=lambda *a: None)
    tokens = res["methods"]["tokens"]["at_threshold"]
    assert res["blocking_recall_ceiling"] >= 0.99, res["blocking_recall_ceiling"]
    assert tokens["precision"] >= 0.995, tokens
    assert res["f1_points_behind_plaintext_at_equal_precision"] <= 0.5, res
