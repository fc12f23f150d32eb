"""The consent gate: the single place that decides who may be linked.

A participant is kept only if they consented to linkage and had not withdrawn on or before the run's
extract date. Everyone else is dropped before any token is made, and only counted. Because every run
starts from the current consent register, a participant who withdraws after one release is absent
from the next.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.tokens import study_ids
from pipeline.pseudonymise.identifiers import NO_USABLE_IDENTIFIER, identifier_quality, with_tokens
from pipeline.pseudonymise.inputs import scan_input
from pipeline.settings import RunConfig

log = logging.getLogger(__name__)


def consented(register: pl.LazyFrame, extract_date) -> pl.Expr:
    """True for rows that may be linked as of `extract_date`."""
    return (pl.col("consent_status") == "consented") & (
        pl.col("withdrawal_date").is_null() | (pl.col("withdrawal_date") > pl.lit(extract_date))
    )


def _age_at(dob: pl.Expr, on: pl.Expr) -> pl.Expr:
    """Whole years between two dates (birthdays not yet reached that year do not count)."""
    before_birthday = (on.dt.month() < dob.dt.month()) | (
        (on.dt.month() == dob.dt.month()) & (on.dt.day() < dob.dt.day())
    )
    return (on.dt.year() - dob.dt.year() - before_birthday.cast(pl.Int32)).cast(pl.Int16)


def _imd_lookup(cfg: RunConfig) -> pl.LazyFrame:
    from pipeline.crypto.normalise import postcode_expr

    return scan_input(cfg, "postcode_imd").select(
        postcode_expr("postcode").alias("_pc"), ((pl.col("imd_decile") + 1) // 2).cast(pl.Int8).alias("imd_quintile")
    )


def run_consent_gate(cfg: RunConfig, key: LinkageKey) -> Path:
    """Write pseudonymised persons, the consented participants' survey answers and the consent counts."""
    from pipeline.crypto.normalise import postcode_expr

    register = scan_input(cfg, "consent_register").collect()
    survey = scan_input(cfg, "survey").collect()
    extract = cfg.extract
    is_withdrawn = pl.col("withdrawal_date").is_not_null() & (pl.col("withdrawal_date") <= pl.lit(extract))
    counts = register.select(
        pl.len().alias("in_register"),
        (pl.col("consent_status") == "consented").sum().alias("consented"),
        (pl.col("consent_status") == "declined").sum().alias("declined"),
        ((pl.col("consent_status") == "consented") & is_withdrawn).sum().alias("withdrawn"),
    ).row(0, named=True)
    kept = register.filter(consented(register.lazy(), extract))
    counts["eligible_for_linkage"] = kept.height

    baseline = (
        survey.filter(pl.col("wave") == "baseline")
        .sort("survey_date", "response_id")
        .unique("participant_id", keep="first")
        .select("participant_id", pl.col("survey_date").alias("_baseline_date"))
    )
    persons = kept.join(baseline, on="participant_id", how="left").with_columns(
        pl.when(pl.col("arm") == "mdt").then(pl.col("enrolment_date")).otherwise(pl.col("_baseline_date")).alias("index_date")
    )
    # People the pipeline cannot use go to quarantine in raw/, with a reason, and are counted.
    persons = persons.with_columns(_canon_pc=postcode_expr("postcode"))
    tokened = with_tokens(persons.lazy(), key).collect()
    reason = (
        pl.when(pl.col("index_date").is_null())
        .then(pl.lit("no index date (MDT enrolment date or baseline survey missing)"))
        .when(pl.col("date_of_birth").is_null())
        .then(pl.lit("no date of birth in the consent register"))
        .when(NO_USABLE_IDENTIFIER)
        .then(pl.lit("no usable identifier"))
        .otherwise(None)
    )
    tokened = tokened.with_columns(_reason=reason)
    quarantined = tokened.filter(pl.col("_reason").is_not_null())
    good = tokened.filter(pl.col("_reason").is_null())

    good = (
        good.join(_imd_lookup(cfg).collect(), left_on="_canon_pc", right_on="_pc", how="left")
        .with_columns(age_at_index=_age_at(pl.col("date_of_birth"), pl.col("index_date")))
        .sort("participant_id")
    )
    good = good.with_columns(
        study_id=pl.Series(study_ids(key, cfg.release_label, good.get_column("participant_id").to_list()), dtype=pl.String)
    )
    contract = load_contract("pseudo_persons")
    out_dir = cfg.pseudonymised_dir
    io.write_frame(good.select(contract.column_names), contract, out_dir / "persons.parquet", {"pprl_kid": key.kid})

    # The survey answers of kept participants only; survey rows carry no direct identifier.
    survey_out = survey.join(good.select("participant_id"), on="participant_id", how="semi").sort("response_id")
    io.write_frame(survey_out, load_contract("survey"), out_dir / "survey.parquet")

    if quarantined.height:
        register_contract = load_contract("consent_register")
        q = quarantined.select(*register_contract.column_names, pl.col("_reason").alias("quarantine_reason"))
        io.write_table(q.to_arrow(), cfg.quarantine_dir / "consent_register.parquet")
    counts["quarantined"] = quarantined.height
    counts["quarantine_reasons"] = dict(
        sorted(quarantined.group_by("_reason").len().iter_rows()) if quarantined.height else []
    )
    counts["persons_pseudonymised"] = good.height
    counts["identifier_quality"] = identifier_quality(kept.lazy())
    log.info("consent gate: %d in register, %d kept, %d quarantined", counts["in_register"], good.height, quarantined.height)
    io.write_json({"kid": key.kid, "consent": counts}, out_dir / "consent.json")
    return out_dir / "persons.parquet"

