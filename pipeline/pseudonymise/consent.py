"""The consent gate: the single place that decides who may be linked.

A withdrawal excludes the person from every run made after it was received, whatever the extract
date: linking the data again is new processing, which needs consent on the day it is done (UK GDPR
art. 7(3)). `withdrawal_date` is read as the date the withdrawal was received, and the run's date
(`RunConfig.run_date`, today when unset) is what it is compared with. Each register row gets one
decision, the first that applies (`consent_decision`, then `same_person_decision`):

1. a register error, set aside in raw/quarantine/ with its reason: consent or withdrawal dated after
   the run date (not yet received, so the date is wrong), or a withdrawal dated before its consent;
2. declined; 3. withdrawn (received on or before the run date);
4. same person: another row with the same NHS number is not a plain "keep" (declined, withdrawn or
   a register error), and the most restrictive decision wins for all of that person's rows;
5. a register error again when two or more rows with one NHS number all consented: one person
   under two participant IDs would be counted twice and their records could not be told apart,
   so every such row is set aside until the register is corrected (docs/governance.md, Consent);
6. keep.

Everyone not kept is dropped before any token is made, and only counted. Because every run starts
from the consent register as delivered for it, a participant who withdraws after one release is
absent from the next.

    >>> register = pl.DataFrame({"consent_status": ["consented", "declined", "consented", "consented"],
    ...     "consent_date": [dt.date(2025, 1, 2)] * 4,
    ...     "withdrawal_date": [None, None, dt.date(2026, 5, 5), dt.date(2099, 1, 5)]})
    >>> register.select(consent_decision(dt.date(2026, 6, 1))).to_series().to_list()
    ['keep', 'declined', 'withdrawn', 'register_error']
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline import io
from pipeline.contracts import load_contract, to_arrow
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.normalise import nhs_number_expr, postcode_expr
from pipeline.crypto.tokens import KID_METADATA, study_ids, token_file_metadata
from pipeline.errors import PipelineError
from pipeline.pseudonymise.identifiers import NO_USABLE_IDENTIFIER, tokenise_identifiers
from pipeline.pseudonymise.inputs import scan_checked_input
from pipeline.pseudonymise.row_rules import DATE_OF_BIRTH
from pipeline.settings import RunConfig
from pipeline.zones import consent_file, persons_file, quarantine_file, study_persons_file, survey_file

log = logging.getLogger(__name__)

KEEP, DECLINED, WITHDRAWN = "keep", "declined", "withdrawn"
SAME_PERSON, REGISTER_ERROR = "same_person", "register_error"
# Register errors, as the quarantine reason reads, in the order they are checked.
REGISTER_ERRORS = {
    "consent_after_run": "consent dated after the run date",
    "withdrawal_after_run": "withdrawal dated after the run date (it cannot have been received yet)",
    "withdrawal_before_consent": "withdrawal dated before the consent",
    "consented_twice": "NHS number under two or more consented participant IDs",
}
QUARANTINE_REASONS = {
    "no_index_date": "no index date (MDT enrolment date or baseline survey missing)",
    "no_date_of_birth": "no date of birth in the consent register",
    "date_of_birth_implausible": DATE_OF_BIRTH.reason,
    "no_identifier": "no usable identifier",
}


def register_error(run_date: dt.date) -> pl.Expr:
    """The reason a row's own dates are wrong (see REGISTER_ERRORS), or null. Such a row is never
    used: a date that is wrong may be a withdrawal recorded in the wrong place."""
    consent, withdrawal, day = pl.col("consent_date"), pl.col("withdrawal_date"), pl.lit(run_date)
    reasons = REGISTER_ERRORS
    return (
        pl.when(consent > day)
        .then(pl.lit(reasons["consent_after_run"]))
        .when(withdrawal > day)
        .then(pl.lit(reasons["withdrawal_after_run"]))
        .when(withdrawal < consent)
        .then(pl.lit(reasons["withdrawal_before_consent"]))
        .otherwise(None)
    )


def consent_decision(run_date: dt.date) -> pl.Expr:
    """'register_error', 'declined', 'withdrawn' or 'keep' for each register row on its own, as of the
    day of the run. Any recorded withdrawal counts: one dated after the run date is a register error."""
    return (
        pl.when(register_error(run_date).is_not_null())
        .then(pl.lit(REGISTER_ERROR))
        .when(pl.col("consent_status") != "consented")
        .then(pl.lit(DECLINED))
        .when(pl.col("withdrawal_date").is_not_null())
        .then(pl.lit(WITHDRAWN))
        .otherwise(pl.lit(KEEP))
        .alias("_consent")
    )


def same_person_decision() -> pl.Expr:
    """`_consent` with the rows of one person (one canonical NHS number, `_nhs`) put together: a
    decision other than keep on any of their rows excludes them all; two or more kept rows are a
    register error. Rows without a valid NHS number cannot be compared and stand alone."""
    person = pl.col("_nhs")
    decision = pl.col("_consent")
    not_kept_elsewhere = (decision != KEEP).any().over(person)
    kept_rows = (decision == KEEP).sum().over(person)
    return (
        pl.when(decision != KEEP)
        .then(decision)
        .when(person.is_not_null() & not_kept_elsewhere)
        .then(pl.lit(SAME_PERSON))
        .when(person.is_not_null() & (kept_rows > 1))
        .then(pl.lit(REGISTER_ERROR))
        .otherwise(decision)
        .alias("_consent")
    )


def decide_consent(register: pl.DataFrame, run_date: dt.date) -> pl.DataFrame:
    """The register with each row's final decision (`_consent`) and, for a register error, its
    quarantine reason (`_reason`)."""
    twice = pl.when(pl.col("_consent") == REGISTER_ERROR).then(pl.lit(REGISTER_ERRORS["consented_twice"]))
    return (
        register.with_columns(_nhs=nhs_number_expr("nhs_number"), _reason=register_error(run_date))
        .with_columns(consent_decision(run_date))
        .with_columns(same_person_decision())
        .with_columns(_reason=pl.coalesce("_reason", twice))
        .drop("_nhs")
    )


def apply_consent_gate(
    register: pl.DataFrame, extract_date: dt.date, run_date: dt.date
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """(rows that may be linked, register-error rows with their `_reason`, consent counts).
    Nothing else leaves this function."""
    decided = decide_consent(register, run_date)
    decision = pl.col("_consent")
    counts: dict[str, Any] = decided.select(
        pl.len().alias("in_register"),
        (pl.col("consent_status") == "consented").sum().alias("consented"),
        (decision == DECLINED).sum().alias("declined"),
        (decision == WITHDRAWN).sum().alias("withdrawn"),
        # Received after the extract was taken and before the run: excluded all the same.
        ((decision == WITHDRAWN) & (pl.col("withdrawal_date") > pl.lit(extract_date))).sum().alias("withdrawn_after_extract"),
        (decision == SAME_PERSON).sum().alias("same_person_excluded"),
        (decision == KEEP).sum().alias("eligible_for_linkage"),
    ).row(0, named=True)
    counts = {k: int(v) for k, v in counts.items()}
    errors = decided.filter(decision == REGISTER_ERROR)
    found = dict(errors.group_by("_reason").len().iter_rows()) if errors.height else {}
    # Every reason, found or not, so the audit page shows that each check was made.
    counts["register_errors"] = {r: int(found.get(r, 0)) for r in REGISTER_ERRORS.values()}
    kept = decided.filter(decision == KEEP).select(register.columns)
    return kept, errors.select(*register.columns, "_reason"), counts


def resolve_run_date(cfg: RunConfig, today: dt.date | None = None) -> dt.date:
    """The run's date (`run_date`, or today in UTC), refused when it is before the extract date."""
    # The clock is read here only, once per run; `today` is its seam for tests.
    run_date = dt.date.fromisoformat(cfg.run_date) if cfg.run_date else (today or dt.datetime.now(dt.UTC).date())
    if run_date < cfg.extract:
        raise PipelineError(
            f"the run date {run_date.isoformat()} is before extract_date {cfg.extract_date}: a run cannot be made "
            "before its extract was taken; check extract_date (or run_date, when set)"
        )
    return run_date


