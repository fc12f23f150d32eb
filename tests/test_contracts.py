"""Contracts: every schema loads, round-trips through Parquet, and a bad file gets every violation
reported together, naming file, column and rule, never a value."""

import datetime as dt

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import io
from pipeline.contracts import all_contract_names, check_file, load_contract, render_dictionary_markdown
from pipeline.errors import ContractError

SECRET_VALUE = "9990000018"  # a test-range NHS number that must never appear in a message


def apc_frame(**overrides) -> pl.DataFrame:
    row = {
        "record_id": "APC000000001",
        "nhs_number": SECRET_VALUE,
        "given_name": "Ada",
        "family_name": "Lovelace",
        "date_of_birth": dt.date(1950, 1, 2),
        "sex": "F",
        "postcode": "LS1 4AB",
        "admission_date": dt.date(2024, 1, 1),
        "discharge_date": dt.date(2024, 1, 3),
        "admission_method": "21",
        "provider_code": "ZZ101",
    }
    row.update(overrides)
    return pl.DataFrame([row])


@pytest.mark.parametrize("name", all_contract_names())
def test_every_contract_round_trips_through_parquet(name, tmp_path):
    contract = load_contract(name)
    schema = contract.arrow_schema()
    assert schema.names == contract.column_names
    assert all(f.metadata[b"description"] for f in schema)
    empty = pl.DataFrame(schema=contract.polars_schema())
    path = io.write_frame(empty, contract, tmp_path / f"{name}.parquet")
    assert pq.read_schema(path).names == contract.column_names
    assert check_file(path, contract) == 0


def test_a_good_file_passes(tmp_path):
    path = io.write_frame(apc_frame(), load_contract("hospital_apc"), tmp_path / "apc.parquet")
    assert check_file(path, "hospital_apc") == 1


def test_all_value_violations_are_reported_together_without_values(tmp_path):
    df = apc_frame(admission_method="ZZ", record_id=" padded-id", sex="X")
    path = tmp_path / "apc.parquet"
    df.write_parquet(path)
    with pytest.raises(ContractError) as err:
        check_file(path, "hospital_apc")
    rules = {(v.column, v.rule.split(" ")[0]) for v in err.value.violations}
    assert rules == {("admission_method", "allowed"), ("record_id", "pattern"), ("sex", "allowed")}
    message = str(err.value)
    assert "apc.parquet" in message and "admission_method" in message
    for value in ("ZZ", "bad-id", SECRET_VALUE, "Lovelace"):
        assert value not in message


def test_missing_and_extra_columns_and_wrong_types_are_named(tmp_path):
    df = apc_frame().drop("admission_method").with_columns(pl.col("admission_date").cast(pl.String), extra=pl.lit(1))
    path = tmp_path / "apc.parquet"
    df.write_parquet(path)
    with pytest.raises(ContractError) as err:
        check_file(path, "hospital_apc")
    found = {(v.column, v.rule) for v in err.value.violations}
    assert ("admission_method", "column present") in found
    assert ("admission_date", "type date") in found
    assert ("extra", "declared column") in found


