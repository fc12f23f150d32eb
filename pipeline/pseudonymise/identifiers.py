"""From the identifier block to the token columns of schemas/_tokens.yaml, lazily, tokenising each
distinct canonical value once.

The identifier block is the same in every identifiable extract (schemas/_identifiers.yaml), so one
function serves the consent register and every service-use source. `TOKEN_COLUMNS` is the table a
reader checks against docs/token-spec.md: each token column, its field, and its canonical value.

    >>> [c.name for c in TOKEN_COLUMNS][:4]
    ['tok_nhs', 'tok_dob', 'tok_dob_sex', 'tok_postcode']
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import polars as pl

from pipeline.crypto import names, near, normalise
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.tokens import COMPOSITE_SEPARATOR, tokenise_distinct
from pipeline.zones import TOKEN_BLOCK

log = logging.getLogger(__name__)

IDENTIFIER_COLUMNS: tuple[str, ...] = ("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode")
# Canonical name forms, added by `_with_name_forms` from the distinct raw names.
_SURNAME, _SURNAME_SDX = "_n_surname", "_n_surname_soundex"
_FORENAMES, _FIRST, _FIRST_SDX = "_n_forenames", "_n_forename_first", "_n_forename_soundex"
_NAME_FORMS = (_SURNAME, _SURNAME_SDX, _FORENAMES, _FIRST, _FIRST_SDX)


@dataclass(frozen=True)
class TokenColumn:
    """A token column: the field whose key makes it, and its canonical value over the identifier block."""

    name: str
    field: str
    canonical: pl.Expr
    # A set column (token spec v3's near-miss fragments): `canonical` gives a list of canonical
    # values, and the column holds their tokens as a sorted list without repeats (List[String]). A
    # field's columns are all sets or all scalars: the two are tokenised apart (`_block_table`).
    is_set: bool = False


def _joined(*parts: pl.Expr) -> pl.Expr:
    # Null as soon as one part is null: a composite is only made when every part is known.
    return pl.concat_str(list(parts), separator=COMPOSITE_SEPARATOR, ignore_nulls=False)


# Canonical forms of the identifier block, each computed once per row (`_with_base_forms`) before the
# token columns read them: Polars does not share a repeated subexpression between the many places
# a composite or a filter would otherwise repeat it, and the NHS number's check is costly.
_NHS, _DOB, _DOB_YM, _SEX, _POSTCODE = "_b_nhs", "_b_dob", "_b_dob_ym", "_b_sex", "_b_postcode"
_DOB_SWAP = "_b_dob_swap"
_BASE_FORMS = (_NHS, _DOB, _DOB_YM, _SEX, _POSTCODE, _DOB_SWAP)
_nhs, _dob, _sex, _postcode = pl.col(_NHS), pl.col(_DOB), pl.col(_SEX), pl.col(_POSTCODE)

# The day-and-month-swapped date exists only for some dates (day 12 or less, not equal to the month).
# A token made only when it exists would tell by its absence that the day is over 12, so the swap
# token is always made when the NHS number and date are known: from the date and this marker when
# there is no swap. The marker's extra part keeps it from ever equalling an `nhs_dob` of a real date.
UNSWAPPABLE = "unswappable"
_swap = pl.col(_DOB_SWAP)

TOKEN_COLUMNS: tuple[TokenColumn, ...] = (
    TokenColumn("tok_nhs", "nhs_number", _nhs),
    TokenColumn("tok_dob", "date_of_birth", _dob),
    # Sex has two values, so it is only ever tokenised with the date of birth (token spec v2).
    TokenColumn("tok_dob_sex", "date_of_birth_sex", _joined(_dob, _sex)),
    TokenColumn("tok_postcode", "postcode", _postcode),
    # Every name token is under the one field `name`, so a first forename meets the same name given
    # as someone's only forename, and a forename meets a surname when a record has the two swapped.
    TokenColumn("tok_surname", "name", pl.col(_SURNAME)),
    TokenColumn("tok_forename", "name", pl.col(_FORENAMES)),
    TokenColumn("tok_forename_first", "name", pl.col(_FIRST)),
    # A Soundex code alone is one of a few hundred in use and is decoded by its frequency; with the
    # other name's initial it is one of tens of thousands. One field for both, so the two meet when a
    # record has forename and surname swapped.
    TokenColumn("tok_surname_phonetic_initial", "name_soundex_initial", _joined(pl.col(_SURNAME_SDX), pl.col(_FIRST).str.head(1))),
    TokenColumn("tok_forename_phonetic_initial", "name_soundex_initial", _joined(pl.col(_FIRST_SDX), pl.col(_SURNAME).str.head(1))),
    # Rank 3's day-and-month-swap arm: the swapped token of one record equals the true one of the other.
    TokenColumn("tok_nhs_dob", "nhs_dob", _joined(_nhs, _dob)),
    TokenColumn(
        "tok_nhs_dob_swap",
        "nhs_dob",
        pl.when(_swap.is_not_null()).then(_joined(_nhs, _swap)).otherwise(_joined(_nhs, _dob, pl.lit(UNSWAPPABLE))),
    ),
    TokenColumn("tok_rank1", "rank1", _joined(_nhs, _dob, _sex, _postcode)),
    TokenColumn("tok_rank2", "rank2", _joined(_nhs, _dob, _sex)),
    TokenColumn("tok_rank3", "rank3", _joined(_nhs, pl.col(_DOB_YM))),
    TokenColumn("tok_rank4", "rank4", _joined(_nhs, _postcode)),
    TokenColumn("tok_rank5", "rank5", _joined(_dob, _sex, _postcode)),
    # Token spec v3: near-miss fragments (pipeline.crypto.near), so names one edit apart can agree.
    # Names only: the similarity graphs of dates of birth and postcode units are the calendar's and the
    # postcode map's, decodable at scale (docs/token-spec.md section 7). Each is salted with the other
    # name's initial; `_with_near_forms` makes them once per distinct value and salt.
    TokenColumn("tok_surname_near", "name_near", pl.col("_f_tok_surname_near"), is_set=True),
    TokenColumn("tok_forename_near", "name_near", pl.col("_f_tok_forename_near"), is_set=True),
)
TOKEN_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in TOKEN_COLUMNS)
SET_TOKEN_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in TOKEN_COLUMNS if c.is_set)
SCALAR_TOKEN_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in TOKEN_COLUMNS if not c.is_set)

# Each near-miss column: (the canonical value, its salt, the function making its fragments).
_NEAR_FORMS: dict[str, tuple[pl.Expr, pl.Expr, object]] = {
    "_f_tok_surname_near": (pl.col(_SURNAME), pl.col(_FIRST).str.head(1), near.name_fragments),
    "_f_tok_forename_near": (pl.col(_FIRST), pl.col(_SURNAME).str.head(1), near.name_fragments),
}

# A row with none of these can be linked to nobody, by any rank or by the probabilistic model (a name
# alone is not enough). Over the raw identifier columns, so such rows are set aside before tokenising.
NO_USABLE_IDENTIFIER = (
    normalise.nhs_number_expr("nhs_number").is_null()
    & pl.col("date_of_birth").is_null()
    & normalise.postcode_expr("postcode").is_null()
)
# The same test over an identifier block's canonical forms (`_block_table`): every row of a block
# has the same identifiers, so a big extract is tested once per block, not once per row.
UNUSABLE = "_unusable"


def _with_base_forms(lf: pl.LazyFrame) -> pl.LazyFrame:
    lf = normalise.with_postcode(normalise.with_nhs_number(lf, "nhs_number", _NHS), "postcode", _POSTCODE)
    return lf.with_columns(
        normalise.date_expr("date_of_birth").alias(_DOB),
        normalise.date_ym_expr("date_of_birth").alias(_DOB_YM),
        normalise.sex_expr("sex").alias(_SEX),
        normalise.date_swapped_expr("date_of_birth").alias(_DOB_SWAP),
    )


def _name_forms(values: pl.Series, forms: dict[str, object]) -> pl.DataFrame:
    """A lookup from each distinct raw name to its canonical forms, computed in Python once per name."""
    raw = values.drop_nulls().unique().sort().to_list()
    columns: dict[str, list] = {values.name: raw}
    for name, make in forms.items():
        columns[name] = [make(v) for v in raw]
    return pl.DataFrame(columns, schema={values.name: pl.String, **{n: pl.String for n in forms}})


def _with_name_forms(lf: pl.LazyFrame) -> pl.LazyFrame:
    distinct = lf.select(pl.col("given_name").unique().implode(), pl.col("family_name").unique().implode()).collect()
    given = distinct.get_column("given_name").explode()
    family = distinct.get_column("family_name").explode()
    forenames = _name_forms(
        given,
        {
            _FIRST: lambda v: names.canonical_forenames(v)[0],
            _FORENAMES: lambda v: names.canonical_forenames(v)[1],
            _FIRST_SDX: lambda v: names.name_soundex(names.canonical_forenames(v)[0]),
        },
    )
    surnames = _name_forms(
        family,
        {_SURNAME: names.canonical_name, _SURNAME_SDX: lambda v: names.name_soundex(names.canonical_name(v))},
    )
    return lf.join(forenames.lazy(), on="given_name", how="left").join(surnames.lazy(), on="family_name", how="left")


def _with_near_forms(lf: pl.LazyFrame) -> pl.LazyFrame:
    """`lf` (with base and name forms) with each near-miss column's fragments, made in Python once
    per distinct (value, salt): a few tens of thousands of names."""
    pairs = lf.select([pl.struct(v.alias("v"), s.alias("s")).unique().implode().alias(out) for out, (v, s, _) in _NEAR_FORMS.items()]).collect()
    for out, (value, salt, make) in _NEAR_FORMS.items():
        distinct = pairs.get_column(out).explode().struct.unnest().drop_nulls()
        lookup = distinct.with_columns(
            pl.Series(out, [make(v, s) for v, s in distinct.iter_rows()], dtype=pl.List(pl.String))
        ).rename({"v": f"{out}_v", "s": f"{out}_s"})
        lf = lf.with_columns(value.alias(f"{out}_v"), salt.alias(f"{out}_s")).join(
            lookup.lazy(), on=[f"{out}_v", f"{out}_s"], how="left", maintain_order="left"
        ).drop(f"{out}_v", f"{out}_s")
    return lf


def _with_canonical(lf: pl.LazyFrame, near: bool = True) -> pl.LazyFrame:
    """`lf` with the canonical value behind each token column as `_c_<column>`; with `near=False`
    the scalar columns only (the near-miss columns' values and salts are there to make them from)."""
    lf = _with_base_forms(_with_name_forms(lf))
    if near:
        lf = _with_near_forms(lf)
    return lf.with_columns([c.canonical.alias(f"_c_{c.name}") for c in TOKEN_COLUMNS if near or not c.is_set])


def canonical_forms(lf: pl.LazyFrame) -> pl.LazyFrame:
    """`lf` with the canonical value behind each token column, named like the token column (for tests
    and vectors). Rows come back in no particular order."""
    columns = lf.collect_schema().names()
    return _with_canonical(lf).select(*columns, *[pl.col(f"_c_{c.name}").alias(c.name) for c in TOKEN_COLUMNS])


def _quality_exprs() -> list[pl.Expr]:
    """Counts of missing and unusable identifiers (never the values), for the run's audit, over
    identifier blocks weighted by how many rows carry each."""
    nhs, pc, rows = pl.col("nhs_number"), pl.col("postcode"), pl.col("_rows")
    counted = {
        "nhs_number_missing": nhs.is_null(),
        "nhs_number_invalid": nhs.is_not_null() & _nhs.is_null(),
        "date_of_birth_missing": pl.col("date_of_birth").is_null(),
        "sex_not_f_or_m": _sex.is_null(),
        "postcode_missing": pc.is_null(),
        "postcode_invalid": pc.is_not_null() & _postcode.is_null(),
        "surname_missing_or_unusable": pl.col(_SURNAME).is_null(),
        "forename_missing_or_unusable": pl.col(_FIRST).is_null(),
    }
    return [rows.sum().alias("rows")] + [rows.filter(cond).sum().alias(name) for name, cond in counted.items()]


def _set_token_columns(kept: pl.DataFrame, key: LinkageKey, field: str, columns: list[TokenColumn]) -> dict[str, pl.Series]:
    """The near-miss columns of the blocks `kept`: for each, every block's sorted list of distinct
    tokens (strings), null where it has no fragments.

    A name and its salt repeat over many blocks (a few tens of thousands of pairs for a million
    blocks), so fragments, their tokens and each pair's sorted list are made once per distinct pair,
    and a join takes the lists to the blocks."""
    pairs, fragments = {}, {}
    for c in columns:
        value, salt, make = _NEAR_FORMS[f"_f_{c.name}"]
        pairs[c.name] = kept.select(value.alias("v"), salt.alias("s"))
        distinct = pairs[c.name].unique().drop_nulls()
        made = pl.Series("f", [make(v, s) for v, s in distinct.iter_rows()], dtype=pl.List(pl.String))
        fragments[c.name] = distinct.with_columns(made).with_row_index("_i")
    every = pl.concat([f.get_column("f").explode() for f in fragments.values()]).drop_nulls().unique()
    lookup = pl.DataFrame({"f": every, "t": tokenise_distinct(key, field, every)})
    out = {}
    for name, frame in fragments.items():
        lists = frame.select("_i", "f").explode("f").drop_nulls("f").join(lookup, on="f").group_by("_i").agg(pl.col("t").unique().sort())
        per_pair = frame.join(lists, on="_i", how="left").select("v", "s", "t")
        out[name] = pairs[name].join(per_pair, on=["v", "s"], how="left", maintain_order="left").get_column("t").alias(name)
    return out


def _block_table(
    lf: pl.LazyFrame, key: LinkageKey, keep: pl.Expr | None, usable_only: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """(the kept identifier blocks of `lf`, each with its token columns as categoricals; the blocks not
    kept, with UNUSABLE; identifier-quality counts over all rows).

    The records of one person repeat the same block, so an extract of 50 million rows has a few
    million distinct blocks. One pass over `lf` finds them (with how many rows carry each); their
    canonical values are tokenised once per field and distinct value (`tokenise_distinct`). A block
    is kept when `keep` holds on one of its rows and, with `usable_only`, it has a usable identifier
    (UNUSABLE, tested here once per block). Values of blocks not kept are never tokenised.
    """
    started = time.perf_counter()
    keep = pl.lit(True) if keep is None else keep
    ids = list(IDENTIFIER_COLUMNS)
    blocks = lf.group_by(ids).agg(pl.len().alias("_rows"), keep.any().alias("_keep")).collect()
    unusable = (_nhs.is_null() & pl.col("date_of_birth").is_null() & _postcode.is_null()).alias(UNUSABLE)
    canon = _with_canonical(blocks.lazy(), near=False).with_columns(unusable).collect()
    counts = {k: int(v) for k, v in canon.select(_quality_exprs()).row(0, named=True).items()}

    kept_block = pl.col("_keep") & ~pl.col(UNUSABLE) if usable_only else pl.col("_keep")
    not_kept = canon.filter(~kept_block).select(*ids, UNUSABLE)
    # The kept blocks' canonical values, and the name forms their near-miss fragments are made from:
    # one copy of them (not `canon` beside it), each field's values dropped once it is tokenised: about
    # 300 bytes a block (876 MB for hospital_apc's 3.0 million blocks at 3M people).
    n_blocks = canon.height
    kept = canon.filter(kept_block).select(*ids, *[f"_c_{c.name}" for c in TOKEN_COLUMNS if not c.is_set], _SURNAME, _FIRST)
    del canon
    table = kept.select(ids)
    for field in dict.fromkeys(c.field for c in TOKEN_COLUMNS):
        columns = [c for c in TOKEN_COLUMNS if c.field == field]
        if all(c.is_set for c in columns):
            table = table.with_columns(**_set_token_columns(kept, key, field, columns))
            continue
        distinct = pl.concat([kept.get_column(f"_c_{c.name}") for c in columns]).drop_nulls().unique().alias("v")
        # Held as categoricals (a 4-byte code per block, each distinct token stored once) until the
        # rows are written: the join back to the rows then moves codes, not 64-character strings,
        # and the block table of a big extract takes a fraction of the memory.
        tokens = tokenise_distinct(key, field, distinct).cast(pl.Categorical(pl.Categories.random()))
        lookup = pl.DataFrame({"v": distinct, "t": tokens})
        for c in columns:
            token = kept.select(pl.col(f"_c_{c.name}").alias("v")).join(lookup, on="v", how="left", maintain_order="left")
            table = table.with_columns(token.get_column("t").alias(c.name))
        kept = kept.drop([f"_c_{c.name}" for c in columns])
        del distinct, tokens, lookup
    log.info(
        "tokenised %d identifier blocks of %d rows (%d kept) in %.1fs",
        n_blocks, counts["rows"], table.height, time.perf_counter() - started,
    )  # fmt: skip
    return table, not_kept, counts


def tokenise_identifiers(
    lf: pl.LazyFrame, key: LinkageKey, keep: pl.Expr | None = None
) -> tuple[pl.LazyFrame, dict[str, int]]:
    """The rows of `lf` where `keep` holds, with the token columns added; and identifier-quality
    counts over all rows (`_block_table`). One join on the identifier columns takes each block's
    tokens back to its rows. The identifier columns are left for the caller to drop.
    """
    table, _, counts = _block_table(lf, key, keep)
    keep = pl.lit(True) if keep is None else keep
    # nulls_equal: a block with a missing identifier must still find its own tokens. maintain_order:
    # rows keep the input's order (reproducible bytes) while the join still streams. Tokens become
    # strings again row by row, after the join.
    out = lf.filter(keep).join(table.lazy(), on=list(IDENTIFIER_COLUMNS), how="left", nulls_equal=True, maintain_order="left")
    return out.with_columns(pl.col(SCALAR_TOKEN_COLUMN_NAMES).cast(pl.String)), counts


def number_token_blocks(frame: pl.DataFrame, first: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(`frame` with TOKEN_BLOCK in place of its token columns, the token blocks).

    A token block is one distinct combination of the token columns: the blocks are numbered from
    `first` in the sort order of their tokens (so the numbers depend only on the tokens, never on row
    order, and say nothing about the identifiers behind them). The blocks frame holds TOKEN_BLOCK and
    the token columns, one row per block.
    """
    # The near-miss lists (last among the token columns) follow from the name tokens (each is made from
    # a name and the other name's initial), so the scalar tokens alone tell blocks apart and order them
    # as all the columns would; lists of 64-character strings are then never hashed, compared or joined.
    keys = list(SCALAR_TOKEN_COLUMN_NAMES)
    blocks = (
        frame.select(TOKEN_COLUMN_NAMES)
        .unique(subset=keys, keep="any")
        .sort(keys, nulls_last=True)
        .with_row_index(TOKEN_BLOCK, offset=first)
        .with_columns(pl.col(TOKEN_BLOCK).cast(pl.Int64))
    )
    numbered = frame.select(pl.exclude(SET_TOKEN_COLUMN_NAMES)).join(
        blocks.select(*keys, TOKEN_BLOCK), on=keys, how="left", nulls_equal=True, maintain_order="left"
    )
    return numbered.drop(keys), blocks


def tokenise_blocks(
    lf: pl.LazyFrame, key: LinkageKey, keep: pl.Expr | None = None, first_block: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """(every identifier block of `lf`: the identifier columns, UNUSABLE and TOKEN_BLOCK, null for a
    block not kept; the token blocks; identifier-quality counts over all rows). A block is kept when
    `keep` holds on one of its rows and it has a usable identifier.

    Tokens are written once per token block, not once per row: a source's rows then take a block
    number each, by a join on their identifiers (`pipeline.pseudonymise.records.with_blocks`), and
    50 million rows need a few million rows of tokens (schemas/token_blocks.yaml,
    schemas/record_blocks.yaml). Blocks are numbered from `first_block` (`number_token_blocks`).
    """
    table, not_kept, counts = _block_table(lf, key, keep, usable_only=True)
    numbered, blocks = number_token_blocks(table, first_block)
    columns = [*IDENTIFIER_COLUMNS, UNUSABLE, TOKEN_BLOCK]
    every = pl.concat(
        [
            numbered.with_columns(pl.lit(False).alias(UNUSABLE)).select(columns),
            not_kept.with_columns(pl.lit(None, dtype=pl.Int64).alias(TOKEN_BLOCK)).select(columns),
        ]
    )
    return every, blocks, counts
