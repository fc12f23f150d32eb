"""The frequency attack on the pseudonymised zone (token spec v3, docs/token-spec.md section 7).

A token hides its value but not how often it occurs. An attacker who knows how common each value is
in the population (a sex ratio, district sizes, the commonest names) maps the k-th most frequent token
of a column to the k-th most frequent value. Spec v1 stored sex, postcode district and the like as
stand-alone tokens, and this attack decoded them completely. These tests run the attack on every
stand-alone token column of a small synthetic run, and on every fragment of spec v3's near-miss
columns, and check the rule that keeps it from working: a token's field has at least
`MIN_TOKEN_DOMAIN` possible values.
"""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.crypto.keys import LinkageKey, key_id, new_key_file
from pipeline.crypto.tokens import FIELDS, MIN_TOKEN_DOMAIN, field_domain, is_composite, record_token_key, tokenise, tokenise_record_ids
from pipeline.pseudonymise import check_inputs, pseudonymise_source, run_consent_gate
from pipeline.pseudonymise.identifiers import TOKEN_COLUMNS, canonical_forms
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import TOKEN_BLOCK, blocks_path, records_path

FIXED_KEY = b"pprl-v3 public TEST key #005227."  # the published test key of tests/vectors/tokens_v3.json
RECORD_KEY = record_token_key(LinkageKey(FIXED_KEY, key_id(FIXED_KEY)))
IDENTIFIERS = ["nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode"]
STAND_ALONE = [c.name for c in TOKEN_COLUMNS if not is_composite(c.field)]
# Token spec v3's near-miss columns: each row holds a set of fragment tokens.
NEAR = [c.name for c in TOKEN_COLUMNS if c.is_set]
WITH_TRUTH = [*STAND_ALONE, *NEAR]
# The attack "beats chance" when it decodes more rows than guessing the population's commonest value
# for every row does, by more than this share of the rows. Sampling noise at 400 people lets it
# decode a few of the commonest names (a few per cent of rows); a field of a handful of values is
# decoded outright (tok_sex of spec v1: every row, against about 55% by guessing).
MARGIN = 0.05


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    """A synthetic population of 400 people, pseudonymised under the published test key; and the true
    canonical values of a second population, the attacker's knowledge."""
    from pipeline.synth import generate

    base = tmp_path_factory.mktemp("frequency")
    generate(base / "input", persons=400, seed=17, profile="realistic")
    key_file = base / "key.json"
    new_key_file(key_file, random_bytes=FIXED_KEY)
    cfg = RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": "freq", "key_file": str(key_file)}
    )
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    check_inputs(cfg)
    run_consent_gate(cfg, key)
    for source in SOURCES:
        pseudonymise_source(cfg, key, source)
    # What the attacker knows: how common each value is in the population the study draws from, here
    # a second synthetic population of the same area (a census, published name frequencies).
    generate(base / "public", persons=2000, seed=18, profile="clean")
    truth = pl.read_parquet(base / "public" / "truth" / "persons.parquet").select(IDENTIFIERS)
    population = canonical_forms(truth.lazy()).collect()
    return cfg, population


def _token_files(cfg: RunConfig) -> dict[str, pl.DataFrame]:
    """Each token file as written, with the true canonical value behind every token beside it
    (`truth_<column>`): persons.parquet one row per participant, tokens/<source>.parquet one row per
    token block (the file the attacker would read)."""
    raw = cfg.raw
    persons = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet")
    register = canonical_forms(pl.scan_parquet(raw / "consent_register.parquet").select("participant_id", *IDENTIFIERS)).collect()
    out = {"persons": persons.join(register.select("participant_id", *[pl.col(c).alias(f"truth_{c}") for c in WITH_TRUTH]), on="participant_id")}
    for s in SOURCES:
        delivered = canonical_forms(pl.scan_parquet(raw / f"{s}.parquet").select("record_id", *IDENTIFIERS)).collect()
        # The records file knows each record by its keyed record token, not the provider's ID.
        delivered = delivered.with_columns(record_id=tokenise_record_ids(RECORD_KEY, s, delivered.get_column("record_id")))
        truth = (
            pl.read_parquet(records_path(cfg.pseudonymised_dir, s))
            .join(delivered.select("record_id", *[pl.col(c).alias(f"truth_{c}") for c in WITH_TRUTH]), on="record_id")
            .group_by(TOKEN_BLOCK)
            .agg(pl.all().exclude("record_id").first())
        )
        out[s] = pl.read_parquet(blocks_path(cfg.pseudonymised_dir, s)).join(truth, on=TOKEN_BLOCK)
    return out


