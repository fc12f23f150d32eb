"""Pseudonymised inputs for the linkage benchmarks, cached under bench/.cache/.

`prepare(persons, profile, seed)` generates synthetic extracts (pipeline.synth), makes a key, and runs
the real consent gate and pseudonymisation of every source (pipeline.pseudonymise), so the link stage
reads exactly what production gives it. Generation and pseudonymisation are not timed here: they are
measured by bench/run.py.

For a million people (`fast=True`, used by bench/linkage_scale.py) the token files are made by
`tokenise_distinct_identifiers` instead of pipeline.pseudonymise.pseudonymise_source: the same
function (pipeline.pseudonymise.identifiers.tokenise_identifiers) applied once per distinct
identifier tuple rather than to every row, so the tokens are identical and the cache takes minutes,
not hours. Only the token files are written (linkage reads nothing else).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from pipeline.settings import SOURCES, RunConfig  # noqa: E402

CACHE = HERE / ".cache"


def tokenise_distinct_identifiers(cfg: RunConfig, key, source: str, chunk_rows: int = 1_000_000) -> Path:
    """tokens/<source>.parquet as pseudonymise_source writes it, tokenising each distinct identifier
    tuple of a chunk of rows once (a person's records mostly repeat one tuple). Chunks keep memory
    flat: a token is 64 characters, so 30 million rows of 19 tokens would not fit in memory at once."""
    import polars as pl
    import pyarrow.parquet as pq

    from pipeline import io
    from pipeline.contracts import load_contract, to_arrow
    from pipeline.pseudonymise.identifiers import IDENTIFIER_COLUMNS, NO_USABLE_IDENTIFIER, tokenise_identifiers
    from pipeline.pseudonymise.inputs import scan_input

    contract = load_contract("record_tokens")
    token_cols = [c for c in contract.column_names if c != "record_id"]
    tuple_key = pl.struct(list(IDENTIFIER_COLUMNS)).hash().alias("_tuple")
    scan = scan_input(cfg, source)
    n = scan.select(pl.len()).collect().item()
    schema = contract.arrow_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), b"pprl_kid": key.kid.encode(), b"source": source.encode()})
    out = cfg.pseudonymised_dir / "tokens" / f"{source}.parquet"
    last = None
    with io.atomic_path(out) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd", compression_level=3)
        try:
            for start in range(0, n, chunk_rows):
                rows = scan.slice(start, chunk_rows).filter(~NO_USABLE_IDENTIFIER).select("record_id", *IDENTIFIER_COLUMNS).collect()
                ids = rows.get_column("record_id")
                if not ids.is_sorted() or (last is not None and ids.len() and ids[0] <= last):
                    raise RuntimeError(f"{source}: the raw extract is not sorted by record_id")
                last = ids[-1] if ids.len() else last
                distinct = rows.select(*IDENTIFIER_COLUMNS).unique().with_columns(tuple_key)
                if distinct.get_column("_tuple").n_unique() != distinct.height:
                    raise RuntimeError(f"{source}: identifier tuple hash clash; rerun")
                tokened, _ = tokenise_identifiers(distinct.lazy(), key)
                lookup = tokened.select("_tuple", *token_cols).collect()
                chunk = rows.select("record_id", tuple_key).join(lookup, on="_tuple", how="left", maintain_order="left")
                writer.write_table(to_arrow(chunk, contract).replace_schema_metadata(schema.metadata))
        finally:
            writer.close()
    return out


def prepare(persons: int, profile: str, seed: int, label: str = "bench", log=print, fast: bool = False) -> tuple[RunConfig, Path]:
    """(run config with pseudonymised inputs, truth folder), made once per (persons, profile, seed)."""
    from pipeline.crypto.keys import new_key_file, read_key_file
    from pipeline.link.model import COMPARISON_COLUMNS
    from pipeline.pseudonymise import pseudonymise_source, run_consent_gate
    from pipeline.synth import generate

    base = CACHE / f"linkage-{profile}-{persons}-s{seed}"
    if not (base / ".complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        t = time.perf_counter()
        generate(base, persons=persons, seed=seed, profile=profile)
        (base / ".complete").write_text(f"generated in {time.perf_counter() - t:.1f}s\n")
        log(f"generated {persons:,} people ({profile}, seed {seed}) in {time.perf_counter() - t:.0f}s")
    key_file = base / "secrets" / "key.json"
    key = read_key_file(key_file) if key_file.exists() else new_key_file(key_file)
    cfg = RunConfig.from_conf(
        {"raw_dir": str(base / "raw"), "work_dir": str(base / "work"), "release_label": label, "key_file": str(key_file)}
    )
    marker = cfg.pseudonymised_dir / ".complete"
    if not marker.exists():
        t = time.perf_counter()
        if not (cfg.pseudonymised_dir / "persons.parquet").exists():
            run_consent_gate(cfg, key)
        for s in SOURCES:
            if (cfg.pseudonymised_dir / "tokens" / f"{s}.parquet").exists():
                continue  # written atomically by an interrupted earlier preparation
            if fast:
                tokenise_distinct_identifiers(cfg, key, s)
            else:
                pseudonymise_source(cfg, key, s)
            log(f"  {s}: {time.perf_counter() - t:.0f}s")
        marker.write_text(f"pseudonymised in {time.perf_counter() - t:.1f}s\n")
        log(f"pseudonymised in {time.perf_counter() - t:.0f}s")
    have = set(pq.read_schema(cfg.pseudonymised_dir / "persons.parquet").names)
    lacking = sorted(set(COMPARISON_COLUMNS.values()) - have)
    if lacking:
        raise SystemExit(
            f"the cached pseudonymised files lack {lacking}: delete {cfg.pseudonymised_dir} to pseudonymise again"
        )
    return cfg, base / "truth"