def test_a_provider_mapping_renames_columns_without_code(tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text("mapping: m\nversion: 1\ndataset: hospital_apc\ncolumns:\n  record_id: EPIKEY\n  admission_method: ADMIMETH\n")
    df = apc_frame().rename({"record_id": "EPIKEY", "admission_method": "ADMIMETH"})
    path = tmp_path / "apc.parquet"
    df.write_parquet(path)
    assert check_file(path, "hospital_apc", mapping) == 1


def test_not_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "apc.parquet"
    path.write_text("record_id,nhs_number\nAPC1,9990000018\n")
    with pytest.raises(ContractError, match="not valid Parquet"):
        check_file(path, "hospital_apc")


def test_data_dictionary_lists_every_column_with_type_and_description():
    text = render_dictionary_markdown([load_contract("cohort")])
    for c in load_contract("cohort").columns:
        assert f"| `{c.name}` | {c.type} |" in text
        assert c.description in text


# One integer type per kind of value in the release tables (pipeline.contracts.TYPE_POLICY): points of a
# marked scale are named here; every other integer column is a count.
SCALE_POINTS_INT8 = {"month", "imd_quintile"}
EQ_VAS_INT16 = {"eq_vas", "baseline_eq_vas"}


def _release_contracts():
    return [c for c in map(load_contract, all_contract_names()) if c.zone == "release"]


def test_release_tables_use_one_type_per_kind_of_value():
    wrong = []
    for ct in _release_contracts():
        for c in ct.columns:
            if not c.type.startswith("int"):
                continue
            scale = c.name in SCALE_POINTS_INT8 or c.name.startswith(("eq5d_", "ascot_"))
            expected = "int16" if c.name in EQ_VAS_INT16 else "int8" if scale else "int32"
            if c.type != expected:
                wrong.append(f"{ct.name}.{c.name}: {c.type}, not {expected}")
    assert wrong == []


def test_a_column_name_has_one_type_in_every_release_table():
    types: dict[str, set[tuple[str, str]]] = {}
    for ct in _release_contracts():
        for c in ct.columns:
            types.setdefault(c.name, set()).add((c.type, ct.name))
    assert {name: found for name, found in types.items() if len({t for t, _ in found}) > 1} == {}
    # The same measure under another name: the baseline copy in cohort has the outcome's type.
    cohort, outcomes = load_contract("cohort"), load_contract("outcomes")
    for name in ("eq_vas", "eq5d_index", "n_ltc"):
        assert cohort.column(f"baseline_{name}" if name != "n_ltc" else name).type == outcomes.column(name).type


def test_counts_in_panel_and_cohort_are_whole_numbers_and_fractional_quantities_are_not():
    panel = load_contract("panel")
    assert panel.column("emergency_admission").type == "int32" and panel.column("bed_day").type == "int32"
    assert panel.column("home_care_hour").type == "float64" and load_contract("service_use").column("units").type == "float64"
    for name in ("baseline_emergency_admissions", "baseline_bed_days", "baseline_gp_consultations"):
        assert load_contract("cohort").column(name).type == "int32"


def test_the_data_dictionary_states_the_type_policy_and_each_tables_caveats():
    text = render_dictionary_markdown(_release_contracts())
    assert "Types: one per kind of value" in text and "`int16` for EQ VAS" in text
    assert "Caveats:" in text and "attrition bias" in text
    assert all(ct.caveats for ct in _release_contracts() if ct.name in ("cohort", "outcomes", "service_use", "panel", "matches", "balance"))


@pytest.mark.parametrize(("window", "piece"), [(None, None), (3, 1_000_000), (3, 4), (1, 1)])
def test_a_file_checked_in_windows_and_hash_partitions_gives_the_whole_files_counts(tmp_path, monkeypatch, window, piece):
    """Issue 19: a Parquet input is checked in row windows, its unique columns in hash partitions
    (bounded memory); the violations, counts included, are those of one pass over the whole file."""
    import pipeline.contracts as contracts
    import pipeline.repeats as repeats

    if piece is not None:
        monkeypatch.setattr(contracts, "CHECK_WINDOW_ROWS", window)
        monkeypatch.setattr(repeats, "HASHES_PER_BUCKET", piece)
    ids = ["APC1", "APC2", "APC1", "APC3", "APC2", "APC2", "APC4", "APC5", "APC6", "APC7", "APC8"]
    df = pl.concat([apc_frame(record_id=r, sex="X" if i % 4 == 0 else "F") for i, r in enumerate(ids)])
    path = tmp_path / "apc.parquet"
    df.write_parquet(path, row_group_size=4)
    with pytest.raises(ContractError) as err:
        check_file(path, "hospital_apc")
    found = {(v.column, v.rule): v.detail.split(" ")[0] for v in err.value.violations}
    assert found == {("record_id", "unique"): "3", ("sex", "allowed values"): "3"}
