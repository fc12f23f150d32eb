"""The same synthetic people in providers' own layouts (`pipeline synth --layout nhs`).

Each of the five sources written by the generator (`raw/<source>.parquet`, in the contract's layout)
is written again through its shipped mapping applied backwards (pipeline.deliveries.mapping.to_native):
the provider's column names, its codes (SEX 1/2/9, ATTENDED 5/3, ...), dates as text in the mapping's
format, NHS numbers grouped 3-3-4 with spaces, as CSV or pipe-delimited text, some gzipped. The social
care file also holds a few assessment events, which a CLD submission has and the mapping's `rows:`
leaves out. `deliveries.yaml` beside `raw/` lists them; the canonical Parquet of each source is then
removed, so a run can only read the native files:

    pipeline synth --out D --layout nhs
    pipeline run --raw D/raw --deliveries D/deliveries.yaml ...

A run of them publishes the same release as a run of the canonical files (tests/test_deliveries.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import yaml

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.deliveries.delivery import FORMATS
from pipeline.deliveries.mapping import MAPPINGS_DIR, load_mapping, to_native

# Source: (file name, format, shipped mapping).
NHS_LAYOUT: dict[str, tuple[str, str, str]] = {
    "hospital_apc": ("hes_apc.csv", "csv", "hes_apc"),
    "hospital_op": ("hes_op.csv.gz", "csv.gz", "hes_op"),
    "hospital_ae": ("ecds.txt", "pipe", "ecds"),
    "gp_events": ("gp_consultations.txt.gz", "pipe.gz", "gp_extract"),
    "social_care": ("asc_cld.csv", "csv", "asc_cld"),
}
DELIVERIES_FILE = "deliveries.yaml"
# Events of other types a CLD submission carries beside services (left out by the mapping's `rows:`).
OTHER_CLD_EVENTS = ("Assessment", "Review")


def write_text(df: pl.DataFrame, path: Path, fmt: str) -> Path:
    """Write `df` as CSV or pipe-delimited text with a header, gzipped for a `.gz` format, with the
    same bytes for the same frame (the gzip header carries no time or file name)."""
    separator, gzipped = FORMATS[fmt]
    text = df.write_csv(separator=separator).encode("utf-8")
    with io.atomic_path(path) as tmp:
        if gzipped:
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(text)
        else:
            tmp.write_bytes(text)
    return path


def _with_other_events(native: pl.DataFrame) -> pl.DataFrame:
    """A few non-service events of the same people, as a CLD submission has them."""
    extra = native.head(len(OTHER_CLD_EVENTS)).with_columns(
        Event_Type=pl.Series(list(OTHER_CLD_EVENTS[: min(len(OTHER_CLD_EVENTS), native.height)]), dtype=pl.String),
        Service_Type=pl.lit(None, dtype=pl.String),
        Planned_units_per_week=pl.lit(None, dtype=native.schema["Planned_units_per_week"]),
    )
    return pl.concat([native, extra])


def write_native_layout(out: Path) -> Path:
    """Rewrite the five sources of `out/raw` in providers' layouts; return `out/deliveries.yaml`."""
    out = Path(out)
    raw = out / "raw"
    entries = {}
    for source, (name, fmt, mapping_name) in NHS_LAYOUT.items():
        contract = load_contract(source)
        mapping = load_mapping(MAPPINGS_DIR / f"{mapping_name}.yaml")
        canonical = pl.read_parquet(raw / f"{source}.parquet")
        native = to_native(canonical, mapping, contract)
        if "Event_Type" in mapping.rows:
            native = _with_other_events(native)
        write_text(native, raw / name, fmt)
        (raw / f"{source}.parquet").unlink()
        entries[source] = {"path": f"raw/{name}", "format": fmt, "mapping": mapping_name}
    text = (
        "# The five sources in providers' layouts (pipeline synth --layout nhs); the consent register, survey\n"
        "# and postcode lookup are Parquet in raw/. Run: pipeline run --raw raw --deliveries deliveries.yaml\n"
        + yaml.safe_dump({"deliveries": entries}, sort_keys=False)
    )
    path = out / DELIVERIES_FILE
    with io.atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
