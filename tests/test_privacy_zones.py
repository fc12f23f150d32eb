"""No direct identifier leaves raw/: a real run through the three DAGs on a small synthetic population,
then every raw identifier value is looked for in every file of every other zone and in Airflow's logs.

How values are compared, so the scan finds real leaks and not coincidences:
- NHS numbers and postcodes are looked for anywhere in any text (Parquet string cells and metadata,
  JSON, HTML, Markdown, logs, the Airflow database): every run of ten digits (spaces or dashes
  allowed) that is not part of a longer run of digits, and every postcode-shaped word, is put in
  canonical form and looked up among the raw values. Hex tokens do not produce false alarms: ten
  digits in a row inside a token, equal to one of a few thousand NHS numbers, is a 1-in-10^9 event.
- Names are common words ("Field", "Hall", "Green" all occur in Airflow's own log lines), so they
  count only as a whole Parquet cell, or as a whole word of six letters or more in text; both the
  name as delivered and its canonical form (OBRIEN) are looked for.
- Dates of birth look like every other date in the payload, so instead no Parquet file outside
  raw/ may have an identifier column or a column of class direct_identifier.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import RETAIN

from pipeline.crypto import names, normalise
from pipeline.crypto.keys import new_key_file
from pipeline.publish.signing import new_publishing_key_file
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import study_persons_file

pytestmark = pytest.mark.e2e
LABEL = "privacy"
IDENTIFIER_COLUMNS = ("nhs_number", "given_name", "family_name", "date_of_birth", "postcode")
NHS_LIKE = re.compile(r"(?<![0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}(?![0-9])")
POSTCODE_LIKE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{1,2}[0-9][0-9A-Za-z]?[ ]?[0-9][A-Za-z]{2}(?![A-Za-z0-9])")
LONG_WORD = re.compile(r"[A-Za-z]{6,}")
TEXT_SUFFIXES = {".json", ".html", ".md", ".log", ".txt", ".csv", ".yaml", ".yml", ".cfg", ".css", ".js", ".svg", ".db"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.orchestration.embedded import run_embedded
    from pipeline.synth import generate

    base = tmp_path_factory.mktemp("privacy")
    generate(base / "input", persons=400, seed=17, profile="realistic")
    new_key_file(base / "key.json")
    new_publishing_key_file(base / "publishing.pem")
    cfg = RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": LABEL, "key_file": str(base / "key.json"),
         "publishing_key_file": str(base / "publishing.pem"), **RETAIN}
    )
    lines: list[str] = []
    run_embedded(cfg.to_conf(), base / "airflow", progress=lines.append)
    return {"cfg": cfg, "base": base, "progress": "\n".join(lines)}


def raw_identifiers(raw: Path) -> dict[str, set[str]]:
    """Canonical NHS numbers and postcodes, and names as delivered and canonical, of every raw input."""
    nhs, postcodes, people = set(), set(), set()
    for dataset in ("consent_register", *SOURCES):
        df = pl.read_parquet(raw / f"{dataset}.parquet", columns=["nhs_number", "given_name", "family_name", "postcode"])
        nhs |= {normalise.canonical_nhs_number(v) or v for v in df.get_column("nhs_number").drop_nulls().unique()}
        postcodes |= {normalise.canonical_postcode(v) or v for v in df.get_column("postcode").drop_nulls().unique()}
        for col in ("given_name", "family_name"):
            for v in df.get_column(col).drop_nulls().unique():
                people |= {v, names.canonical_name(v) or v, *(w for w in names.canonical_forenames(v) if w)}
    postcodes |= {normalise.canonical_postcode(v) for v in pl.read_parquet(raw / "postcode_imd.parquet").get_column("postcode")}
    return {"nhs": nhs, "postcodes": postcodes - {None}, "names": people}


# An image embedded in a page (the love plot, as data:image/png;base64,...) is not text: its base64
# holds runs of letters that spell a name by chance; what it draws comes from the released tables,
# which are scanned themselves.
EMBEDDED_IMAGE = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+")


# Words the audit page's own text is written with (its template, pipeline/publish/report.py): a
# synthetic surname may also be a word of the page (GUILD's first author, Gilbert), which no run put there.
PAGE_WORDS = frozenset(LONG_WORD.findall((Path(__file__).resolve().parent.parent / "pipeline" / "publish" / "report.py").read_text()))


def leaks_in_text(text: str, ids: dict[str, set[str]]) -> list[str]:
    """What kind of identifier (never the value) each leak is, for the assertion message."""
    text = EMBEDDED_IMAGE.sub(" ", text)
    found = []
    for m in NHS_LIKE.finditer(text):
        if re.sub(r"[ -]", "", m.group()) in ids["nhs"]:
            found.append("NHS number")
    for m in POSTCODE_LIKE.finditer(text):
        if normalise.canonical_postcode(m.group()) in ids["postcodes"]:
            found.append("postcode")
    for m in LONG_WORD.finditer(text):
        if m.group() in ids["names"] and m.group() not in PAGE_WORDS:
            found.append("name")
    return found


def scanned_files(run) -> list[Path]:
    work, home = run["cfg"].work, run["base"] / "airflow"
    files = [p for p in work.rglob("*") if p.is_file() and p.relative_to(work).parts[0] != "raw"]
    files += [p for p in home.rglob("*") if p.is_file() and (p.suffix in TEXT_SUFFIXES or "logs" in p.parts)]
    return files


def test_the_scan_covers_every_zone_and_the_airflow_logs(run):
    work = run["cfg"].work
    zones = {p.relative_to(work).parts[0] for p in scanned_files(run) if p.is_relative_to(work)}
    assert {"pseudonymised", "linked", "releases", "reports"} <= zones
    logs = [p for p in scanned_files(run) if "logs" in p.parts]
    assert logs and any(p.suffix == ".log" for p in logs)


def test_no_raw_identifier_appears_outside_raw_or_in_the_logs(run):
    ids = raw_identifiers(run["cfg"].raw)
    assert len(ids["nhs"]) > 100 and len(ids["postcodes"]) > 100 and len(ids["names"]) > 100
    leaks: dict[str, list[str]] = {}
    for path in scanned_files(run):
        if path.suffix == ".parquet":
            found = _parquet_leaks(path, ids)
        else:
            found = leaks_in_text(path.read_bytes().decode("utf-8", errors="replace"), ids)
        if found:
            leaks[str(path)] = sorted(set(found))
    leaks_in_progress = leaks_in_text(run["progress"], ids)
    assert not leaks and not leaks_in_progress, f"identifiers found: {leaks} {leaks_in_progress}"


def _parquet_leaks(path: Path, ids: dict[str, set[str]]) -> list[str]:
    found = []
    meta = pq.read_schema(path).metadata or {}
    found += leaks_in_text(" ".join(v.decode("utf-8", "replace") for v in meta.values()), ids)
    df = pl.read_parquet(path)
    # Text columns, Categorical ones and lists of either (near-miss tokens): each list element is a cell.
    text = df.select(pl.col(pl.String, pl.Categorical, pl.List(pl.String), pl.List(pl.Categorical)))
    for col in text.columns:
        cells = text.get_column(col)
        if isinstance(cells.dtype, pl.List):
            cells = cells.explode()
        cells = cells.cast(pl.String).drop_nulls().unique()
        if cells.is_in(pl.Series(sorted(ids["names"])).implode()).any():
            found.append(f"name (whole cell, column {col})")
        found += leaks_in_text("\n".join(cells.to_list()), {**ids, "names": set()})
    return found


def test_the_scan_finds_planted_identifiers_and_ignores_tokens(run, tmp_path):
    ids = raw_identifiers(run["cfg"].raw)
    nhs, pc = sorted(ids["nhs"])[0], sorted(ids["postcodes"])[0]
    long_name = next(n for n in sorted(ids["names"]) if len(n) >= 6 and n.isalpha())
    short_name = next(n for n in sorted(ids["names"]) if len(n) <= 5 and n.isalpha())
    text = f"row {nhs[:3]}-{nhs[3:6]}-{nhs[6:]}, at {pc[:-3].lower()} {pc[-3:].lower()}: {long_name}."
    assert sorted(leaks_in_text(text, ids)) == ["NHS number", "name", "postcode"]
    assert leaks_in_text(f"1{nhs} {nhs}0 {short_name} {pc}X", ids) == []
    planted = tmp_path / "planted.parquet"
    pl.DataFrame({"note": ["ok", short_name], "code": [f"x{nhs}", f"see {nhs}"]}).write_parquet(planted)
    assert sorted(set(_parquet_leaks(planted, ids))) == ["NHS number", "name (whole cell, column note)"]
    in_lists = tmp_path / "planted_lists.parquet"
    pl.DataFrame(
        {"near": [["ab12", short_name], None], "pcs": [[], [f"at {pc}"]], "cat": pl.Series(["ok", nhs], dtype=pl.Categorical)}
    ).write_parquet(in_lists)
    assert sorted(set(_parquet_leaks(in_lists, ids))) == ["NHS number", "name (whole cell, column near)", "postcode"]


def test_no_parquet_file_outside_raw_has_an_identifier_column(run):
    work = run["cfg"].work
    parquet = [p for p in scanned_files(run) if p.suffix == ".parquet"]
    assert any("pseudonymised" in p.parts for p in parquet) and any("releases" in p.parts for p in parquet)
    for path in parquet:
        schema = pq.read_schema(path)
        assert not set(schema.names) & set(IDENTIFIER_COLUMNS), f"{path.relative_to(work)} has an identifier column"
        classes = {(f.metadata or {}).get(b"class") for f in schema}
        assert b"direct_identifier" not in classes, f"{path.relative_to(work)} has a direct_identifier column"


def test_the_pseudonymised_persons_hold_age_and_deprivation_not_birth_date_and_postcode(run):
    persons = pl.read_parquet(study_persons_file(run["cfg"]))
    assert {"age_at_index", "imd_quintile"} <= set(persons.columns)
    assert persons.get_column("age_at_index").min() >= 55
