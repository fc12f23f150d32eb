"""From people and events to the files providers deliver: the consent register, the postcode
lookup, and each service-use extract with identifiers, duplicates and record identifiers.

A provider numbers its records in the order it saw the events, so within a chunk records are ordered
by event date (ties at random) and numbered on from the previous chunk: every extract is sorted by
record_id, and neighbouring records belong to different people.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.contracts import load_contract
from pipeline.synth.faults import PersonIdentifiers, record_identifiers
from pipeline.synth.population import Population
from pipeline.synth.profiles import FaultRates
from pipeline.synth.providers import PersonProviders, blacked_out, record_providers

SOURCES: tuple[str, ...] = ("hospital_apc", "hospital_ae", "hospital_op", "gp_events", "social_care")
RECORD_PREFIX: dict[str, str] = {
    "hospital_apc": "APC", "hospital_ae": "AE", "hospital_op": "OP", "gp_events": "GP", "social_care": "SC",
}  # fmt: skip
MAX_RECORD_NUMBER = 999_999_999  # record_id has nine digits


def consent_register(pop: Population) -> pl.DataFrame:
    """Everyone in the register with their identifiers at index. The register is the evaluation's
    own, carefully kept list: its only fault is a missing NHS number (hard profile)."""
    p = pop.persons.filter(pl.col("in_register"))
    return p.with_columns(
        nhs_number=pl.when(pl.col("register_nhs_missing")).then(None).otherwise(pl.col("nhs_number"))
    ).select(load_contract("consent_register").column_names).sort("participant_id")


def postcode_lookup(pop: Population) -> pl.DataFrame:
    """Every postcode unit of both sites (a superset of those used, as the ONS directory is)."""
    return pop.geography.lookup.select("postcode", "lsoa_code", "imd_decile").sort("postcode")


def deliver(
    rng: np.random.Generator,
    events: pl.DataFrame,
    source: str,
    ids: PersonIdentifiers,
    participant_of: pl.Series,
    faults: FaultRates,
    first_number: int,
    providers: PersonProviders,
    provider_rng: np.random.Generator,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(extract rows, ground-truth rows) for one chunk of one source's events.

    Identifiers with faults first, then each record's provider (drawn from `provider_rng`, so the
    other draws do not depend on it) and the provider blackout, if any; then duplicates (copies of
    the faulty row, as delivered twice), then ordering and record numbers from `first_number`.
    """
    pid = events.get_column("_pid").to_numpy()
    day = events.get_column("_day").to_numpy()
    identified = pl.concat(
        [events, record_identifiers(rng, ids, pid, day, faults, faults.nhs_missing(source))], how="horizontal"
    ).with_columns(provider_code=record_providers(provider_rng, providers, source, pid))
    identified = marked_anonymous(identified, blacked_out(faults.provider_blackout, identified.get_column("provider_code"), day))
    identified = identified.with_columns(is_duplicate=pl.lit(False))
    dup = rng.random(identified.height) < faults.duplicate
    if dup.any():
        identified = pl.concat([identified, identified.filter(pl.Series(dup)).with_columns(is_duplicate=pl.lit(True))])
    order = np.lexsort((rng.random(identified.height), identified.get_column("_day").to_numpy()))
    identified = identified[order]
    last = first_number + identified.height - 1
    if last > MAX_RECORD_NUMBER:
        raise ValueError(f"{source}: more than {MAX_RECORD_NUMBER} records do not fit a nine-digit record_id")
    numbers = pl.int_range(first_number, last + 1, eager=True).cast(pl.String).str.zfill(9)
    identified = identified.with_columns(record_id=RECORD_PREFIX[source] + numbers)
    truth = identified.select(
        pl.lit(source).alias("source"),
        "record_id",
        participant_of.gather(identified.get_column("_pid")).alias("participant_id"),
        pl.col("_pid").cast(pl.Int64).alias("person_index"),
        "is_duplicate",
        "faults",
    )
    return identified.select(load_contract(source).column_names), truth


def marked_anonymous(records: pl.DataFrame, mask: np.ndarray) -> pl.DataFrame:
    """`records` with the rows of `mask` stripped of NHS number, names and date of birth, sex unknown
    (the postcode kept), and `provider_blackout` added to their faults."""
    if not mask.any():
        return records
    hit = pl.lit(pl.Series(mask))
    blank = [pl.when(hit).then(None).otherwise(pl.col(c)).alias(c) for c in ("nhs_number", "given_name", "family_name", "date_of_birth")]
    return records.with_columns(
        *blank,
        sex=pl.when(hit).then(pl.lit("U")).otherwise(pl.col("sex")),
        faults=pl.when(hit).then(pl.concat_str([pl.col("faults"), pl.lit("provider_blackout")], separator=";", ignore_nulls=True)).otherwise(pl.col("faults")),
    )


# Ground truth of every record: whose it is. `faults` lists the injected faults (see faults.py), or null.
TRUTH_LINK_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("record_id", pa.string()),
        ("participant_id", pa.string()),
        ("person_index", pa.int64()),
        ("is_duplicate", pa.bool_()),
        ("faults", pa.string()),
    ]
)
