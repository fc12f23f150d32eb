"""The probabilistic model: which token columns it reads, its comparisons, blocking rules and
threshold. Pure data and pure functions returning Splink settings; pipeline.link.probabilistic runs
them (the plan kept apart from running it, as Splink itself does).

`COMPARISON_COLUMNS` is the one place that maps the model's names to token columns of
schemas/_tokens.yaml: rename a token column there and nothing else changes. Inside Splink every
column carries the model's name, so a saved model reads the same whatever the tokens are called.

Every comparison is agreement of tokens (a keyed hash hides how close two names are), so closeness
is expressed by agreement on coarser tokens, as ordered levels of one comparison (so correlated tokens
are never counted twice): the full name, then the first forename, then its phonetic code with the
other name's initial, then a shared near-miss token (token spec v3: the two values are one edit
apart); the date of birth with sex, then the date alone (no near-miss level for dates or postcodes:
docs/token-spec.md section 7). Token
spec v2 has no token of a field with few values (sex, postcode sector or district, initials, year and
month of birth: docs/token-spec.md), so sex counts only beside the date of birth, and a postcode
agrees as a unit or not at all. A forename and surname given the other way round is a level of
each name comparison of its own (model version 3).

    >>> ProbabilisticOptions().threshold_match_probability
    0.9
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

# The model's name for an identifier -> the token column that carries it (schemas/_tokens.yaml).
COMPARISON_COLUMNS: dict[str, str] = {
    "nhs": "tok_nhs",
    "surname": "tok_surname",
    "surname_phonetic": "tok_surname_phonetic_initial",  # Soundex of the surname | forename initial
    "forename": "tok_forename",  # every forename, joined
    "forename_first": "tok_forename_first",
    "forename_phonetic": "tok_forename_phonetic_initial",  # Soundex of the first forename | surname initial
    "dob": "tok_dob",
    "dob_sex": "tok_dob_sex",
    "postcode": "tok_postcode",
    # Token spec v3: near-miss tokens, lists; two values one edit apart share one (docs/token-spec.md 3.8).
    "surname_near": "tok_surname_near",
    "forename_near": "tok_forename_near",
}
# Every address a participant is known at: the register's, plus those on the participant's records
# linked by NHS number (ranks 1-4). A record carries its one address in the same list form.
ADDRESS_LISTS: dict[str, str] = {"postcodes": "postcode"}
# 2: token spec v2 (no sex, sector, district, initials, swap or year-month tokens).
# 3: blocking on the date of birth, the postcode, both Soundex tokens or swapped names; swapped-name levels.
# 4: token spec v3; a "one edit apart" level below the exact levels of both name comparisons (near-miss
#    tokens; none for dates of birth or postcodes, docs/token-spec.md section 7).
MODEL_VERSION = "4"

# A candidate pair is never formed where both sides have an NHS number and the numbers differ: the
# same rule as rank 5 ("where the NHS numbers do not contradict").
NHS_DO_NOT_CONTRADICT = "(l.nhs IS NULL OR r.nhs IS NULL OR l.nhs = r.nhs)"


@dataclass(frozen=True)
class ProbabilisticOptions:
    """Settings of the probabilistic step, validated once and written into the linkage summary."""

    # A record links to the one participant whose match probability reaches this; two or more
    # participants reaching it make a conflict (reported, left unlinked). See docs/linkage.md.
    threshold_match_probability: float = 0.9
    # Pairs drawn at random to estimate u (chance agreement among non-matches), per source.
    u_max_pairs: float = 3e6
    # Blocked pairs each EM session samples (None: all of them), per source.
    em_max_pairs: float | None = 5e5
    # Term-frequency adjustment of exact name agreement (common names weigh less).
    term_frequency_adjustments: bool = True
    # Participant addresses for the postcode comparison: the register's only, or also those on
    # records linked by NHS number (ranks 1-4), so a house move is not counted against a match.
    addresses: Literal["register", "register_and_linked"] = "register_and_linked"
    # Smallest m a level keeps after training. EM puts m near 0 on levels it (almost) never sees among
    # true pairs (sex disagreeing, on synthetic data never), which would make one such disagreement
    # veto any link; a floor keeps it a strong, finite penalty. m of each comparison is renormalised.
    m_floor: float = 1e-3
    # Fewer scoreable records or participants than this: no model is trained for the source.
    min_records_to_train: int = 50
    # Profiles of a source trained on at most (a seeded sample beyond it; scoring always uses all).
    max_training_profiles: int = 1_000_000
    # Records of a source scored per chunk (pipeline.link.probabilistic.score_pairs_to_parts): the
    # engine holds one chunk's pairs at a time and writes them to disk. The pairs, and so the links,
    # do not depend on it.
    records_per_scoring_chunk: int = 250_000
    # DuckDB's memory ceiling; beyond it DuckDB spills to the run's temporary folder. A scoring
    # chunk's pairs fill whatever it allows (at a million people, one source's rank P step peaked at
    # 4.2 GB with 3GB, 2.8 GB with 1500MB and 2.3 GB with 1GB, for 10-16% more CPU and the same wall
    # time), so it is what keeps the step's memory from growing with the pairs.
    duckdb_memory_limit: str = "1GB"
    # The engine Splink runs on (pipeline.link.backends): DuckDB in the link_rank_p task's process, or Spark.
    backend: Literal["duckdb", "spark"] = "duckdb"
    seed: int = 2026

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold_match_probability < 1:
            raise ValueError("threshold_match_probability must be at least 0.5 and below 1")
        if self.u_max_pairs < 1e4:
            raise ValueError("u_max_pairs must be at least 10,000 for a usable estimate of u")
        if not 0 <= self.m_floor < 0.05:
            raise ValueError("m_floor must be at least 0 and below 0.05")
        if self.addresses not in ("register", "register_and_linked"):
            raise ValueError("addresses must be 'register' or 'register_and_linked'")
        if self.records_per_scoring_chunk < 1:
            raise ValueError("records_per_scoring_chunk must be at least 1")
        if self.backend not in ("duckdb", "spark"):
            raise ValueError("backend must be 'duckdb' or 'spark'")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Comparisons: each a list of exact-agreement levels, best first, after a null level.


def _level(sql: str, label: str, tf: str | None = None, null: bool = False) -> dict[str, Any]:
    level: dict[str, Any] = {"sql_condition": sql, "label_for_charts": label}
    if tf:
        level |= {"tf_adjustment_column": tf, "tf_adjustment_weight": 1.0}
    if null:
        level["is_null_level"] = True
    return level


def _eq(col: str) -> str:
    return f'"{col}_l" = "{col}_r"'


def _either_null(col: str) -> str:
    return f'"{col}_l" IS NULL OR "{col}_r" IS NULL'


def _swapped(col: str, other: str) -> str:
    """Either side's `col` is the other side's `other` (forename and surname given the other way round)."""
    return f'"{col}_l" = "{other}_r" OR "{other}_l" = "{col}_r"'


def _shares(col: str) -> str:
    return f'list_has_any("{col}_l", "{col}_r")'


_ELSE = {"sql_condition": "ELSE", "label_for_charts": "all other"}


def comparisons(tf: bool = True) -> list[dict[str, Any]]:
    """The four comparisons of the model, as Splink comparison dictionaries."""

    def t(col: str) -> str | None:
        return col if tf else None

    return [
        {
            "output_column_name": "forename",
            "comparison_description": "forenames: all, first, first's phonetic code with the surname's initial",
            "comparison_levels": [
                _level(_either_null("forename_first"), "forename missing", null=True),
                _level(_eq("forename"), "all forenames agree", tf=t("forename")),
                _level(_eq("forename_first"), "first forename agrees", tf=t("forename_first")),
                _level(_eq("forename_phonetic"), "first forenames sound alike, surname initials agree"),
                _level(_shares("forename_near"), "first forenames one edit apart, surname initials agree"),
                _level(_swapped("forename_first", "surname"), "first forename is the other's surname"),
                _ELSE,
            ],
        },
        {
            "output_column_name": "surname",
            "comparison_description": "surname, then its phonetic code with the forename's initial",
            "comparison_levels": [
                _level(_either_null("surname"), "surname missing", null=True),
                _level(_eq("surname"), "surname agrees", tf=t("surname")),
                _level(_eq("surname_phonetic"), "surnames sound alike, forename initials agree"),
                _level(_shares("surname_near"), "surnames one edit apart, forename initials agree"),
                _level(_swapped("surname", "forename_first"), "surname is the other's first forename"),
                _ELSE,
            ],
        },
        {
            # Sex has no token of its own (token spec v2): it counts as the best level of the date of
            # birth, so a pair agreeing on both is not credited twice for correlated evidence.
            "output_column_name": "dob",
            "comparison_description": "date of birth and sex, then date of birth",
            "comparison_levels": [
                _level(_either_null("dob"), "date of birth missing", null=True),
                _level(_eq("dob_sex"), "date of birth and sex agree"),
                _level(_eq("dob"), "date of birth agrees, sex differs or is unknown"),
                _ELSE,
            ],
        },
        {
            "output_column_name": "postcode",
            "comparison_description": "postcode unit, against every known address of the participant",
            "comparison_levels": [
                _level('"postcodes_l" IS NULL OR "postcodes_r" IS NULL', "postcode missing", null=True),
                _level(_shares("postcodes"), "postcode unit agrees"),
                _ELSE,
            ],
        },
    ]


# ---------------------------------------------------------------------------------------------------
# Blocking: which pairs are scored at all. Each rule is an equi-join on tokens; a true pair none of
# them forms is lost whatever the model, so together they must form nearly every true pair: 99.7% on
# the public FEBRL3 data with corrupted identifiers (bench/public_linkage.py measures this ceiling),
# against 71% for version 2's narrower rules. One token alone (the date of birth, the postcode) pairs a
# record with a few dozen participants at a million people (docs/linkage.md).

BLOCKING_RULES: tuple[str, ...] = (
    "l.dob = r.dob",
    "l.postcode = r.postcode",
    # Date of birth and postcode both wrong: names that sound alike, or forename and surname swapped.
    "l.forename_phonetic = r.forename_phonetic AND l.surname_phonetic = r.surname_phonetic",
    "l.forename_first = r.surname AND l.surname = r.forename_first",
)
# EM sessions: each blocks on some identifiers and estimates m for the others.
TRAINING_RULES: tuple[str, ...] = (
    "l.dob = r.dob",
    "l.surname = r.surname AND l.forename_first = r.forename_first",
)


def floor_m(model: dict[str, Any], m_floor: float) -> dict[str, Any]:
    """The model with every trained m of at least `m_floor`, each comparison's m renormalised to 1.

        >>> m = {"comparisons": [{"comparison_levels": [{"m_probability": 0.999}, {"m_probability": 1e-9}]}]}
        >>> [round(x["m_probability"], 4) for x in floor_m(m, 0.001)["comparisons"][0]["comparison_levels"]]
        [0.999, 0.001]
    """
    out = copy.deepcopy(model)
    for comparison in out["comparisons"]:
        levels = [lvl for lvl in comparison["comparison_levels"] if isinstance(lvl.get("m_probability"), float | int)]
        if not levels:
            continue
        for lvl in levels:
            lvl["m_probability"] = max(float(lvl["m_probability"]), m_floor)
        total = sum(lvl["m_probability"] for lvl in levels)
        for lvl in levels:
            lvl["m_probability"] /= total
    return out


def with_nhs_rule(rule: str) -> str:
    return f"{rule} AND {NHS_DO_NOT_CONTRADICT}"


def splink_settings(options: ProbabilisticOptions, prior: float) -> dict[str, Any]:
    """The Splink settings dictionary of an untrained model (link records to participants)."""
    return {
        "link_type": "link_only",
        "unique_id_column_name": "uid",
        "source_dataset_column_name": "source_dataset",
        "probability_two_random_records_match": prior,
        "comparisons": comparisons(options.term_frequency_adjustments),
        "blocking_rules_to_generate_predictions": [{"blocking_rule": with_nhs_rule(r)} for r in BLOCKING_RULES],
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
        "em_convergence": 0.0001,
        "max_iterations": 25,
    }


def model_columns() -> list[str]:
    """The columns every table given to Splink carries, in order."""
    return ["uid", *COMPARISON_COLUMNS, *ADDRESS_LISTS]
