"""Identity profiles: the distinct combinations of tokens a source's records carry.

A person's service-use records mostly repeat the same identifiers, so 48 million records hold only
about 6.2 million distinct token combinations (synthetic `realistic` profile, a million people), which
the pseudonymised zone stores once each (token blocks). Linkage runs once per combination of the
tokens it reads (a *profile*) and every record takes its profile's result, which is what makes a
million people tractable on two cores.

Inside the link stage each 64-hex-digit token is replaced by a 64-bit code (Polars' hash of the
token). Codes only ever meet codes made in the same process, are never written out, and two
different tokens of one field share a code with probability below 1e-7 at a million distinct values.

A profile's key is the hash of the codes of its *key columns*: the tokens every other token is made
from (NHS number, date of birth, date of birth with sex, postcode, surname, forenames). The others
(phonetic codes with initials, NHS number with the date or the swapped date, the rank composites) are
functions of those under the token spec, and so are spec v3's near-miss lists (each made from a
name and a salt taken from the other name), so they add no distinctness and the pass that maps records to profiles need not read them. A clash
of two profiles' keys, or derived tokens that differ under one key (files not made to the spec),
is detected and refused.
"""

from __future__ import annotations

import polars as pl

from pipeline.errors import PipelineError
from pipeline.zones import TOKEN_BLOCK

PROFILE_KEY = "profile_key"


def _set_columns() -> frozenset[str]:
    """Token columns holding a list of tokens (token spec v3's near-miss tokens), per the contract."""
    from pipeline.contracts import load_contract

    return frozenset(c.name for c in load_contract("token_blocks").columns if c.type == "list[string]")


def token_codes(columns: list[str]) -> list[pl.Expr]:
    """Expressions turning each token column into its 64-bit code (a list column: a list of codes);
    a null token stays null."""
    sets = _set_columns()
    return [
        pl.col(c).list.eval(pl.element().hash()).alias(c) if c in sets else pl.when(pl.col(c).is_not_null()).then(pl.col(c).hash()).alias(c)
        for c in columns
    ]


def profile_key(key_columns: list[str]) -> pl.Expr:
    """The profile key of coded rows: a hash of the key columns' codes."""
    return pl.struct(key_columns).hash().alias(PROFILE_KEY)


def build_profiles(
    records: pl.LazyFrame, blocks: pl.LazyFrame, columns: list[str], key_columns: list[str], where: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Group one source's token blocks into profiles (schemas/token_blocks.yaml, record_blocks.yaml).

    Returns (profiles, block_profiles): one row per profile (profile_key and the codes of `columns`,
    sorted by profile_key), and each token block's profile (token_block, profile_key). The records
    are only checked here (every record names a block of the file), in one streaming pass over
    their block numbers; the link stage maps records to profiles window by window through the blocks.
    """
    coded = blocks.select(TOKEN_BLOCK, *token_codes(columns)).with_columns(profile_key(key_columns)).collect()
    orphans = (
        records.select(TOKEN_BLOCK)
        .join(coded.lazy().select(TOKEN_BLOCK), on=TOKEN_BLOCK, how="anti")
        .select(pl.len())
        .collect(engine="streaming")
        .item()
    )
    if orphans:
        raise PipelineError(
            f"{where}: {orphans} record(s) name a token block that is not in the token file; the two files "
            "are from different runs: re-pseudonymise the source"
        )
    # Every block of a profile must carry the same codes (the key's tokens decide the rest), else the
    # key clashed or the file was not made by this token spec. Compared by a hash of the whole row per
    # profile key, two 8-byte columns, rather than by a unique over every code column (list columns
    # among them), which at ten million blocks held as much again as the blocks themselves.
    whole_row = pl.struct(pl.exclude(TOKEN_BLOCK, PROFILE_KEY)).hash().alias("_row")
    clashes = coded.select(PROFILE_KEY, whole_row).group_by(PROFILE_KEY).agg(pl.col("_row").n_unique() > 1).get_column("_row").sum()
    if clashes:
        raise PipelineError(
            f"{where}: records with the same key tokens ({', '.join(key_columns)}) differ in a token made "
            "from them, or two profiles' keys clash (about a one-in-a-million event at five million "
            "profiles); check the file was pseudonymised with this pipeline's token spec and rerun"
        )
    # So any one block of a profile stands for it: one row a profile, in profile key order, gathered
    # once (a unique, then a sort, would copy every column twice).
    one_each = coded.select(PROFILE_KEY, pl.int_range(pl.len()).alias("_i")).unique(subset=PROFILE_KEY, keep="any").sort(PROFILE_KEY)
    profiles = coded.select(PROFILE_KEY, *columns)[one_each.get_column("_i")]
    return profiles, coded.select(TOKEN_BLOCK, PROFILE_KEY)
