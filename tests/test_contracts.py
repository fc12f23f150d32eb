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
    mapping.write_text("dataset: hospital_apc\ncolumns:\n  EPIKEY: record_id\n  ADMIMETH: admission_method\n")
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
