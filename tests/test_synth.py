"""The synthetic data generator: contracts, reproducibility, study design, and faults only where the
profile puts them. Small populations (2,000 people) keep the whole module to a few seconds."""

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.contracts import check_file
from pipeline.crypto.normalise import canonical_nhs_number, nhs_number_expr
from pipeline.synth import PROFILES, generate
from pipeline.synth.geography import LSOAS_PER_SECTOR, MAX_LSOAS_PER_SECTOR, PERSONS_PER_LSOA, POSTCODES_PER_LSOA, _site_units
from pipeline.synth.identifiers import invalidate, valid_test_numbers

PERSONS = 2000
SEED = 11
RAW = ("consent_register", "survey", "hospital_apc", "hospital_ae", "hospital_op", "gp_events", "social_care", "postcode_imd")
SOURCES = ("hospital_apc", "hospital_ae", "hospital_op", "gp_events", "social_care")
DATE_COLUMN = {
    "hospital_apc": "admission_date", "hospital_ae": "arrival_date", "hospital_op": "appointment_date",
    "gp_events": "event_date", "social_care": "start_date",
}  # fmt: skip
IDENTIFIERS = ("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode")
EXTRACT = dt.date(2026, 3, 31)
WITHDRAWAL_LAST = dt.date(2026, 6, 30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synth")
    out = {p: generate(base / p, PERSONS, SEED, p) for p in ("clean", "realistic", "hard")}
    out["realistic_again"] = generate(base / "realistic_again", PERSONS, SEED, "realistic")
    out["other_seed"] = generate(base / "other_seed", PERSONS, SEED + 1, "realistic")
    return out


def raw(run: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(run / "raw" / f"{name}.parquet")


def truth(run: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(run / "truth" / f"{name}.parquet")


def digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("profile", ["clean", "realistic", "hard"])
@pytest.mark.parametrize("name", RAW)
def test_every_raw_file_follows_its_contract(runs, profile, name):
    assert check_file(runs[profile] / "raw" / f"{name}.parquet", name) > 0


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(runs):
    a, b, c = digests(runs["realistic"]), digests(runs["realistic_again"]), digests(runs["other_seed"])
    assert set(a) == {f"raw/{n}.parquet" for n in RAW} | {"truth/record_links.parquet", "truth/persons.parquet", "truth/parameters.json"}
    assert a == b
    assert all(a[f] != c[f] for f in a)


def test_nhs_numbers_are_test_range_only_and_valid_in_clean(runs):
    for profile in ("clean", "realistic", "hard"):
        for name in ("consent_register", *SOURCES):
            nhs = raw(runs[profile], name).get_column("nhs_number")
            assert nhs.drop_nulls().str.contains(r"^999[0-9]{7}$").all(), (profile, name)
            if profile == "clean":
                assert nhs.null_count() == 0, name
                assert all(canonical_nhs_number(v) == v for v in nhs.unique().to_list()), name
    # Faults make numbers fail Modulus 11 without leaving the test range.
    bad = [str(v) for v in invalidate(np.random.default_rng(0), valid_test_numbers()[::997])]
    assert all(v.startswith("999") and canonical_nhs_number(v) is None for v in bad)
    assert pl.DataFrame({"n": bad}).select(nhs_number_expr("n").is_null().all()).item()


def test_study_design(runs):
    register = raw(runs["realistic"], "consent_register")
    persons = truth(runs["realistic"], "persons")
    mdts = register.filter(pl.col("arm") == "mdt").select("mdt_id", "site", "operating_model").unique()
    assert mdts.height == 11
    assert set(mdts.get_column("site")) == {"site_a", "site_b"}
    per_model = mdts.group_by("operating_model").len()
    assert per_model.height == 4 and per_model.get_column("len").min() >= 2
    assert mdts.filter(pl.col("mdt_id") <= "MDT06").get_column("site").unique().to_list() == ["site_a"]
    comparators = register.filter(pl.col("arm") == "comparator")
    assert comparators.select(pl.col("mdt_id", "operating_model", "enrolment_date").is_null().all()).row(0) == (True, True, True)

    # Arms: roughly 25% MDT, 45% comparators, 30% outside the study.
    share = persons.get_column("arm").fill_null("none").value_counts(normalize=True)
    share = dict(zip(share.get_column("arm"), share.get_column("proportion"), strict=True))
    assert share["mdt"] == pytest.approx(0.25, abs=0.04)
    assert share["comparator"] == pytest.approx(0.45, abs=0.04)

    # Age at index (enrolment for MDT, baseline survey for comparators) from the register's own dates.
    survey = raw(runs["realistic"], "survey")
    baseline = survey.filter(pl.col("wave") == "baseline").select("participant_id", pl.col("survey_date").alias("baseline"))
    reg = register.join(baseline, on="participant_id").with_columns(
        index=pl.when(pl.col("arm") == "mdt").then(pl.col("enrolment_date")).otherwise(pl.col("baseline"))
    )
    dob, on = pl.col("date_of_birth"), pl.col("index")
    age = on.dt.year() - dob.dt.year() - ((on.dt.month() < dob.dt.month()) | ((on.dt.month() == dob.dt.month()) & (on.dt.day() < dob.dt.day()))).cast(pl.Int32)
    ages = reg.select(age.alias("age")).get_column("age")
    assert ages.min() >= 55 and ages.max() <= 100
    assert persons.get_column("age_at_index").min() >= 55
    idx = reg.get_column("index")
    assert idx.min() >= dt.date(2023, 4, 1) and idx.max() <= dt.date(2024, 3, 31)
    # MDT baseline questionnaire within 30 days before enrolment; consent on or before the index date.
    mdt = reg.filter(pl.col("arm") == "mdt")
    lead = (mdt.get_column("enrolment_date") - mdt.get_column("baseline")).dt.total_days()
    assert lead.min() >= 0 and lead.max() <= 30
    assert (reg.get_column("consent_date") <= idx).all()


def test_consent_and_survey(runs):
    register = raw(runs["realistic"], "consent_register")
    survey = raw(runs["realistic"], "survey")
    consented = (register.get_column("consent_status") == "consented").mean()
    assert consented == pytest.approx(0.85, abs=0.04)
    withdrawals = register.get_column("withdrawal_date").drop_nulls()
    assert withdrawals.len() > 0 and (withdrawals <= EXTRACT).any() and (withdrawals > EXTRACT).any()
    # Received by a few months after the extract date, never later: a fixed date before today, so an
    # ordinary register holds no withdrawal dated in the future (only the hard profile's errors do).
    assert withdrawals.max() <= WITHDRAWAL_LAST < dt.date.today()
    late = (withdrawals > EXTRACT).mean()
    assert late == pytest.approx(0.25, abs=0.15)
    withdrawn = register.filter(pl.col("withdrawal_date").is_not_null())
    assert (withdrawn.get_column("withdrawal_date") > withdrawn.get_column("consent_date")).all()
    assert register.get_column("nhs_number").drop_nulls().is_unique().all()
    assert register.filter(pl.col("withdrawal_date").is_not_null()).get_column("consent_status").unique().to_list() == ["consented"]
    # Everyone in the register (decliners too) answers the baseline once; ~80% the follow-up.
    base = survey.filter(pl.col("wave") == "baseline")
    assert sorted(base.get_column("participant_id")) == sorted(register.get_column("participant_id"))
    assert survey.filter(pl.col("wave") == "followup").height / register.height == pytest.approx(0.8, abs=0.05)
    assert survey.get_column("n_ltc").null_count() == 0
    persons = truth(runs["realistic"], "persons").filter(pl.col("in_register"))
    joined = base.join(persons, on="participant_id", suffix="_true")
    assert (joined.get_column("n_ltc") == joined.get_column("n_ltc_true")).all()
    assert raw(runs["clean"], "survey").null_count().sum_horizontal().item() == 0


def test_truth_covers_every_record_exactly_once(runs):
    for profile in ("clean", "hard"):
        links = truth(runs[profile], "record_links")
        assert links.select("source", "record_id").is_unique().all()
        for source in SOURCES:
            ids = raw(runs[profile], source).get_column("record_id")
            assert ids.is_sorted()
            assert links.filter(pl.col("source") == source).get_column("record_id").equals(ids, check_names=False), (profile, source)


def test_events_fall_in_each_persons_window(runs):
    run = runs["realistic"]
    persons = truth(run, "persons").select("person_index", "index_date")
    links = truth(run, "record_links")
    for source, col in DATE_COLUMN.items():
        ev = raw(run, source).join(links, on="record_id").join(persons, on="person_index")
        days = (ev.get_column(col) - ev.get_column("index_date")).dt.total_days()
        assert days.min() >= -730 and days.max() < 730, source
        assert ev.get_column(col).max() <= EXTRACT
    apc = raw(run, "hospital_apc")
    still_in = apc.filter(pl.col("discharge_date").is_null())
    assert (still_in.get_column("admission_date") > EXTRACT - dt.timedelta(days=7)).all()
    assert (apc.get_column("discharge_date") >= apc.get_column("admission_date")).all()


def _records_with_truth(run: Path, source: str) -> pl.DataFrame:
    return raw(run, source).join(truth(run, "record_links"), on="record_id")


def test_clean_records_carry_exact_identifiers_and_no_duplicates(runs):
    run = runs["clean"]
    register = raw(run, "consent_register").select("participant_id", *IDENTIFIERS)
    persons = truth(run, "persons").select("person_index", *IDENTIFIERS)
    for source in SOURCES:
        rec = _records_with_truth(run, source)
        assert not rec.get_column("is_duplicate").any()
        assert rec.get_column("faults").null_count() == rec.height
        in_reg = rec.filter(pl.col("participant_id").is_not_null()).join(register, on="participant_id", suffix="_reg")
        assert in_reg.height == rec.get_column("participant_id").drop_nulls().len()
        others = rec.filter(pl.col("participant_id").is_null()).join(persons, on="person_index", suffix="_reg")
        for frame in (in_reg, others):
            for col in IDENTIFIERS:
                assert (frame.get_column(col) == frame.get_column(f"{col}_reg")).all(), (source, col)


def test_hard_profile_faults(runs):
    run = runs["hard"]
    sc = raw(run, "social_care")
    assert sc.height > 500
    assert sc.get_column("nhs_number").null_count() / sc.height == pytest.approx(0.20, abs=0.05)
    gp = raw(run, "gp_events")
    assert gp.get_column("nhs_number").null_count() / gp.height == pytest.approx(0.03, abs=0.01)
    links = truth(run, "record_links")
    assert links.get_column("is_duplicate").mean() == pytest.approx(PROFILES["hard"].duplicate, rel=0.3)
    # A duplicate is the same event, identifiers included, delivered again under another record_id.
    rec = _records_with_truth(run, "hospital_op")
    payload = [c for c in rec.columns if c not in ("record_id", "is_duplicate", "faults", "source")]
    dups = rec.filter(pl.col("is_duplicate")).select(payload)
    originals = rec.filter(~pl.col("is_duplicate")).select(payload)
    assert dups.join(originals, on=payload, how="anti", nulls_equal=True).height == 0
    # The register is clean apart from ~1% missing NHS numbers; records do carry faults.
    register = raw(run, "consent_register")
    assert register.get_column("sex").is_in(["F", "M"]).all()
    assert 0 < register.get_column("nhs_number").null_count() < 0.03 * register.height
    assert (gp.get_column("sex") == "U").any()
    assert (~gp.get_column("postcode").str.contains(" ")).any()
    faults = links.get_column("faults").drop_nulls().str.split(";").explode().unique().to_list()
    assert set(faults) >= {"nhs_missing", "nhs_invalid", "nickname", "typo_given", "typo_family", "dob_swap", "postcode_moved"}


def test_hard_profile_register_errors(runs):
    """A withdrawal in 2099, one before its consent, and a second participant ID with the same NHS
    number who declined; the clean and realistic registers have none of them."""
    errors = json.loads((runs["hard"] / "truth" / "parameters.json").read_text())["register_errors"]
    register = raw(runs["hard"], "consent_register")
    by_id = {r["participant_id"]: r for r in register.iter_rows(named=True)}
    expected = max(1, round(PROFILES["hard"].register_errors * (register.height - len(errors["same_nhs_number_declined"]))))
    assert {k: len(v) for k, v in errors.items()} == dict.fromkeys(("withdrawal_far_future", "withdrawal_before_consent", "same_nhs_number_declined"), expected)
    for pid in errors["withdrawal_far_future"]:
        assert by_id[pid]["withdrawal_date"].year == 2099 and by_id[pid]["consent_status"] == "consented"
    for pid in errors["withdrawal_before_consent"]:
        assert 1 <= (by_id[pid]["consent_date"] - by_id[pid]["withdrawal_date"]).days <= 60
    for pair in errors["same_nhs_number_declined"]:
        original, duplicate = (by_id[p] for p in pair.split("="))
        assert original["consent_status"] == "consented" and duplicate["consent_status"] == "declined"
        assert duplicate["participant_id"] > original["participant_id"]
        assert {k: v for k, v in duplicate.items() if k not in ("participant_id", "consent_status", "consent_date")} == {
            k: v for k, v in original.items() if k not in ("participant_id", "consent_status", "consent_date")
        }
    for profile in ("clean", "realistic"):
        reg = raw(runs[profile], "consent_register")
        assert reg.get_column("nhs_number").drop_nulls().is_unique().all(), profile
        assert reg.get_column("withdrawal_date").drop_nulls().max() <= WITHDRAWAL_LAST, profile
        assert json.loads((runs[profile] / "truth" / "parameters.json").read_text())["register_errors"] == {}


def test_postcode_lookup_covers_every_postcode_used(runs):
    run = runs["hard"]
    lookup = raw(run, "postcode_imd").get_column("postcode")
    used = pl.concat([raw(run, n).get_column("postcode") for n in ("consent_register", *SOURCES)]).drop_nulls()
    canonical = used.str.to_uppercase().str.replace_all(" ", "")
    assert canonical.is_in(lookup.str.replace_all(" ", "").implode()).all()


@pytest.mark.parametrize("persons", [PERSONS, 1_000_000, 1_650_000])
def test_a_site_of_an_integrated_care_system_fits_its_postcode_area(persons):
    """A site of up to about 3 million people (two sites of an ICS of 3 million: `make bench
    SIZE=xlarge`) gets distinct postcodes in valid form, 50 to an LSOA; sites that fitted before
    keep 4 LSOAs to a sector, so their data is unchanged."""
    units = _site_units(np.random.default_rng(SEED), "a", persons, 0, "QA", 0.0)
    assert units.get_column("postcode").is_unique().all()
    assert units.get_column("postcode").str.contains(r"^QA[1-9][0-9]? [0-9][ABD-HJLNP-UW-Z]{2}$").all()
    per_lsoa = units.group_by("lsoa_index").len().get_column("len")
    assert (per_lsoa == POSTCODES_PER_LSOA).all() and per_lsoa.len() * PERSONS_PER_LSOA >= persons
    sectors = units.with_columns(sector=pl.col("postcode").str.slice(0, pl.col("postcode").str.len_chars() - 2))
    lsoas_per_sector = sectors.group_by("sector").agg(pl.col("lsoa_index").n_unique()).get_column("lsoa_index").max()
    assert lsoas_per_sector == (LSOAS_PER_SECTOR if persons <= 1_000_000 else MAX_LSOAS_PER_SECTOR)
    with pytest.raises(ValueError, match="exceed the synthetic postcode space"):
        _site_units(np.random.default_rng(SEED), "a", 3_200_000, 0, "QA", 0.0)


def test_parameters_record_the_truth(runs):
    params = json.loads((runs["hard"] / "truth" / "parameters.json").read_text())
    assert params["seed"] == SEED and params["persons"] == PERSONS and params["profile"] == "hard"
    assert params["mdt_effect"] == 0.8
    assert params["fault_rates"]["nhs_missing_social_care"] == 0.20
    assert params["event_rates"]["emergency_per_year"] > 0
    assert params["rows"]["truth_record_links"] == sum(params["rows"][s] for s in SOURCES)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        generate(tmp_path, PERSONS, SEED, "messy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mdt_effect"):
        generate(tmp_path, PERSONS, SEED, "clean", mdt_effect=0)


def test_profiles_share_people_and_events(runs):
    """One seed gives the same people and events in every profile; only identifiers (and moves) differ."""
    keep = ["person_index", "participant_id", "arm", "index_date", "date_of_birth", "n_ltc", "nhs_number", "given_name"]
    clean, hard = truth(runs["clean"], "persons"), truth(runs["hard"], "persons")
    assert clean.select(keep).equals(hard.select(keep))
    for source in SOURCES:
        c = _records_with_truth(runs["clean"], source)
        h = _records_with_truth(runs["hard"], source).filter(~pl.col("is_duplicate"))
        assert c.height == h.height, source


def _poisson_rate_ratio(X: np.ndarray, y: np.ndarray) -> float:
    """exp(coefficient of column 1) of a Poisson regression, by iteratively reweighted least squares."""
    b = np.zeros(X.shape[1])
    b[0] = np.log(y.mean())
    for _ in range(50):
        mu = np.exp(X @ b)
        b = np.linalg.solve(X.T @ (X * mu[:, None]), X.T @ (mu * (X @ b + (y - mu) / mu)))
    return float(np.exp(b[1]))


def test_mdt_effect_is_recoverable_after_adjusting_for_observed_selection(tmp_path):
    """Selection depends only on what the pipeline sees (age, conditions, IMD, baseline emergency
    admissions), so adjusting for those recovers the rate ratio, while the crude ratio is confounded."""
    run = generate(tmp_path, 20_000, SEED, "clean", mdt_effect=0.5)
    persons = truth(run, "persons").filter(pl.col("arm").is_not_null())
    apc = _records_with_truth(run, "hospital_apc").join(persons.select("person_index", "index_date"), on="person_index")
    post = (
        apc.filter(pl.col("admission_method").str.starts_with("2"))
        .filter(((pl.col("admission_date") - pl.col("index_date")).dt.total_days()).is_between(0, 364))
        .group_by("person_index")
        .len()
    )
    d = persons.join(post, on="person_index", how="left").with_columns(pl.col("len").fill_null(0)).sort("person_index")
    y = d.get_column("len").to_numpy().astype(float)
    mdt = (d.get_column("arm") == "mdt").to_numpy().astype(float)
    baseline = np.eye(5)[np.minimum(d.get_column("baseline_emergency_12m").to_numpy(), 4)][:, 1:]
    covariates = [d.get_column(c).to_numpy().astype(float) for c in ("age_at_index", "n_ltc", "imd_decile")]
    X = np.column_stack([np.ones(d.height), mdt, *covariates, baseline])
    assert _poisson_rate_ratio(X, y) == pytest.approx(0.5, abs=0.1)
    assert _poisson_rate_ratio(np.column_stack([np.ones(d.height), mdt]), y) > 0.7  # confounded by selection


def test_register_share_sets_the_consent_registers_size(tmp_path):
    """A world of millions needs a smaller register than the default 70%, whose NHS numbers all come
    from the 999 test range; the share is kept and recorded, and the arms keep their proportions."""
    out = generate(tmp_path / "small_register", 4000, SEED, "clean", register_share=0.2)
    persons = truth(out, "persons")
    in_register = persons.filter(pl.col("arm") != "none").height / persons.height
    assert 0.17 < in_register < 0.23
    mdt = persons.filter(pl.col("arm") == "mdt").height / persons.filter(pl.col("arm") != "none").height
    assert 0.30 < mdt < 0.42  # 0.25 / 0.70 of the register, as with the default share
    shares = json.loads((out / "truth" / "parameters.json").read_text())["selection"]["arm_share"]
    assert shares["none"] == pytest.approx(0.8) and shares["mdt"] + shares["comparator"] == pytest.approx(0.2)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"register_share \(--register-share\)"):
            generate(tmp_path / "bad", 4000, SEED, "clean", register_share=bad)


def test_a_register_larger_than_the_test_range_is_refused_naming_the_setting():
    from pipeline.synth.identifiers import allocate_nhs_numbers

    pool = valid_test_numbers().shape[0]
    with pytest.raises(ValueError, match=r"register_share, --register-share"):
        allocate_nhs_numbers(np.random.default_rng(0), np.ones(pool + 1, dtype=bool))


def test_beyond_the_test_range_people_outside_the_register_share_numbers_never_a_participants():
    from pipeline.synth.identifiers import NO_NHS_NUMBER, allocate_nhs_numbers

    pool = valid_test_numbers()
    extra, register = 50_000, 300_000
    priority = np.zeros(pool.shape[0] + extra, dtype=bool)
    priority[np.random.default_rng(1).choice(priority.shape[0], register, replace=False)] = True
    with pytest.warns(UserWarning, match="50000 people outside the study share an NHS number"):
        numbers, short = allocate_nhs_numbers(np.random.default_rng(0), priority)
    assert short == extra
    assert NO_NHS_NUMBER not in numbers and np.isin(numbers, pool).all()
    participants, others = numbers[priority], numbers[~priority]
    assert np.unique(participants).shape[0] == register  # a participant's number is their own
    assert not np.isin(others, participants).any()  # and nobody else's
    assert np.unique(others).shape[0] == pool.shape[0] - register  # every other number is used, some twice

    # With the whole range given to the register, the rest have nothing to share and go without.
    everyone = np.zeros(pool.shape[0] + 10, dtype=bool)
    everyone[: pool.shape[0]] = True
    with pytest.warns(UserWarning, match="have no NHS number on any record"):
        numbers, short = allocate_nhs_numbers(np.random.default_rng(0), everyone)
    assert short == 10 and (numbers[~everyone] == NO_NHS_NUMBER).all()
