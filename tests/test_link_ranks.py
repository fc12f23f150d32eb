"""Spec tests for deterministic linkage: small tables written out, the expected link beside each record.

Token values here are short stand-ins ("n1" for an NHS-number token, ...): the rules only compare
tokens for equality, so readable stand-ins test exactly the same logic. The tables give each
identifier's stand-in; `frame` joins them into the composite tokens the ranks compare (token spec v2:
tok_rank1..5, tok_nhs_dob and its swap), as pseudonymisation does, a composite being null when a part is.
"""

import polars as pl
import pytest

from pipeline.link.deterministic import link_deterministic

PARTS = ["nhs", "dob", "dob_ym", "swap", "sex", "postcode"]


def _joined(*parts: str) -> pl.Expr:
    return pl.concat_str([pl.col(p) for p in parts], separator="|", ignore_nulls=False)


def frame(key: str, rows: list[tuple]) -> pl.LazyFrame:
    """The composite tokens of rows of identifier stand-ins (a swap of None: the date has none)."""
    parts = pl.DataFrame(rows, schema={c: pl.String for c in [key, *PARTS]}, orient="row")
    return parts.lazy().select(
        key,
        pl.col("nhs").alias("tok_nhs"),
        _joined("nhs", "dob").alias("tok_nhs_dob"),
        pl.when(pl.col("swap").is_not_null()).then(_joined("nhs", "swap")).otherwise(_joined("nhs", "dob") + "|unswappable").alias("tok_nhs_dob_swap"),
        _joined("nhs", "dob", "sex", "postcode").alias("tok_rank1"),
        _joined("nhs", "dob", "sex").alias("tok_rank2"),
        _joined("nhs", "dob_ym").alias("tok_rank3"),
        _joined("nhs", "postcode").alias("tok_rank4"),
        _joined("dob", "sex", "postcode").alias("tok_rank5"),
    )


PERSONS = frame(
    "participant_id",
    [
        #  id          nhs   dob     dob_ym  swap    sex  postcode
        ("P0000001", "n1", "d1", "ym1", "ds1", "F", "pc1"),
        ("P0000002", "n2", "d2", "ym2", None, "M", "pc2"),
        ("P0000003", None, "d3", "ym3", None, "F", "pc3"),  # no NHS number in the register
        ("P0000004", "n4", "d3", "ym3", None, "F", "pc3"),  # same dob, sex, postcode as P3: rank 5 twins
    ],
)


def link(records: list[tuple]) -> dict[str, tuple]:
    out = link_deterministic(frame("record_id", records), PERSONS).collect()
    return {r["record_id"]: (r["participant_id"], r["rank"], r["conflict"]) for r in out.iter_rows(named=True)}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # record:  id      nhs   dob   dob_ym swap   sex  postcode      -> (participant, rank, conflict)
        (("R1", "n1", "d1", "ym1", "ds1", "F", "pc1"), ("P0000001", "1", False)),  # everything agrees
        (("R2", "n1", "d1", "ym1", "ds1", "F", "pcX"), ("P0000001", "2", False)),  # moved house
        (("R3", "n1", "dX", "ym1", None, "M", "pcX"), ("P0000001", "3", False)),  # day of birth wrong
        (("R4", "n1", "ds1", "ymX", "d1", "F", "pcX"), ("P0000001", "3", False)),  # day and month swapped
        (("R5", "n2", "dX", "ymX", None, None, "pc2"), ("P0000002", "4", False)),  # NHS number + postcode
        (("R6", None, "d2", "ym2", None, "M", "pc2"), ("P0000002", "5", False)),  # no NHS number on record
        (("R7", "n9", "d2", "ym2", None, "M", "pc2"), (None, None, False)),  # rank 5 refused: NHS numbers contradict
        (("R8", None, "d3", "ym3", None, "F", "pc3"), (None, None, True)),  # rank 5 fits P3 and P4: conflict
        (("R9", "n4", "d3", "ym3", None, "F", "pc3"), ("P0000004", "1", False)),  # rank 1 beats the rank 5 twin
        (("R10", None, None, None, None, None, None), (None, None, False)),  # nothing to link on
    ],
)
def test_each_rank_rule(record, expected):
    assert link([record])[record[0]] == expected


def test_every_record_appears_once_and_only_linked_records_have_a_probability():
    records = [("A", "n1", "d1", "ym1", "ds1", "F", "pc1"), ("B", None, None, None, None, None, None)]
    out = link_deterministic(frame("record_id", records), PERSONS).collect().sort("record_id")
    assert out.get_column("record_id").to_list() == ["A", "B"]
    assert out.get_column("match_probability").to_list() == [1.0, None]


def test_a_conflict_is_never_resolved_silently():
    # Two participants share every token a record has at its best rank: the record stays unlinked.
    persons = frame("participant_id", [("P1", "n1", "d1", "ym1", None, "F", "pc1"), ("P2", "n1", "d1", "ym1", None, "F", "pc1")])
    out = link_deterministic(frame("record_id", [("R", "n1", "d1", "ym1", None, "F", "pc1")]), persons).collect()
    assert out.row(0, named=True) == {"record_id": "R", "participant_id": None, "rank": None, "match_probability": None, "conflict": True}
