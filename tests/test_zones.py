"""The zone layout (pipeline/zones.py) and what a published label keeps.

- Every file of the working zones is declared once, with its contract and the stage that writes it,
  and no other module spells its name.
- Once a label is published its working zones are gone (the attack: an old label's persons file
  joined to a newer label's tokens would re-link people who withdrew in between), also when
  publication was killed before the purge; keeping them takes a reason, which the manifest records.
- A provider's record ID leaves raw/ only as a keyed record token: no file outside raw/ holds one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import stage_runner
from conftest import RELIABILITY_LABEL, RETAIN, Reference, record_tokens

from pipeline import io, tasks
from pipeline.errors import PipelineError
from pipeline.publish.release import PUBLISHING_MARK
from pipeline.settings import SOURCES, RunConfig
from pipeline.validate.suites import validated_contract
from pipeline.zones import WORKING_ZONES, ZONE_FILES, link_map_file, payload_file, persons_file, study_persons_file

REPO = Path(__file__).resolve().parent.parent
CONF = {"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"}


# ---------------------------------------------------------------------------------------------------
# One layout


@pytest.mark.parametrize("name", sorted(ZONE_FILES))
def test_each_zone_file_lies_in_its_zone_with_a_real_contract_and_stage(name) -> None:
    f = ZONE_FILES[name]
    cfg = RunConfig.from_conf(CONF)
    path = f.path(cfg, "gp_events" if f.per_source else None)
    assert path.is_relative_to(cfg.work / f.zone / "r1")
    assert f.stage in tasks.STAGES
    if f.contract is not None:
        assert validated_contract(f.contract_name("gp_events") if f.per_source else f.contract_name()).name


def test_no_other_module_spells_a_zone_file_name() -> None:
    names = {Path(f.relative).name for f in ZONE_FILES.values() if "{source}" not in Path(f.relative).name}
    spelled = re.compile("|".join(re.escape(f'"{n}"') + "|" + re.escape(f"/{n}") for n in sorted(names)))
    found = [
        f"{p.relative_to(REPO)}: {m.group()}"
        for p in sorted((REPO / "pipeline").rglob("*.py"))
        # The synthetic generator's truth/ folder is its own output, not a zone (truth/persons.parquet).
        if p.name != "zones.py" and "synth" not in p.parts
        for m in spelled.finditer(p.read_text())
    ]
    assert found == []


def test_all_parquet_is_written_through_io() -> None:
    writer = re.compile(r"\.write_parquet\(|\.sink_parquet\(|pq\.write_table\(|ParquetWriter\(")
    found = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "pipeline").rglob("*.py"))
        if p.name != "io.py" and "synth" not in p.parts and writer.search(p.read_text())
    ]
    assert found == []


def test_keeping_working_files_needs_a_reason_and_a_reason_needs_keeping() -> None:
    with pytest.raises(PipelineError, match="needs a reason.*--retain-working-files"):
        RunConfig.from_conf({**CONF, "retain_working_files": True})
    with pytest.raises(PipelineError, match="needs a reason"):
        RunConfig.from_conf({**CONF, "retain_working_files": True, "retention_reason": "  "})
    with pytest.raises(PipelineError, match="retain_working_files is not set"):
        RunConfig.from_conf({**CONF, "retention_reason": "audit"})
    assert RunConfig.from_conf({**CONF, "retention_reason": ""}).retention_reason is None
    kept = RunConfig.from_conf({**CONF, **RETAIN})
    assert RunConfig.from_conf(kept.to_conf()) == kept


# ---------------------------------------------------------------------------------------------------
# Study IDs never beside tokens


# participant_id is a `token`-class column (an internal key) and is what joins the two halves of the
# participants; every other token column is a keyed hash (linkage or record token).
JOIN_KEY = "participant_id"


def study_ids_beside_tokens(columns: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(study ID columns, token columns) of a file, given each column's contract class; both are
    non-empty when the file holds study IDs and tokens together."""
    keys = sorted(c for c, cls in columns.items() if cls == "key" or c == "study_id")
    tokens = sorted(c for c, cls in columns.items() if c != JOIN_KEY and (cls == "token" or c.startswith("tok_")))
    return keys, tokens


def test_the_check_finds_a_study_id_beside_a_token() -> None:
    assert study_ids_beside_tokens({"participant_id": "token", "study_id": "key", "tok_nhs": "token"}) == (["study_id"], ["tok_nhs"])
    assert study_ids_beside_tokens({"participant_id": "token", "study_id": "key", "age_at_index": "quasi_identifier"})[1] == []
    assert study_ids_beside_tokens({"participant_id": "token", "tok_nhs": "token"})[0] == []


@pytest.mark.parametrize("name", sorted(n for n, f in ZONE_FILES.items() if f.zone == "pseudonymised" and f.contract))
def test_no_pseudonymised_contract_puts_study_ids_beside_tokens(name) -> None:
    f = ZONE_FILES[name]
    contract = validated_contract(f.contract_name("gp_events") if f.per_source else f.contract_name())
    keys, tokens = study_ids_beside_tokens({c.name: c.column_class for c in contract.columns})
    assert not (keys and tokens), f"{f.relative} holds study IDs {keys} beside tokens {tokens}"


