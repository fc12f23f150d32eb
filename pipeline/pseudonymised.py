"""The token files of the pseudonymised zone: where a source's tokens are, and reading them back per record.

Tokens are stored once per token block (schemas/token_blocks.yaml, tokens/<source>.parquet) and each
record names its block (schemas/record_blocks.yaml, records/<source>.parquet). The link stage works on
the blocks; `scan_record_tokens` gives the record-level view, one row per record with its tokens, for
readers that want it (tests, benchmarks, checks against the token spec's reference implementation).

    scan_record_tokens(cfg.pseudonymised_dir, "gp_events").filter(pl.col("tok_nhs").is_null())
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

TOKEN_BLOCK = "token_block"


def blocks_path(pseudonymised_dir: Path, source: str) -> Path:
    """tokens/<source>.parquet: token_block and the token columns, one row per block."""
    return Path(pseudonymised_dir) / "tokens" / f"{source}.parquet"


def records_path(pseudonymised_dir: Path, source: str) -> Path:
    """records/<source>.parquet: record_id and token_block, one row per pseudonymised record."""
    return Path(pseudonymised_dir) / "records" / f"{source}.parquet"


def scan_record_tokens(pseudonymised_dir: Path, source: str) -> pl.LazyFrame:
    """One row per pseudonymised record of `source`: record_id and its token columns, in the
    records file's order (the delivered extract's)."""
    blocks = pl.scan_parquet(blocks_path(pseudonymised_dir, source))
    records = pl.scan_parquet(records_path(pseudonymised_dir, source))
    return records.join(blocks, on=TOKEN_BLOCK, how="left", maintain_order="left").drop(TOKEN_BLOCK)
