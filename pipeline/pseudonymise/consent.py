"""The consent gate: the single place that decides who may be linked.

A participant is kept only if they consented to linkage and had not withdrawn on or before the run's
extract date (`consent_decision`). Everyone else is dropped before any token is made, and only
counted. Because every run starts from the consent register as delivered for it, a participant who
withdraws after one release is absent from the next.

    >>> register = pl.DataFrame({"consent_status": ["consented", "declined", "consented"],
    ...     "withdrawal_date": [None, None, dt.date(2026, 1, 5)]})
    >>> register.select(consent_decision(dt.date(2026, 3, 31))).to_series().to_list()
    ['keep', 'declined', 'withdrawn']
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.normalise import postcode_expr
from pipeline.crypto.tokens import study_ids
from pipeline.pseudonymise.identifiers import NO_USABLE_IDENTIFIER, tokenise_identifiers
from pipeline.pseudonymise.inputs import scan_input
from pipeline.pseudonymise.row_rules import DATE_OF_BIRTH
from pipeline.settings import RunConfig

log = logging.getLogger(__name__)

KEEP, DECLINED, WITHDRAWN = "keep", "declined", "withdrawn"
QUARANTINE_REASONS = {
    "no_index_date": "no index date (MDT enrolment date or baseline survey missing)",
    "no_date_of_birth": "no date of birth in the consent register",
    "date_of_birth_implausible": DATE_OF_BIRTH.reason,
    "no_identifier": "no usable identifier",
}


def consent_decision(extract_date: dt.date) -> pl.Expr:
    """'keep', 'declined' or 'withdrawn' for each register row, as of `extract_date`.

    Withdrawn means a withdrawal dated on or before the extract date; a later withdrawal date
    belongs to a later extract, and to the run made from it.
    """
    withdrawn = pl.col("withdrawal_date").is_not_null() & (pl.col("withdrawal_date") <= pl.lit(extract_date))
    return (
        pl.when(pl.col("consent_status") != "consented")
        .then(pl.lit(DECLINED))
        .when(withdrawn)
        .then(pl.lit(WITHDRAWN))
        .otherwise(pl.lit(KEEP))
        .alias("_consent")
    )


def apply_consent_gate(register: pl.DataFrame, extract_date: dt.date) -> tuple[pl.DataFrame, dict[str, int]]:
    """The register rows that may be linked, and the consent counts. Nothing else leaves this function."""
    decided = register.with_columns(consent_decision(extract_date))
    decision = pl.col("_consent")
    counts = decided.select(
        pl.len().alias("in_register"),
        (pl.col("consent_status") == "consented").sum().alias("consented"),
        (decision == DECLINED).sum().alias("declined"),
        (decision == WITHDRAWN).sum().alias("withdrawn"),
        # Kept this run; excluded by any run whose extract date reaches their withdrawal date.
        ((decision == KEEP) & pl.col("withdrawal_date").is_not_null()).sum().alias("withdrawal_dated_after_extract"),
        (decision == KEEP).sum().alias("eligible_for_linkage"),
    ).row(0, named=True)
    return decided.filter(decision == KEEP).drop("_consent"), {k: int(v) for k, v in counts.items()}


def _age_at(dob: pl.Expr, on: pl.Expr) -> pl.Expr:
    """Whole years between two dates (birthdays not yet reached that year do not count)."""
    before_birthday = (on.dt.month() < dob.dt.month()) | (
        (on.dt.month() == dob.dt.month()) & (on.dt.day() < dob.dt.day())
    )
    return (on.dt.year() - dob.dt.year() - before_birthday.cast(pl.Int32)).cast(pl.Int16)


def _imd_lookup(cfg: RunConfig) -> pl.LazyFrame:
    return scan_input(cfg, "postcode_imd").select(
        postcode_expr("postcode").alias("_pc"), ((pl.col("imd_decile") + 1) // 2).cast(pl.Int8).alias("imd_quintile")
    )


def _with_index_date(kept: pl.DataFrame, survey: pl.DataFrame) -> pl.DataFrame:
    """MDT enrolment for the MDT arm, the baseline survey date for comparators."""
    baseline = (
        survey.filter(pl.col("wave") == "baseline")
        .sort("survey_date", "response_id")
        .unique("participant_id", keep="first")
        .select("participant_id", pl.col("survey_date").alias("_baseline_date"))
    )
    index = pl.when(pl.col("arm") == "mdt").then(pl.col("enrolment_date")).otherwise(pl.col("_baseline_date"))
    return kept.join(baseline, on="participant_id", how="left").with_columns(index.alias("index_date"))


def run_consent_gate(cfg: RunConfig, key: LinkageKey) -> Path:
    """Write pseudonymised persons, the consented participants' survey answers and the consent counts."""
    register = scan_input(cfg, "consent_register").collect()
    survey = scan_input(cfg, "survey").collect()
    kept, counts = apply_consent_gate(register, cfg.extract)
    # People the pipeline cannot use go to quarantine in raw/, with a reason, and are counted.
    reason = (
        pl.when(pl.col("index_date").is_null())
        .then(pl.lit(QUARANTINE_REASONS["no_index_date"]))
        .when(pl.col("date_of_birth").is_null())
        .then(pl.lit(QUARANTINE_REASONS["no_date_of_birth"]))
        .when(DATE_OF_BIRTH.broken(cfg.extract))
        .then(pl.lit(DATE_OF_BIRTH.reason))
        .when(NO_USABLE_IDENTIFIER)
        .then(pl.lit(QUARANTINE_REASONS["no_identifier"]))
        .otherwise(None)
    )
    persons = _with_index_date(kept, survey).with_columns(_reason=reason, _canon_pc=postcode_expr("postcode"))
    quarantined = persons.filter(pl.col("_reason").is_not_null())
    # Only now, with declined, withdrawn and quarantined people gone, is anything tokenised.
    tokened, quality = tokenise_identifiers(persons.lazy(), key, keep=pl.col("_reason").is_null())
    good = (
        tokened.collect()
        .join(_imd_lookup(cfg).collect(), left_on="_canon_pc", right_on="_pc", how="left")
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

    _write_quarantine(cfg, quarantined)
    counts.update(_quarantine_counts(quarantined))
    counts["persons_pseudonymised"] = good.height
    counts["identifier_quality"] = quality
    log.info(
        "consent gate: %d in register, %d declined, %d withdrawn, %d kept, %d quarantined",
        counts["in_register"], counts["declined"], counts["withdrawn"], good.height, quarantined.height,
    )  # fmt: skip
    io.write_json({"kid": key.kid, "consent": counts}, out_dir / "consent.json")
    return out_dir / "persons.parquet"


def _write_quarantine(cfg: RunConfig, quarantined: pl.DataFrame) -> None:
    path = cfg.quarantine_dir / "consent_register.parquet"
    if quarantined.height:
        columns = load_contract("consent_register").column_names
        q = quarantined.select(*columns, pl.col("_reason").alias("quarantine_reason")).sort("participant_id")
        io.write_table(q.to_arrow(), path, private=True)  # identifiable rows: 0600 in a 0700 folder
    elif path.exists():
        path.unlink()  # a rerun of the label must not leave the last run's quarantine behind


def _quarantine_counts(quarantined: pl.DataFrame) -> dict[str, Any]:
    reasons = dict(sorted(quarantined.group_by("_reason").len().iter_rows())) if quarantined.height else {}
    return {"quarantined": quarantined.height, "quarantine_reasons": reasons}
