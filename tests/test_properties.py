"""Properties (Hypothesis) of the pipeline as a whole, beyond the scalar ones of tests/test_crypto.py
(which holds each canonical form idempotent and the vectorised forms equal to the scalar ones):

- normalising an identifier block that is already normalised changes no canonical value, composites
  included, through the vectorised path the pipeline uses;
- tokens are the same across runs, row orders and an extract delivered in parts;
- the link map does not depend on the order of the rows or on how the extracts are split into files,
  for the deterministic ranks on their own and for the whole link stage with its probabilistic step.

Example counts are small: each example of the last property is a pseudonymise-and-link run.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import tempfile
from pathlib import Path

import polars as pl
from conftest import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.crypto import normalise
from pipeline.crypto.keys import LinkageKey, key_id, read_key_file
from pipeline.link.deterministic import link_deterministic
from pipeline.link.stage import DETERMINISTIC_COLUMNS, run_link
from pipeline.pseudonymise import pseudonymise_source, run_consent_gate
from pipeline.zones import blocks_path, link_map_file, persons_file, records_path, scan_record_tokens
from pipeline.pseudonymise.identifiers import TOKEN_COLUMN_NAMES, canonical_forms, tokenise_identifiers
from pipeline.settings import SOURCES, RunConfig

FIXED_KEY = LinkageKey(b"pprl-v1 published TEST key #056.", key_id(b"pprl-v1 published TEST key #056."))  # the published test key
SLOW = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
QUICK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NHS = st.one_of(
    st.none(),
    st.from_regex(r"999[ -]?[0-9]{3}[ -]?[0-9]{4}", fullmatch=True),
    st.sampled_from(["9990000018", "999 000 0026", "99900ABC18", "9999999999"]),
    st.text(max_size=12),
)
NAME = st.one_of(st.none(), st.text(max_size=15), st.sampled_from(["Zoë Ann", "Mary-Jane", "O'Brien", "Dr Sé Ó Conaill", "  smith "]))
POSTCODE = st.one_of(st.none(), st.from_regex(r"[A-Za-z]{1,2}[0-9][0-9A-Za-z]? ?[0-9][A-Za-z]{2}", fullmatch=True), st.text(max_size=9))
IDENTIFIERS = st.fixed_dictionaries(
    {
        "nhs_number": NHS,
        "given_name": NAME,
        "family_name": NAME,
        "date_of_birth": st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2026, 3, 31))),
        "sex": st.one_of(st.none(), st.sampled_from(["F", "M", "U", "f", " male", "2", "X"])),
        "postcode": POSTCODE,
    }
)
SCHEMA = {"row": pl.Int64, "nhs_number": pl.String, "given_name": pl.String, "family_name": pl.String,
          "date_of_birth": pl.Date, "sex": pl.String, "postcode": pl.String}  # fmt: skip


def block(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{"row": i, **r} for i, r in enumerate(rows)], schema=SCHEMA)


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    return canonical_forms(df.lazy()).collect().sort("row")


@given(st.lists(IDENTIFIERS, min_size=1, max_size=25))
@QUICK
def test_normalising_normalised_identifiers_changes_no_canonical_value(rows):
    once = canonical(block(rows))
    # The canonical NHS number, surname, sex and postcode given back as delivered identifiers.
    again = canonical(
        once.select(
            "row", "given_name", "date_of_birth",
            pl.col("tok_nhs").alias("nhs_number"), pl.col("tok_surname").alias("family_name"),
            normalise.sex_expr("sex").alias("sex"), pl.col("tok_postcode").alias("postcode"),
        ).select(list(SCHEMA))
    )  # fmt: skip
    assert again.select(TOKEN_COLUMN_NAMES).equals(once.select(TOKEN_COLUMN_NAMES))


@given(st.lists(IDENTIFIERS, min_size=1, max_size=25), st.randoms(use_true_random=False))
@QUICK
def test_tokens_do_not_depend_on_row_order(rows, rnd):
    df = block(rows)
    order = list(range(df.height))
    rnd.shuffle(order)
    first = tokenise_identifiers(df.lazy(), FIXED_KEY)[0].collect().sort("row")
    shuffled = tokenise_identifiers(df[order].lazy(), FIXED_KEY)[0].collect().sort("row")
    assert shuffled.equals(first)


def _deliver_shuffled(src: Path, raw: Path, datasets: tuple[str, ...], rnd: random.Random, parts: int) -> None:
    """Copy `datasets` from `src` to `raw` with their rows shuffled, as one file or a folder of parts."""
    raw.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        df = pl.read_parquet(src / f"{dataset}.parquet")
        order = list(range(df.height))
        rnd.shuffle(order)
        df = df[order]
        if parts == 1:
            df.write_parquet(raw / f"{dataset}.parquet")
            continue
        cuts = sorted(rnd.sample(range(1, df.height), parts - 1))
        for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, df.height], strict=True)):
            (raw / dataset).mkdir(exist_ok=True)
            df[lo:hi].write_parquet(raw / dataset / f"part-{i:03d}.parquet")


SEEDS = st.integers(0, 2**32 - 1)  # a seed per example: shuffling thousands of rows draws too much from st.randoms


@given(SEEDS, st.integers(1, 4))
@QUICK
def test_a_source_gives_the_same_tokens_whatever_its_row_order_or_parts(reference: Reference, seed, parts):
    rnd = random.Random(seed)
    source = "hospital_ae"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        runs = []
        for name, n in (("whole", 1), ("again", 1), ("shuffled", parts)):
            raw = base / name / "raw"
            if name == "shuffled":
                _deliver_shuffled(reference.raw, raw, (source,), rnd, n)
            else:
                raw.mkdir(parents=True)
                shutil.copyfile(reference.raw / f"{source}.parquet", raw / f"{source}.parquet")
            cfg = RunConfig.from_conf({"raw_dir": str(raw), "work_dir": str(base / name / "work"), "release_label": "p"})
            pseudonymise_source(cfg, FIXED_KEY, source)
            runs.append(cfg.pseudonymised_dir)
        whole, again, shuffled = runs
        for path in (blocks_path, records_path):  # the same input and key, the same bytes
            assert path(whole, source).read_bytes() == path(again, source).read_bytes()
        # Token blocks are numbered by their tokens alone, so row order and parts change only the records' order.
        assert blocks_path(shuffled, source).read_bytes() == blocks_path(whole, source).read_bytes()
        assert pl.read_parquet(records_path(shuffled, source)).sort("record_id").equals(pl.read_parquet(records_path(whole, source)).sort("record_id"))


@given(SEEDS)
@QUICK
def test_deterministic_ranks_do_not_depend_on_row_order(reference: Reference, seed):
    rnd = random.Random(seed)
    d = reference.before_publication.pseudonymised_dir
    persons = pl.read_parquet(persons_file(reference.before_publication), columns=["participant_id", *DETERMINISTIC_COLUMNS])
    records = scan_record_tokens(d, "hospital_apc").select("record_id", *DETERMINISTIC_COLUMNS).collect()

    def shuffled(df: pl.DataFrame) -> pl.DataFrame:
        order = list(range(df.height))
        rnd.shuffle(order)
        return df[order]

    expected = link_deterministic(records.lazy(), persons.lazy()).collect().sort("record_id")
    got = link_deterministic(shuffled(records).lazy(), shuffled(persons).lazy()).collect().sort("record_id")
    assert got.equals(expected)
    assert expected.get_column("rank").drop_nulls().len() > 0


@given(SEEDS, st.integers(1, 3))
@SLOW
def test_the_link_map_does_not_depend_on_row_order_or_file_partitioning(reference: Reference, seed, parts):
    """Every extract shuffled and split into parts, pseudonymised and linked (ranks 1-5 and P): the
    link map holds the uninterrupted reference run's links, record for record. Its rows follow the
    delivered order, as the payload's do (pipeline.zones), so they are compared in record order."""
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        _deliver_shuffled(reference.raw, raw, ("consent_register", "survey", *SOURCES), rnd, parts)
        shutil.copyfile(reference.raw / "postcode_imd.parquet", raw / "postcode_imd.parquet")
        cfg = RunConfig.from_conf({**reference.cfg.to_conf(), "raw_dir": str(raw), "work_dir": str(Path(tmp) / "work")})
        linkage_key = read_key_file(reference.key_file)
        run_consent_gate(cfg, linkage_key)
        for source in SOURCES:
            pseudonymise_source(cfg, linkage_key, source)
        link_map = pl.read_parquet(run_link(cfg))
    reference_map = pl.read_parquet(link_map_file(reference.before_publication))
    assert link_map.sort("source", "record_id").equals(reference_map.sort("source", "record_id"))