def _age_at(dob: pl.Expr, on: pl.Expr) -> pl.Expr:
    """Whole years between two dates (birthdays not yet reached that year do not count)."""
    before_birthday = (on.dt.month() < dob.dt.month()) | (
        (on.dt.month() == dob.dt.month()) & (on.dt.day() < dob.dt.day())
    )
    return (on.dt.year() - dob.dt.year() - before_birthday.cast(pl.Int32)).cast(pl.Int16)


def _imd_lookup(cfg: RunConfig) -> pl.LazyFrame:
    return scan_checked_input(cfg, "postcode_imd").select(
        postcode_expr("postcode").alias("_pc"), ((pl.col("imd_decile") + 1) // 2).cast(pl.Int8).alias("imd_quintile")
    )


# Where each index-date rule of a study (pipeline.study.INDEX_DATE_RULES) takes its date from.
INDEX_DATE_COLUMNS: dict[str, str] = {
    "enrolment_date": "enrolment_date", "baseline_survey_date": "_baseline_date", "consent_date": "consent_date",
}  # fmt: skip


def _with_index_date(kept: pl.DataFrame, survey: pl.DataFrame, rules: dict[str, str]) -> pl.DataFrame:
    """Each arm's index date by the study's rule (arms.<arm>.index_date): for Pioneer, MDT enrolment
    for the MDT arm and the baseline survey date for comparators."""
    baseline = (
        survey.filter(pl.col("wave") == "baseline")
        .sort("survey_date", "response_id")
        .unique("participant_id", keep="first")
        .select("participant_id", pl.col("survey_date").alias("_baseline_date"))
    )
    index = pl.when(pl.col("arm") == "mdt").then(pl.col(INDEX_DATE_COLUMNS[rules["mdt"]])).otherwise(
        pl.col(INDEX_DATE_COLUMNS[rules["comparator"]])
    )
    return kept.join(baseline, on="participant_id", how="left").with_columns(index.alias("index_date"))


def run_consent_gate(cfg: RunConfig, key: LinkageKey) -> Path:
    """Write the consented participants' tokens (persons_file) and study IDs with covariates
    (study_persons_file), their survey answers and the consent counts; return the tokens' path."""
    register = scan_checked_input(cfg, "consent_register").collect()
    survey = scan_checked_input(cfg, "survey").collect()
    # Resolved once, here: every withdrawal received by this day is honoured by this run.
    run_date = resolve_run_date(cfg)
    kept, register_errors, counts = apply_consent_gate(register, cfg.extract, run_date)
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
    persons = (
        _with_index_date(kept, survey, dict(cfg.study.index_date))
        .with_columns(_reason=reason, _canon_pc=postcode_expr("postcode"))
        .sort("participant_id")
    )
    quarantined = pl.concat(
        [register_errors, persons.filter(pl.col("_reason").is_not_null()).select(register_errors.columns)]
    )
    # Only now, with declined, withdrawn and quarantined people gone, is anything tokenised: in
    # pieces of participants, in participant_id order (`_tokenised_pieces`).
    tokens, study = load_contract("pseudo_persons"), load_contract("study_persons")
    token_pieces, study_pieces, quality = _tokenised_pieces(cfg, key, persons, tokens, study)
    del persons
    # Two files, so that none holds participant ID, study ID and tokens together (pipeline.zones).
    # The study IDs are derived under the key too, so their file records the key id as well.
    io.write_table(_contiguous(token_pieces, tokens), persons_file(cfg), token_file_metadata(key.kid))
    good = pl.concat(study_pieces, rechunk=True)
    del study_pieces
    io.write_frame(good, study, study_persons_file(cfg), {KID_METADATA: key.kid})

    # The survey answers of kept participants only; survey rows carry no direct identifier.
    survey_out = survey.join(good.select("participant_id"), on="participant_id", how="semi").sort("response_id")
    io.write_frame(survey_out, load_contract("survey"), survey_file(cfg))

    _write_quarantine(cfg, quarantined)
    counts.update(_quarantine_counts(quarantined))
    counts["persons_pseudonymised"] = good.height
    counts["identifier_quality"] = quality
    log.info(
        "consent gate: %d in register, %d declined, %d withdrawn (%d after the extract date), %d same person, "
        "%d register errors, %d kept, %d quarantined",
        counts["in_register"], counts["declined"], counts["withdrawn"], counts["withdrawn_after_extract"],
        counts["same_person_excluded"], register_errors.height, good.height, quarantined.height,
    )  # fmt: skip
    # The run date differs from run to run, so it stays outside the counts that go into the manifest.
    io.write_json({"kid": key.kid, "run_date": run_date.isoformat(), "consent": counts}, consent_file(cfg))
    return persons_file(cfg)


# Participants tokenised at once by the consent gate (`_tokenised_pieces`): the memory of the
# tokenising (identifier blocks, canonical forms, tokens as strings) is a piece's, not the register's.
# Each piece works out its distinct names' canonical forms and near-miss fragments in Python again,
# so small pieces repeat that work: the 1M world's kept participants (about 570,000) took 32.0 CPU s in
# pieces of 16,384, 27.2 s in pieces of 65,536 (20 MB more at the peak) and 26.6 s in pieces of
# 131,072 (185 MB more), of a peak of 2.7 GB that is mostly the register read whole.
CONSENT_PIECE_ROWS = 65_536


def _tokenised_pieces(
    cfg: RunConfig, key: LinkageKey, persons: pl.DataFrame, tokens: Any, study: Any
) -> tuple[list[pa.Table], list[pl.DataFrame], dict[str, int]]:
    """(the kept participants' token rows as Arrow tables in `tokens`' schema, their study rows in
    `study`'s columns, identifier-quality counts over every row of `persons`), made a piece of
    CONSENT_PIECE_ROWS participants at a time from `persons` sorted by participant_id.

    A token depends only on its own canonical value and a study ID only on its own participant ID,
    so a piece's rows are those the whole register would give, and the quality counts (sums over
    rows) add up. What is held across pieces is their output, in Arrow's layout of the file.
    """
    imd = _imd_lookup(cfg).collect()
    token_pieces: list[pa.Table] = []
    study_pieces: list[pl.DataFrame] = []
    quality: dict[str, int] | None = None
    # An empty register still gives one (empty) piece, so the quality counts are there, as zeros.
    for offset in range(0, max(persons.height, 1), CONSENT_PIECE_ROWS):
        piece = persons.slice(offset, CONSENT_PIECE_ROWS)
        tokened, counts = tokenise_identifiers(piece.lazy(), key, keep=pl.col("_reason").is_null())
        quality = counts if quality is None else {k: quality[k] + counts[k] for k in quality}
        good = (
            tokened.collect()
            .join(imd, left_on="_canon_pc", right_on="_pc", how="left")
            .with_columns(age_at_index=_age_at(pl.col("date_of_birth"), pl.col("index_date")))
            .sort("participant_id")
        )
        good = good.with_columns(
            study_id=pl.Series(study_ids(key, cfg.release_label, good.get_column("participant_id").to_list()), dtype=pl.String)
        )
        # Copied into Arrow's own compact buffers: an exported column may keep a whole buffer of the
        # piece's working frames alive (strings viewed, not copied), and across pieces that adds up.
        table = to_arrow(good.select(tokens.column_names), tokens)
        token_pieces.append(pa.Table.from_arrays([pa.concat_arrays(c.chunks) for c in table.columns], schema=table.schema))
        study_pieces.append(good.select(study.column_names))
        del table, good, tokened
    assert quality is not None
    return token_pieces, study_pieces, quality


def _contiguous(pieces: list[pa.Table], contract: Any) -> pa.Table:
    """The pieces as one table of one chunk per column, as a frame made whole gives `io.write_table`
    (the Parquet writer's pages, and so the file's bytes, follow the chunks). The list is emptied and
    the pieces joined a column at a time, each column's pieces released once joined, so at most one
    column is held twice."""
    tables = list(pieces)
    pieces.clear()
    schema = contract.arrow_schema()
    columns = []
    for field in schema:
        chunks = [chunk for table in tables for chunk in table.column(field.name).chunks]
        columns.append(pa.concat_arrays(chunks) if chunks else pa.array([], field.type))
        del chunks
        tables = [table.drop_columns([field.name]) for table in tables]
    return pa.Table.from_arrays(columns, schema=schema)

def _write_quarantine(cfg: RunConfig, quarantined: pl.DataFrame) -> None:
    path = quarantine_file(cfg, "consent_register")
    if quarantined.height:
        columns = load_contract("consent_register").column_names
        q = quarantined.select(*columns, pl.col("_reason").alias("quarantine_reason")).sort("participant_id")
        io.write_table(q.to_arrow(), path, private=True)  # identifiable rows: 0600 in a 0700 folder
    elif path.exists():
        path.unlink()  # a rerun of the label must not leave the last run's quarantine behind


def _quarantine_counts(quarantined: pl.DataFrame) -> dict[str, Any]:
    reasons = dict(sorted(quarantined.group_by("_reason").len().iter_rows())) if quarantined.height else {}
    return {"quarantined": quarantined.height, "quarantine_reasons": reasons}
