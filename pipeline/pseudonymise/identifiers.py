"""From identifier columns to token columns, lazily, tokenising each distinct canonical value once.

The identifier block is the same in every identifiable extract (schemas/_identifiers.yaml), so one
function serves the consent register and every service-use source.
"""

from __future__ import annotations

import polars as pl

from pipeline.crypto import normalise
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.tokens import tokenise_many

# token column -> (token field, canonical expression over the raw identifier columns)
TOKEN_SPECS: dict[str, tuple[str, pl.Expr]] = {
    "tok_nhs": ("nhs_number", normalise.nhs_number_expr("nhs_number")),
    "tok_dob": ("date_of_birth", normalise.date_expr("date_of_birth")),
    "tok_dob_ym": ("date_of_birth_ym", normalise.date_ym_expr("date_of_birth")),
    # The swapped date is tokenised under the date_of_birth field on purpose: it must equal the token
    # of the other record's true date of birth when one of the two has day and month swapped.
    "tok_dob_swap": ("date_of_birth", normalise.date_swapped_expr("date_of_birth")),
    "tok_sex": ("sex", normalise.sex_expr("sex")),
    "tok_postcode": ("postcode", normalise.postcode_expr("postcode")),
}
TOKEN_COLUMNS: tuple[str, ...] = tuple(TOKEN_SPECS)
IDENTIFIER_COLUMNS: tuple[str, ...] = ("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode")


def _mapping(lf: pl.LazyFrame, key: LinkageKey, field: str, expr: pl.Expr, name: str) -> pl.LazyFrame:
    """Distinct canonical values of one expression and their tokens, as a small lazy lookup frame."""
    distinct = lf.select(expr.alias("_v")).drop_nulls().unique().collect().get_column("_v").sort()
    tokens = tokenise_many(key, field, distinct.to_list())
    return pl.DataFrame({f"_canon_{name}": distinct, name: pl.Series(tokens, dtype=pl.String)}).lazy()


def with_tokens(lf: pl.LazyFrame, key: LinkageKey) -> pl.LazyFrame:
    """Add the token columns of schemas/_tokens.yaml; the identifier columns are left for the caller to drop."""
    out = lf.with_columns([expr.alias(f"_canon_{name}") for name, (_, expr) in TOKEN_SPECS.items()])
    for name, (field, expr) in TOKEN_SPECS.items():
        lookup = _mapping(lf, key, field, expr, name)
        out = out.join(lookup, on=f"_canon_{name}", how="left", nulls_equal=False)
    return out.drop([f"_canon_{name}" for name in TOKEN_SPECS])


def identifier_quality(lf: pl.LazyFrame) -> dict[str, int]:
    """Counts of missing and unusable identifiers (never the values), for the run's audit."""
    nhs = pl.col("nhs_number")
    canon = normalise.nhs_number_expr("nhs_number")
    row = lf.select(
        pl.len().alias("rows"),
        nhs.is_null().sum().alias("nhs_number_missing"),
        (nhs.is_not_null() & canon.is_null()).sum().alias("nhs_number_invalid"),
        pl.col("date_of_birth").is_null().sum().alias("date_of_birth_missing"),
        (pl.col("postcode").is_not_null() & normalise.postcode_expr("postcode").is_null()).sum().alias("postcode_invalid"),
    ).collect()
    return {k: int(v) for k, v in row.row(0, named=True).items()}


NO_USABLE_IDENTIFIER = (
    pl.col("tok_nhs").is_null() & pl.col("tok_dob").is_null() & pl.col("tok_postcode").is_null()
)
