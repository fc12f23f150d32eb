"""`generate`: the whole synthetic delivery, raw extracts plus ground truth, from one seed.

Random streams. Each part draws from its own generator, seeded from (seed, stream, ...) with
numpy's SeedSequence, so parts are independent and reproducible:
    0 population, 1 events (per chunk), 2 identifiers/faults/duplicates (per source and chunk), 3 survey,
    4 register errors (hard profile), 5 providers (each person's, then per source and chunk).
Event draws never depend on the profile, so one seed gives the same people and the same events in
`clean`, `realistic` and `hard`; only the identifiers on the records (and duplicates) differ.

People are processed in chunks of CHUNK_PERSONS (a constant: changing it changes the output), each
chunk's records appended to the extracts, so memory stays flat however many people there are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.contracts import load_contract
from pipeline.errors import SynthSettingsError
from pipeline.synth import events, study
from pipeline.synth import study as synth_study
from pipeline.synth.events import ChunkPeople
from pipeline.synth.extracts import SOURCES, TRUTH_LINK_SCHEMA, consent_register, deliver, postcode_lookup
from pipeline.synth.faults import PersonIdentifiers, register_errors
from pipeline.synth.population import COMPARATOR_LTC_SLOPE, MDT_SELECTION, build_population, truth_persons
from pipeline.synth.profiles import Profile, fault_rates
from pipeline.synth.providers import PersonProviders
from pipeline.synth.rates import EVENT_RATES, NEED
from pipeline.synth.survey import AGEING_PER_YEAR, MDT_FOLLOWUP_GAIN, build_survey
from pipeline.synth.writer import StreamWriter, concatenate, contract_writer, write_contract, write_json, write_plain

CHUNK_PERSONS = 50_000
GENERATOR_VERSION = "1"
MIN_PERSONS = 100


def _chunk_events(rng: np.random.Generator, people: ChunkPeople, mdt_effect: float) -> dict[str, pl.DataFrame]:
    apc = events.hospital_apc(rng, people, EVENT_RATES, mdt_effect)
    return {
        "hospital_apc": apc,
        "hospital_ae": events.hospital_ae(rng, people, EVENT_RATES, apc),
        "hospital_op": events.hospital_op(rng, people, EVENT_RATES),
        "gp_events": events.gp_events(rng, people, EVENT_RATES),
        "social_care": events.social_care(rng, people, EVENT_RATES),
    }


def _iso(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def generate(
    out_dir: Path,
    persons: int,
    seed: int,
    profile: Profile,
    mdt_effect: float = 0.8,
    study: Any = None,
    register_share: float | None = None,
) -> Path:
    """Write `out_dir/raw/<dataset>.parquet` for every input of the pipeline and `out_dir/truth/`.

    raw/: consent_register, survey, hospital_apc, hospital_ae, hospital_op, gp_events, social_care,
    postcode_imd, each following its contract in schemas/.
    truth/ (never read by the pipeline): record_links.parquet (source, record_id, participant_id,
    person_index, is_duplicate, faults), persons.parquet (one row per person) and parameters.json.
    `study` (a pipeline.study.Study; the default study, studies/pioneer.yaml, when None) gives the
    sites, teams, operating models, minimum age, baseline period and calendar. `register_share` is the
    share of people in the consent register (study.arm_share; 0.70 when None): a world of more than
    about 1.3 million people needs a smaller one, as the register's NHS numbers come from the 999 test range.
    The same arguments always give byte-identical files. Returns `out_dir`.
    """
    from pipeline.study import load_study

    with synth_study.configured(study or load_study()):
        return _generate(out_dir, persons, seed, profile, mdt_effect, register_share)


def _generate(out_dir: Path, persons: int, seed: int, profile: Profile, mdt_effect: float, register_share: float | None) -> Path:
    if persons < MIN_PERSONS:
        raise SynthSettingsError(f"persons (--persons) must be at least {MIN_PERSONS}, for every cell of the study design (got {persons})")
    if not isinstance(seed, int) or seed < 0:
        raise SynthSettingsError(f"seed (--seed) must be a non-negative integer (got {seed!r})")
    if not mdt_effect > 0:
        raise SynthSettingsError(f"mdt_effect (--mdt-effect) is a rate ratio and must be positive (got {mdt_effect})")
    if register_share is not None and not 0 < register_share < 1:
        raise SynthSettingsError(f"register_share (--register-share) is a share of people and must lie between 0 and 1 (got {register_share})")
    shares = study.arm_share(register_share)
    faults = fault_rates(profile)
    out_dir = Path(out_dir)
    raw, truth = out_dir / "raw", out_dir / "truth"
    raw.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)

    pop = build_population(seed, persons, faults, shares)
    rows: dict[str, int] = {}
    register, register_faults = register_errors(
        np.random.default_rng(np.random.SeedSequence([seed, 4])), consent_register(pop), faults.register_errors
    )
    rows["consent_register"] = write_contract(register, load_contract("consent_register"), raw / "consent_register.parquet")
    survey = build_survey(seed, pop.persons, faults)
    rows["survey"] = write_contract(survey, load_contract("survey"), raw / "survey.parquet")
    rows["postcode_imd"] = write_contract(postcode_lookup(pop), load_contract("postcode_imd"), raw / "postcode_imd.parquet")

    ids = PersonIdentifiers.of(pop)
    providers = PersonProviders.of(seed, pop.persons.get_column("site"))
    participant_of = pop.persons.get_column("participant_id")
    extract_writers = {s: contract_writer(raw / f"{s}.parquet", load_contract(s)) for s in SOURCES}
    truth_parts = {s: truth / f".record_links.{s}.parquet" for s in SOURCES}
    truth_writers = {s: StreamWriter(truth_parts[s], TRUTH_LINK_SCHEMA) for s in SOURCES}
    next_number = dict.fromkeys(SOURCES, 1)
    try:
        for chunk in range(math.ceil(persons / CHUNK_PERSONS)):
            people = ChunkPeople.of(pop.persons.slice(chunk * CHUNK_PERSONS, CHUNK_PERSONS))
            chunk_events = _chunk_events(np.random.default_rng(np.random.SeedSequence([seed, 1, chunk])), people, mdt_effect)
            for k, source in enumerate(SOURCES):
                rng = np.random.default_rng(np.random.SeedSequence([seed, 2, k, chunk]))
                provider_rng = np.random.default_rng(np.random.SeedSequence([seed, 5, k, chunk]))
                extract, links = deliver(
                    rng, chunk_events[source], source, ids, participant_of, faults, next_number[source], providers, provider_rng
                )
                next_number[source] += extract.height
                extract_writers[source].write(extract)
                truth_writers[source].write(links)
            del chunk_events
    except BaseException:
        for w in [*extract_writers.values(), *truth_writers.values()]:
            w.abort()
        raise
    for source in SOURCES:
        extract_writers[source].close()
        truth_writers[source].close()
        rows[source] = extract_writers[source].rows
    rows["truth_record_links"] = concatenate([truth_parts[s] for s in SOURCES], truth / "record_links.parquet", TRUTH_LINK_SCHEMA)

    persons_truth = truth_persons(pop).join(
        survey.filter(pl.col("wave") == "followup").select("participant_id", pl.lit(True).alias("answered_followup")),
        on="participant_id",
        how="left",
    ).with_columns(pl.col("answered_followup").fill_null(False)).sort("person_index")
    rows["truth_persons"] = write_plain(persons_truth, truth / "persons.parquet")

    write_json(
        {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "persons": persons,
            "profile": profile,
            "mdt_effect": mdt_effect,
            "mdt_effect_meaning": "rate ratio of emergency admissions (methods 2x and 28) after the index date, MDT arm vs no MDT",
            "fault_rates": faults.as_dict(),
            "fault_rates_notes": {
                "nickname": "per record of people whose forename has a familiar form",
                "surname_part": "per record of people with a double-barrelled surname",
                "dob_swap": "per record; applied only where the day is 12 or less and differs from the month",
                "house_move": "per person",
                "register_errors": "per register row, for each kind; at least one of each when above zero",
            },
            "event_rates": EVENT_RATES.as_dict(),
            "need_model": dataclasses.asdict(NEED),
            "selection": {"mdt": MDT_SELECTION, "comparator_ltc_slope": COMPARATOR_LTC_SLOPE, "arm_share": shares},
            "survey": {"mdt_followup_gain": MDT_FOLLOWUP_GAIN, "ageing_per_year": AGEING_PER_YEAR, "followup_response": study.FOLLOWUP_RESPONSE},
            "study": {
                "index_window": [_iso(study.INDEX_START), _iso(study.INDEX_END)],
                "extract_date": _iso(study.EXTRACT_DATE),
                "lookback_days": study.LOOKBACK_DAYS,
                "followup_days": study.FOLLOWUP_DAYS,
                "consent_rate": study.CONSENT_RATE,
                "withdrawal_rate": study.WITHDRAWAL_RATE,
                "withdrawal_last": _iso(study.WITHDRAWAL_LAST),
                "withdrawal_after_extract_share": study.WITHDRAWAL_AFTER_EXTRACT_SHARE,
                "mdts": [list(m) for m in study.MDTS],
            },
            "chunk_persons": CHUNK_PERSONS,
            # Beyond the 999 test range's 909,091 numbers, people outside the register share them
            # (pipeline.synth.identifiers.allocate_nhs_numbers).
            "persons_sharing_an_nhs_number": pop.nhs_shortfall,
            # Participant IDs of each register error (a declined duplicate as "original=duplicate").
            "register_errors": register_faults,
            "rows": rows,
            "library_versions": {"numpy": np.__version__, "polars": pl.__version__, "pyarrow": pa.__version__, "python": platform.python_version()},
        },
        truth / "parameters.json",
    )
    return out_dir
