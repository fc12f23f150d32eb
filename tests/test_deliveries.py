"""Deliveries in providers' layouts (pipeline.deliveries): the mapping's rules reported by file, column
and rule without a value, and the same people through the shipped mappings giving the same release."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import RELIABILITY_LABEL, release_bytes

from pipeline.contracts import check_file, load_contract
from pipeline.deliveries.delivery import load_deliveries, scan_delivery
from pipeline.deliveries.mapping import MAPPINGS_DIR, load_mapping
from pipeline.errors import ContractError
from pipeline.settings import SOURCES

# One HES APC delivery of three admissions, written out as a provider would send it.
HES_APC_CSV = """EPIKEY,NEWNHSNO,FORENAME,SURNAME,DOB,SEX,HOMEADD,ADMIDATE,DISDATE,ADMIMETH,PROCODE
1,999 000 0018,Ann,Smith,01/02/1950,2,QA1 1AA,03/04/2022,05/04/2022,21,RXX01
2,999-000-0026,Bob,Jones,11/12/1949,1,QA1 1AB,13/04/2022,,11,RXX01
3,,Cat,Brown,21/06/1951,9,QA1 1AC,23/04/2022,24/04/2022,2A,RXX01
"""


def _deliver(tmp_path: Path, text: str, name: str = "hes_apc.csv", fmt: str = "csv", mapping: str = "hes_apc") -> Path:
    (tmp_path / name).write_text(text)
    deliveries = tmp_path / "deliveries.yaml"
    deliveries.write_text(f"deliveries:\n  hospital_apc: {{path: {name}, format: {fmt}, mapping: {mapping}}}\n")
    return deliveries


def _scan(deliveries: Path) -> pl.DataFrame:
    (delivery,) = load_deliveries(deliveries, SOURCES).values()
    return scan_delivery(delivery, load_contract("hospital_apc"), read_all=True).collect()


def test_a_hes_apc_extract_is_read_in_the_contracts_layout(tmp_path) -> None:
    df = _scan(_deliver(tmp_path, HES_APC_CSV))
    assert df.columns == load_contract("hospital_apc").column_names
    assert df.get_column("record_id").to_list() == ["APC000000001", "APC000000002", "APC000000003"]
    assert df.get_column("nhs_number").to_list() == ["9990000018", "9990000026", None]
    assert df.get_column("sex").to_list() == ["F", "M", "U"]
    assert df.get_column("date_of_birth").cast(pl.String).to_list() == ["1950-02-01", "1949-12-11", "1951-06-21"]
    assert df.get_column("discharge_date").cast(pl.String).to_list() == ["2022-04-05", None, "2022-04-24"]


def test_bad_code_date_and_nhs_number_are_named_by_file_column_and_rule_never_by_value(tmp_path) -> None:
    bad = HES_APC_CSV.replace(",2,QA1 1AA", ",7,QA1 1AA").replace("13/04/2022", "2022-04-13").replace("999 000 0018", "999 000 001X")
    deliveries = _deliver(tmp_path, bad)
    with pytest.raises(ContractError) as refused:
        _scan(deliveries)
    found = {(v.file, v.column, v.rule) for v in refused.value.violations}
    file = str(tmp_path / "hes_apc.csv")
    assert found == {
        (file, "SEX", "code list hes_sex"),
        (file, "ADMIDATE", "date dd/mm/yyyy"),
        (file, "NEWNHSNO", "NHS number: 10 digits once spaces and hyphens are removed"),
    }
    message = str(refused.value)
    assert "1 row(s)" in message and "hes_apc v1" in message
    for value in ("001X", "2022-04-13", ",7,", "Ann", "Smith", "QA1 1AA"):
        assert value not in message


def test_a_missing_column_and_a_contract_rule_are_named_in_the_providers_terms(tmp_path) -> None:
    (tmp_path / "typo.yaml").write_text((MAPPINGS_DIR / "hes_apc.yaml").read_text().replace("discharge_date:", "discharge_dat:"))
    with pytest.raises(ContractError) as refused:
        _scan(_deliver(tmp_path, HES_APC_CSV, mapping="typo.yaml"))
    assert [(v.column, v.rule) for v in refused.value.violations] == [("discharge_dat", "contract column")]
    with pytest.raises(ContractError) as refused:
        _scan(_deliver(tmp_path, HES_APC_CSV.replace("ADMIMETH", "ADMISSION_METHOD")))
    assert [(v.column, v.rule) for v in refused.value.violations] == [("ADMIMETH", "column present")]
    # 2A is a HES code the contract allows; 2Z is not, and the contract's rule names the provider's column.
    with pytest.raises(ContractError) as refused:
        _scan(_deliver(tmp_path, HES_APC_CSV.replace(",2A,", ",2Z,")))
    assert [(v.column, v.rule) for v in refused.value.violations] == [("ADMIMETH (contract column admission_method)", "allowed values")]
    assert "2Z" not in str(refused.value)


CLD_CSV = """Event_Type,Event_Reference,NHS_Number,First_Name,Last_Name,Date_of_Birth,Gender,Client_Postcode,Service_Type,Event_Start_Date,Event_End_Date,Planned_units_per_week,LA_Code
Service,11,999 000 0018,Ann,Smith,1950-02-01,2,QA1 1AA,Long Term Support: Community,2022-01-01,,about ten,E08000035
Assessment,12,999 000 0018,Ann,Smith,1950-02-01,2,QA1 1AA,,2021-12-01,2021-12-02,,E08000035
Service,13,999 000 0026,Bob,Jones,1949-12-11,1,QA1 1AB,Long Term Support: Nursing Care,2022-02-01,2022-03-01,,E08000035
"""


def test_cld_keeps_services_only_and_names_text_that_is_not_a_number(tmp_path) -> None:
    (tmp_path / "cld.csv").write_text(CLD_CSV.replace("about ten", "10.5"))
    deliveries = tmp_path / "deliveries.yaml"
    deliveries.write_text("deliveries:\n  social_care: {path: cld.csv, mapping: asc_cld}\n")
    (delivery,) = load_deliveries(deliveries, SOURCES).values()
    df = scan_delivery(delivery, load_contract("social_care")).collect()
    assert df.get_column("record_id").to_list() == ["SC000000011", "SC000000013"]
    assert df.get_column("service_type").to_list() == ["home_care", "nursing"]
    assert df.get_column("hours_per_week").to_list() == [10.5, None]
    (tmp_path / "cld.csv").write_text(CLD_CSV)
    with pytest.raises(ContractError) as refused:
        scan_delivery(delivery, load_contract("social_care")).collect()
    assert [(v.column, v.rule) for v in refused.value.violations] == [("Planned_units_per_week", "number (float64)")]
    assert "about ten" not in str(refused.value)
    # A row with more fields than the header (found when every value is read, as check_inputs does):
    # the file is named, its text never quoted.
    (tmp_path / "cld.csv").write_text(CLD_CSV + "Service,14,999 000 0034,Cat,Brown,1950-01-01,2,QA1 1AC,x,y,z,1,2,3,4\n")
    with pytest.raises(ContractError) as refused:
        scan_delivery(delivery, load_contract("social_care"), read_all=True)
    assert [v.rule for v in refused.value.violations] == ["readable csv"]
    assert "Brown" not in str(refused.value)


def test_gzipped_pipe_text_and_parquet_read_the_same(tmp_path) -> None:
    want = _scan(_deliver(tmp_path, HES_APC_CSV))
    piped = tmp_path / "piped"
    piped.mkdir()
    with gzip.open(piped / "hes_apc.txt.gz", "wt") as fh:
        fh.write(HES_APC_CSV.replace(",", "|"))
    (piped / "deliveries.yaml").write_text("deliveries:\n  hospital_apc: {path: hes_apc.txt.gz, format: pipe.gz, mapping: hes_apc}\n")
    assert _scan(piped / "deliveries.yaml").equals(want)
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pl.read_csv(tmp_path / "hes_apc.csv", infer_schema=False).write_parquet(parquet / "hes_apc.parquet")
    (parquet / "deliveries.yaml").write_text("deliveries:\n  hospital_apc: {path: hes_apc.parquet, mapping: hes_apc}\n")
    assert _scan(parquet / "deliveries.yaml").equals(want)
    # `pipeline check --mapping` reads a single file the same way.
    assert check_file(tmp_path / "hes_apc.csv", "hospital_apc", "hes_apc") == 3


def test_a_source_with_fewer_identifiers_links_on_what_it_has_and_says_so(tmp_path) -> None:
    spec = (MAPPINGS_DIR / "hes_apc.yaml").read_text()
    spec = spec.replace("given_name: {from: FORENAME, note: \"not a HES field: the trust's PAS forename\"}", "given_name: {absent: true}")
    spec = spec.replace("family_name: {from: SURNAME, note: \"not a HES field: the trust's PAS surname\"}", "family_name: {absent: true}")
    spec = spec.replace("date_of_birth: {from: DOB, date: dd/mm/yyyy}", "date_of_birth: {from: BIRTH_MONTH, date: yyyy-mm}")
    (tmp_path / "no_names.yaml").write_text(spec)
    text = HES_APC_CSV.replace("FORENAME,SURNAME,DOB", "BIRTH_MONTH")
    text = "\n".join(",".join(r[:2] + [r[4][-4:] + "-" + r[4][3:5]] + r[5:]) for r in (line.split(",") for line in text.splitlines()[1:]))
    header = "EPIKEY,NEWNHSNO,BIRTH_MONTH,SEX,HOMEADD,ADMIDATE,DISDATE,ADMIMETH,PROCODE\n"
    deliveries = _deliver(tmp_path, header + text + "\n", mapping="no_names.yaml")
    df = _scan(deliveries)
    assert df.get_column("given_name").null_count() == df.get_column("date_of_birth").null_count() == 3
    assert df.get_column("nhs_number").null_count() == 1
    (delivery,) = load_deliveries(deliveries, SOURCES).values()
    carried = delivery.record()["identifiers"]
    assert carried == {
        "nhs_number": "carried", "given_name": "absent", "family_name": "absent",
        "date_of_birth": "year and month only", "sex": "carried", "postcode": "carried",
    }  # fmt: skip


def test_the_audit_page_names_a_source_delivered_with_fewer_identifiers() -> None:
    from pipeline.publish.report import render_audit_page

    carried = dict.fromkeys(("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode"), "carried")
    inputs = {
        "hospital_ae": {"file": "ecds.txt", "format": "pipe", "rows": 40, "mapping": {"name": "ecds", "version": "1"}, "identifiers": carried},
        "social_care": {"file": "cld.csv", "format": "csv", "rows": 40, "mapping": {"name": "asc_cld_lite", "version": "2"},
                        "identifiers": {**carried, "given_name": "absent", "date_of_birth": "year and month only"}},
    }  # fmt: skip
    page = render_audit_page({"inputs": inputs, "linkage": {"sources": {}}}, "0" * 64, "/releases/x")
    assert "mapping asc_cld_lite v2): given name (absent), date of birth (year and month only)" in page
    assert "cld.csv (csv, mapping asc_cld_lite v2)" in page
    assert "mapping ecds v1):" not in page  # a source carrying every identifier is not in the note


def test_a_deliveries_file_is_refused_by_entry(tmp_path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text(HES_APC_CSV)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "deliveries.yaml").write_text(
        "deliveries:\n"
        "  hospital_apc: {path: ../outside.csv, format: csv, mapping: hes_apc}\n"
        "  consent_register: {path: c.csv, mapping: hes_apc}\n"
        "  hospital_op: {path: op.xlsx, mapping: hes_op}\n"
        "  hospital_ae: {path: ae.txt, mapping: hes_apc}\n"
    )
    with pytest.raises(ContractError) as refused:
        load_deliveries(inner / "deliveries.yaml", SOURCES)
    assert [v.rule for v in refused.value.violations] == ["inside the deliveries folder", "known source", "known format", "mapping dataset"]


def test_preflight_names_a_missing_delivery_and_a_broken_deliveries_file(tmp_path) -> None:
    from pipeline.errors import PreflightError
    from pipeline.preflight import preflight
    from pipeline.settings import RunConfig

    deliveries = _deliver(tmp_path, HES_APC_CSV)
    (tmp_path / "hes_apc.csv").unlink()
    conf = {"raw_dir": str(tmp_path), "work_dir": str(tmp_path / "work"), "release_label": "r1", "deliveries_file": str(deliveries)}
    with pytest.raises(PreflightError) as refused:
        preflight(RunConfig.from_conf(conf))
    missing = [v for v in refused.value.violations if v.file == str(tmp_path / "hes_apc.csv")]
    assert [v.rule for v in missing] == ["file present"] and "--deliveries" in missing[0].detail
    deliveries.write_text("deliveries:\n  hospital_apc: {path: hes_apc.csv, format: xlsx, mapping: hes_apc}\n")
    with pytest.raises(PreflightError) as refused:
        preflight(RunConfig.from_conf(conf))
    assert "known format" in [v.rule for v in refused.value.violations]


def test_unquoted_codes_and_python_tags_in_a_mapping_are_refused(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("mapping: m\nversion: 1\ndataset: hospital_ae\ncolumns: {department_type: {from: T, codes: t}}\ncodes: {t: {01: '01'}}\n")
    with pytest.raises(ContractError, match="quote every code"):
        load_mapping(path)
    path.write_text("mapping: m\nversion: 1\ndataset: hospital_ae\ncolumns: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ContractError) as refused:
        load_mapping(path)
    assert [v.rule for v in refused.value.violations] == ["plain YAML"]


@pytest.mark.parametrize("mapping_name", sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml")))
def test_every_shipped_mapping_cites_its_dictionary_and_covers_its_contract(mapping_name) -> None:
    mapping = load_mapping(MAPPINGS_DIR / f"{mapping_name}.yaml")
    assert {"dictionary", "version", "url"} <= set(mapping.follows)
    contract = load_contract(mapping.dataset)
    assert set(contract.column_names) <= set(mapping.columns)
    # Every code list gives only values its contract column allows.
    for name, codes in mapping.code_lists.items():
        column = next(c for c, m in mapping.columns.items() if m.codes == name)
        allowed = contract.column(column).allowed
        if allowed is not None:
            assert set(codes.values()) <= set(allowed), f"{mapping_name}: code list {name} maps to values {column} does not allow"


def test_nhs_layout_run_publishes_the_canonical_release(reference, tmp_path) -> None:
    """The reference run's people (300, seed 29) written in providers' layouts as `synth --layout nhs`
    writes them, and run through the shipped mappings: every data file of the release is byte-identical to the
    canonical run's, and its manifest differs only where it records what was delivered."""
    import stage_runner

    from pipeline.synth.native import write_native_layout

    # The reference run's own inputs, so both runs read the very same people.
    shutil.copytree(reference.raw, tmp_path / "input" / "raw")
    deliveries = write_native_layout(tmp_path / "input")
    assert not (tmp_path / "input" / "raw" / "hospital_apc.parquet").exists()
    conf = reference.conf(tmp_path / "work", raw=tmp_path / "input" / "raw", deliveries_file=str(deliveries))
    stage_runner.run_steps(conf)

    release = tmp_path / "work" / "releases" / RELIABILITY_LABEL
    native, canonical = release_bytes(release), release_bytes(reference.release)
    assert sorted(native) == sorted(canonical)
    differing = [name for name in canonical if native[name] != canonical[name]]
    assert differing == ["manifest.json"]
    got, want = (json.loads(b) for b in (native["manifest.json"], canonical["manifest.json"]))
    got_inputs, want_inputs = got.pop("inputs"), want.pop("inputs")
    assert got == want
    for source in SOURCES:
        assert got_inputs[source]["rows"] == want_inputs[source]["rows"]
        assert got_inputs[source]["mapping"]["name"] and got_inputs[source]["format"] != "parquet"
    for dataset in ("consent_register", "survey", "postcode_imd", "unit_costs"):
        assert got_inputs[dataset] == want_inputs[dataset]
    shutil.rmtree(tmp_path / "work")


def test_synth_layout_nhs_writes_native_files_that_check_against_their_mappings(tmp_path, capsys) -> None:
    import yaml

    from pipeline.cli import main

    assert main(["synth", "--out", str(tmp_path), "--persons", "100", "--seed", "5", "--layout", "nhs"]) == 0
    assert "--deliveries" in capsys.readouterr().out
    listed = yaml.safe_load((tmp_path / "deliveries.yaml").read_text())["deliveries"]
    assert sorted(listed) == sorted(SOURCES)
    for source, entry in listed.items():
        assert not (tmp_path / "raw" / f"{source}.parquet").exists()
        assert entry["format"] != "parquet"
        assert main(["check", source, str(tmp_path / entry["path"]), "--mapping", entry["mapping"]]) == 0
    apc = pl.read_csv(tmp_path / "raw" / "hes_apc.csv", infer_schema=False)
    assert apc.columns[:2] == ["EPIKEY", "NEWNHSNO"]
    assert apc.get_column("NEWNHSNO").drop_nulls().str.contains(r"^999 [0-9]{3} [0-9]{4}$").all()  # 3-3-4, with spaces
    assert apc.get_column("SEX").is_in(["1", "2", "9", "0"]).all()
    assert (tmp_path / "raw" / "hes_op.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