def test_no_pseudonymised_file_holds_study_ids_beside_tokens(reference: Reference) -> None:
    """The attack: one file of the zone read alone turns a released study ID into the person's
    linkage tokens. Every Parquet file the run wrote there is checked, declared or not."""
    folder = reference.before_publication.pseudonymised_dir
    files = sorted(folder.rglob("*.parquet"))
    assert persons_file(reference.before_publication) in files and study_persons_file(reference.before_publication) in files
    for path in files:
        schema = pq.read_schema(path)
        classes = {f.name: (f.metadata or {}).get(b"class", b"").decode() or None for f in schema}
        keys, tokens = study_ids_beside_tokens(classes)
        assert not (keys and tokens), f"{path.relative_to(folder)} holds study IDs {keys} beside tokens {tokens}"
    # The two halves still join: every participant with tokens has a study ID, and no one else.
    ids = pl.read_parquet(study_persons_file(reference.before_publication), columns=[JOIN_KEY])
    assert ids.equals(pl.read_parquet(persons_file(reference.before_publication), columns=[JOIN_KEY]))


# ---------------------------------------------------------------------------------------------------
# Nothing kept longer than needed


def test_a_published_label_keeps_no_working_file(reference: Reference) -> None:
    """The attack needs an old label's persons file and tokens; after publication there are none."""
    cfg = reference.cfg
    before = reference.before_publication
    assert persons_file(before).is_file() and link_map_file(before).is_file()  # the run did make them
    assert cfg.release_dir.is_dir()
    for zone in WORKING_ZONES:
        left = cfg.work / zone / RELIABILITY_LABEL
        assert not left.exists(), f"{left} is still there: {sorted(p.name for p in left.rglob('*'))}"
    assert "retain_working_files" in io.read_json(cfg.release_dir / "manifest.json")["settings"]


def test_publication_killed_before_the_purge_purges_on_retry(reference: Reference, tmp_path) -> None:
    """Killed after the reports moved and before the working files went: the retry removes them."""
    work = reference.published_work(tmp_path / "work")
    conf = reference.conf(work)
    cfg = RunConfig.from_conf(conf)
    with io.atomic_path(cfg.reports_dir / PUBLISHING_MARK) as tmp:  # the state the crash leaves
        tmp.write_text(io.sha256_file(cfg.release_dir / "manifest.json"))
    assert cfg.pseudonymised_dir.is_dir() and cfg.linked_dir.is_dir()
    stage_runner.run_step(conf, "publish_release")
    assert not cfg.pseudonymised_dir.exists() and not cfg.linked_dir.exists()
    assert not (cfg.reports_dir / PUBLISHING_MARK).exists()


def test_working_files_kept_with_a_reason_stay_and_the_manifest_says_why(reference: Reference, tmp_path) -> None:
    work = tmp_path / "work"
    shutil.copytree(reference.snapshots["stage_release"], work, symlinks=True)
    conf = reference.conf(work, **RETAIN)
    stage_runner.run_steps(conf, first="stage_release")
    cfg = RunConfig.from_conf(conf)
    assert persons_file(cfg).is_file() and link_map_file(cfg).is_file()
    settings = io.read_json(cfg.release_dir / "manifest.json")["settings"]
    assert (settings["retain_working_files"], settings["retention_reason"]) == (True, RETAIN["retention_reason"])


# ---------------------------------------------------------------------------------------------------
# Provider record IDs stay in raw/


def raw_record_ids(raw: Path) -> dict[str, set[str]]:
    return {s: set(pl.read_parquet(raw / f"{s}.parquet", columns=["record_id"]).get_column("record_id")) for s in SOURCES}


def record_id_leaks(work: Path, ids: set[str]) -> dict[str, int]:
    """Files outside raw/ holding a provider record ID anywhere (a Parquet string cell or metadata,
    or any text), with how many; candidates are every word of the text (record IDs take any
    provider's form, so they are looked up word by word rather than by shape)."""
    shape = re.compile(r"[^\s\"',:;{}\[\]()|=]+")
    leaks = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file() and p.relative_to(work).parts[0] != "raw"):
        if path.suffix == ".parquet":
            meta = pq.read_schema(path).metadata or {}
            texts = [v.decode("utf-8", "replace") for v in meta.values()]
            df = pl.read_parquet(path)
            texts += ["\n".join(df.get_column(c).drop_nulls().cast(pl.String).to_list()) for c in df.select(pl.col(pl.String)).columns]
            text = "\n".join(texts)
        else:
            text = path.read_bytes().decode("utf-8", errors="replace")
        found = {m.group() for m in shape.finditer(text)} & ids
        if found:
            leaks[str(path.relative_to(work))] = len(found)
    return leaks


def test_the_scan_finds_a_planted_record_id(reference: Reference, tmp_path) -> None:
    ids = raw_record_ids(reference.raw)
    planted = sorted(ids["gp_events"])[0]
    (tmp_path / "linked").mkdir()
    pl.DataFrame({"record_id": [planted]}).write_parquet(tmp_path / "linked" / "x.parquet")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "note.json").write_text(f'{{"see": "row {planted}"}}')
    assert record_id_leaks(tmp_path, set().union(*ids.values())) == {"linked/x.parquet": 1, "reports/note.json": 1}


def test_no_provider_record_id_is_held_outside_raw(reference: Reference, tmp_path) -> None:
    ids = raw_record_ids(reference.raw)
    work = reference.published_work(tmp_path / "work")  # every zone, the working ones included
    cfg = RunConfig.from_conf(reference.conf(work))
    assert payload_file(cfg, "hospital_apc").is_file() and link_map_file(cfg).is_file()
    assert record_id_leaks(work, set().union(*ids.values())) == {}
    # Records are still there, under their keyed tokens: the link map holds every usable record's.
    link_map = pl.read_parquet(link_map_file(cfg))
    for source in SOURCES:
        mine = set(link_map.filter(pl.col("source") == source).get_column("record_id"))
        quarantined = cfg.quarantine_dir / f"{source}.parquet"
        set_aside = set(pl.read_parquet(quarantined).get_column("record_id")) if quarantined.exists() else set()
        assert mine == record_tokens(reference.key_file, source, ids[source] - set_aside)