def rank_attack(tokens: pl.Series, truth: pl.Series, population: pl.Series) -> tuple[float, float]:
    """(share of rows the rank-frequency attack decodes, share decoded by guessing the population's
    commonest value for every row), over the rows with a token.

    The k-th most frequent token is taken for the k-th most frequent value of `population`; ties are
    broken by the token's and the value's own order, which is arbitrary for tokens.
    """
    rows = pl.DataFrame({"token": tokens, "truth": truth}).drop_nulls("token")
    ranked_tokens = rows.get_column("token").value_counts(name="n").sort(["n", "token"], descending=[True, False])
    ranked_values = population.drop_nulls().value_counts(name="n").sort(["n", population.name], descending=[True, False])
    k = min(ranked_tokens.height, ranked_values.height)
    guess = dict(zip(ranked_tokens.get_column("token").head(k), ranked_values.get_column(population.name).head(k), strict=True))
    decoded = sum(guess.get(t) == v for t, v in rows.iter_rows())
    commonest = ranked_values.item(0, population.name)
    by_mode = rows.get_column("truth").eq(commonest).sum()
    return decoded / rows.height, by_mode / rows.height


def test_the_rank_attack_decodes_a_field_of_two_values_completely():
    # The attack itself, on a column like v1's tok_sex: 60 tokens "a" and 40 "b" against a population
    # of 55% F. Every row is decoded, where guessing F for everyone is right for 60%.
    tokens = pl.Series(["a"] * 60 + ["b"] * 40)
    truth = pl.Series(["F"] * 60 + ["M"] * 40)
    assert rank_attack(tokens, truth, pl.Series("v", ["F"] * 55 + ["M"] * 45)) == (1.0, 0.6)


@pytest.mark.parametrize("column", STAND_ALONE)
def test_the_rank_frequency_attack_decodes_no_stand_alone_token_better_than_chance(zone, column):
    cfg, population = zone
    for name, frame in _token_files(cfg).items():
        decoded, by_guessing = rank_attack(frame.get_column(column), frame.get_column(f"truth_{column}"), population.get_column(column))
        assert decoded <= by_guessing + MARGIN, f"{name}.{column}: the attack decodes {decoded:.0%} of rows, guessing {by_guessing:.0%}"


@pytest.mark.parametrize("column", NEAR)
def test_the_rank_frequency_attack_decodes_no_near_miss_fragment_better_than_chance(zone, column):
    # Each fragment token of a row, beside the fragment it was made from (the sets are sorted by token
    # and by fragment, so the pairs are found by tokenising the true fragments under the test key).
    # The attacker ranks fragment tokens against the fragments of the population's values. Salted with
    # an initial, a fragment is one of hundreds of thousands, held by few people each.
    cfg, population = zone
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    field = {c.name: c.field for c in TOKEN_COLUMNS}[column]
    for name, frame in _token_files(cfg).items():
        truth = frame.get_column(f"truth_{column}").explode().drop_nulls().unique()
        pairs = pl.DataFrame({"token": [tokenise(key, field, f) for f in truth], "truth": truth})
        rows = frame.select(pl.col(column).alias("token")).explode("token").drop_nulls().join(pairs, on="token", how="left")
        assert rows.get_column("truth").null_count() == 0, f"{name}.{column}: a fragment token is not the token of a true fragment"
        fragments = population.get_column(column).explode().drop_nulls().alias(column)
        decoded, by_guessing = rank_attack(rows.get_column("token"), rows.get_column("truth"), fragments)
        assert decoded <= by_guessing + MARGIN, f"{name}.{column}: the attack decodes {decoded:.0%} of fragments, guessing {by_guessing:.0%}"


@pytest.mark.parametrize("column", [c.name for c in TOKEN_COLUMNS])
def test_every_token_column_has_at_least_the_minimum_domain(column):
    # A stand-alone token of a field with few values is decoded by its frequency whatever the key
    # (tok_sex of spec v1 had 2). Composite fields count the combinations of their parts.
    field = {c.name: c.field for c in TOKEN_COLUMNS}[column]
    assert field_domain(field) >= MIN_TOKEN_DOMAIN, f"{column} (field {field}) has {field_domain(field)} possible values"


def test_the_domain_rule_refuses_the_fields_v1_had_stand_alone():
    # The table behind the rule, so a field cannot come back as a stand-alone token unnoticed.
    for field in ("sex", "postcode_district", "postcode_sector", "initials", "date_of_birth_ym", "name_soundex"):
        assert field_domain(field) < MIN_TOKEN_DOMAIN, field
    assert all(field_domain(f) >= MIN_TOKEN_DOMAIN for f in FIELDS)
