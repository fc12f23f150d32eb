"""The identifiers each record carries: the person's true ones, with faults injected at the profile's rates.

Everything is vectorised over the records of one chunk: person attributes are gathered by person
index, a fault is drawn as a Boolean mask, and the faulty values are computed only for the masked
rows and scattered back. The kinds of fault and what the pipeline is expected to do about them:

| fault            | what the record carries                       | linkage answer                     |
| ---------------- | --------------------------------------------- | ---------------------------------- |
| nhs_missing      | no NHS number                                 | ranks 5 / P                        |
| nhs_invalid      | transposed digits or a wrong check digit      | fails Modulus 11, treated as missing |
| nickname         | Bill for William                              | probabilistic (name-phonetic etc.) |
| surname_part     | Jones for Smith-Jones                         | probabilistic                      |
| typo_given/family| one character substituted, dropped, swapped   | probabilistic                      |
| dob_swap         | day and month of birth swapped                | rank 3 (tok_nhs_dob_swap)          |
| sex_unknown      | U                                             | ranks without sex                  |
| postcode_format  | no space and/or lower case                    | none needed after canonicalisation |
| postcode_moved   | a different postcode from the register's (house move) | ranks without postcode     |

The record's `faults` (for the ground truth) lists which applied, separated by ';', or null.

The consent register is the evaluation's own list and carries no identifier faults, but the `hard`
profile writes register errors into it (`register_errors`), which the consent gate must set aside
or resolve to the most restrictive decision:

| register error            | what the register holds                                  | consent gate answer |
| ------------------------- | -------------------------------------------------------- | ------------------- |
| withdrawal_far_future     | a withdrawal dated in 2099 (a mistyped year)             | quarantined         |
| withdrawal_before_consent | a withdrawal dated 1-60 days before the consent          | quarantined         |
| same_nhs_number_declined  | a second participant ID, same identifiers, who declined  | both rows excluded  |
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.synth import study
from pipeline.synth.identifiers import invalidate
from pipeline.synth.population import Population
from pipeline.synth.profiles import FaultRates

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
FAULT_NAMES: tuple[str, ...] = (
    "nhs_missing", "nhs_invalid", "nickname", "surname_part", "typo_given", "typo_family",
    "dob_swap", "sex_unknown", "postcode_format", "postcode_moved",
)  # fmt: skip


@dataclass(frozen=True)
class PersonIdentifiers:
    """Each person's true identifiers, in the forms the fault injection needs (row = person_index)."""

    nhs: np.ndarray  # int64, -1 where none
    given: pl.Series
    family: pl.Series
    nickname: pl.Series
    family_first: pl.Series
    family_second: pl.Series
    has_nickname: np.ndarray
    double_barrelled: np.ndarray
    dob_day: np.ndarray
    sex: pl.Series
    move_day: np.ndarray
    before_row: np.ndarray
    after_row: np.ndarray
    home_row: np.ndarray  # the address at index, which the consent register carries
    postcodes: pl.Series  # the postcode lookup, indexed by row

    @classmethod
    def of(cls, pop: Population) -> PersonIdentifiers:
        p = pop.persons
        before = p.get_column("_before_row").to_numpy()
        after = p.get_column("_after_row").to_numpy()
        move = p.get_column("_move_day").to_numpy()
        index = p.get_column("_index_day").to_numpy()
        return cls(
            nhs=p.get_column("_nhs").to_numpy(),
            given=p.get_column("given_name"),
            family=p.get_column("family_name"),
            nickname=p.get_column("nickname"),
            family_first=p.get_column("family_first"),
            family_second=p.get_column("family_second"),
            has_nickname=p.get_column("nickname").is_not_null().to_numpy(),
            double_barrelled=p.get_column("family_first").is_not_null().to_numpy(),
            dob_day=p.get_column("_dob_day").to_numpy(),
            sex=p.get_column("sex"),
            move_day=move,
            before_row=before,
            after_row=after,
            home_row=np.where(move <= index, after, before),
            postcodes=pop.geography.postcodes,
        )


def _replace(values: pl.Series, mask: np.ndarray, new: pl.Series) -> pl.Series:
    idx = np.flatnonzero(mask)
    return values.scatter(idx, new) if idx.size else values


def typos(rng: np.random.Generator, names: pl.Series) -> pl.Series:
    """One keying error per name: a character substituted, dropped, or swapped with the next one.

    The first letter is kept (transcription errors are rarer there, and initials stay usable);
    names too short for a swap get a substitution instead.
    """
    n = names.len()
    if n == 0:
        return names
    op = rng.integers(0, 3, size=n)  # 0 substitute, 1 drop, 2 transpose
    letter = rng.integers(0, 26, size=n)
    df = pl.DataFrame(
        {"s": names, "op": op, "u": rng.random(n), "let": _LETTERS[letter], "alt": _LETTERS[(letter + 1) % 26]}
    )
    s = pl.col("s")
    length = s.str.len_chars()
    op_e = pl.when((pl.col("op") == 2) & (length < 3)).then(0).otherwise(pl.col("op"))
    span = pl.when(op_e == 2).then(length - 2).otherwise(length - 1)
    pos = (1 + (pl.col("u") * span).floor()).cast(pl.Int64)
    here, nxt = s.str.slice(pos, 1), s.str.slice(pos + 1, 1)
    prefix = s.str.slice(0, pos)
    letter_e = pl.when(here.str.to_lowercase() == pl.col("let")).then(pl.col("alt")).otherwise(pl.col("let"))
    out = (
        pl.when(op_e == 0)
        .then(pl.concat_str(prefix, letter_e, s.str.slice(pos + 1)))
        .when((op_e == 1) | (here == nxt))  # swapping two equal letters changes nothing: drop instead
        .then(pl.concat_str(prefix, s.str.slice(pos + 1)))
        .otherwise(pl.concat_str(prefix, nxt, here, s.str.slice(pos + 2)))
    )
    return df.select(out.alias(names.name)).to_series()


def swap_day_month(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(swapped dates, whether a swap was possible): only when the day is 12 or less and not the month."""
    d = pl.Series(days.astype(np.int32)).cast(pl.Date)
    df = pl.DataFrame({"d": d}).select(y=pl.col("d").dt.year(), m=pl.col("d").dt.month(), dd=pl.col("d").dt.day())
    ok = ((df.get_column("dd") <= 12) & (df.get_column("dd") != df.get_column("m"))).to_numpy()
    swapped = df.select(
        pl.when(pl.lit(pl.Series(ok))).then(pl.date("y", "dd", "m")).otherwise(pl.date("y", "m", "dd")).cast(pl.Int32)
    ).to_series()
    return swapped.to_numpy(), ok


def record_identifiers(
    rng: np.random.Generator,
    ids: PersonIdentifiers,
    pid: np.ndarray,
    event_day: np.ndarray,
    faults: FaultRates,
    nhs_missing_rate: float,
) -> pl.DataFrame:
    """The identifier block (schemas/_identifiers.yaml) of records of people `pid` dated `event_day`,
    plus a `faults` column for the ground truth."""
    n = pid.shape[0]
    flags: dict[str, np.ndarray] = {}

    # NHS number. A person without one (beyond the test range's capacity) is not a "fault".
    nhs_true = ids.nhs[pid]
    has = nhs_true >= 0
    flags["nhs_missing"] = has & (rng.random(n) < nhs_missing_rate)
    flags["nhs_invalid"] = has & ~flags["nhs_missing"] & (rng.random(n) < faults.nhs_invalid)
    nhs = nhs_true.copy()
    nhs[flags["nhs_invalid"]] = invalidate(rng, nhs_true[flags["nhs_invalid"]])
    nhs[flags["nhs_missing"]] = -1
    nhs_s = pl.Series(nhs)
    nhs_col = pl.select(pl.when(nhs_s >= 0).then(nhs_s.cast(pl.String)).otherwise(None)).to_series()

    # Names: nickname and surname-part variants, then typos on top.
    given = ids.given.gather(pid)
    flags["nickname"] = ids.has_nickname[pid] & (rng.random(n) < faults.nickname)
    given = _replace(given, flags["nickname"], ids.nickname.gather(pid[flags["nickname"]]))
    family = ids.family.gather(pid)
    flags["surname_part"] = ids.double_barrelled[pid] & (rng.random(n) < faults.surname_part)
    first_part = pl.Series(rng.random(n) < 0.5).filter(pl.Series(flags["surname_part"]))
    part = pid[flags["surname_part"]]
    chosen = ids.family_first.gather(part).zip_with(first_part, ids.family_second.gather(part))
    family = _replace(family, flags["surname_part"], chosen)
    typo = rng.random(n) < faults.name_typo
    on_given = rng.random(n) < 0.5
    flags["typo_given"], flags["typo_family"] = typo & on_given, typo & ~on_given
    given = _replace(given, flags["typo_given"], typos(rng, given.filter(pl.Series(flags["typo_given"]))))
    family = _replace(family, flags["typo_family"], typos(rng, family.filter(pl.Series(flags["typo_family"]))))

    # Date of birth: day and month swapped where the date allows it.
    dob = ids.dob_day[pid].copy()
    want = rng.random(n) < faults.dob_swap
    swapped, ok = swap_day_month(dob[want])
    dob[want] = swapped
    flags["dob_swap"] = np.zeros(n, dtype=bool)
    flags["dob_swap"][np.flatnonzero(want)[ok]] = True

    sex = ids.sex.gather(pid)
    flags["sex_unknown"] = rng.random(n) < faults.sex_unknown
    sex = _replace(sex, flags["sex_unknown"], pl.Series(["U"] * int(flags["sex_unknown"].sum()), dtype=pl.String))

    # Postcode: the address at the time of the record, then formatting slips.
    moved_on = event_day >= ids.move_day[pid]
    row = np.where(moved_on, ids.after_row[pid], ids.before_row[pid])
    postcode = ids.postcodes.gather(row)
    no_space = rng.random(n) < faults.postcode_no_space
    lower = rng.random(n) < faults.postcode_lower
    flags["postcode_format"] = no_space | lower
    sel = flags["postcode_format"]
    p = pl.col("p")
    spaced = pl.when(pl.col("no_space")).then(p.str.replace(" ", "", literal=True)).otherwise(p)
    fmt = (
        pl.DataFrame({"p": postcode.filter(pl.Series(sel)), "no_space": no_space[sel], "lower": lower[sel]})
        .select(pl.when(pl.col("lower")).then(spaced.str.to_lowercase()).otherwise(spaced))
        .to_series()
    )
    postcode = _replace(postcode, flags["postcode_format"], fmt)
    # Differs from the register (address at index) when the record falls on the other side of a move.
    flags["postcode_moved"] = row != ids.home_row[pid]

    out = pl.DataFrame(
        {
            "nhs_number": nhs_col,
            "given_name": given,
            "family_name": family,
            "date_of_birth": pl.Series(dob.astype(np.int32)).cast(pl.Date),
            "sex": sex,
            "postcode": postcode,
        }
    )
    mask_frame = pl.DataFrame({k: flags[k] for k in FAULT_NAMES})
    faults_col = mask_frame.select(
        pl.concat_str([pl.when(pl.col(k)).then(pl.lit(k)) for k in FAULT_NAMES], separator=";", ignore_nulls=True)
        .replace("", None)
        .alias("faults")
    ).to_series()
    return out.with_columns(faults_col)


REGISTER_ERROR_KINDS: tuple[str, ...] = ("withdrawal_far_future", "withdrawal_before_consent", "same_nhs_number_declined")
FAR_FUTURE_YEAR = 2099


def register_errors(rng: np.random.Generator, register: pl.DataFrame, rate: float) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """The register with errors written in at `rate` per row for each kind (at least one each when
    `rate` is above zero), and the participant IDs of each kind for the ground truth.

    Each error falls on a different consented, not withdrawn participant with an NHS number; a
    declined duplicate gets a new participant ID after the last one, as a second recruitment would.
    """
    if rate <= 0:
        return register, {}
    each = max(1, round(rate * register.height))
    pool = register.filter(
        (pl.col("consent_status") == "consented") & pl.col("withdrawal_date").is_null() & pl.col("nhs_number").is_not_null()
    ).get_column("participant_id")
    each = min(each, pool.len() // len(REGISTER_ERROR_KINDS))
    chosen = pool.gather(rng.choice(pool.len(), size=each * len(REGISTER_ERROR_KINDS), replace=False)).to_list()
    kinds = {k: sorted(chosen[i * each : (i + 1) * each]) for i, k in enumerate(REGISTER_ERROR_KINDS)}
    pid, consent = pl.col("participant_id"), pl.col("consent_date")
    before_days = pl.Series(rng.integers(1, 61, size=register.height))
    # The far-future date keeps the consent's month and day (a mistyped year); 28 at most, for February.
    far_future = pl.date(FAR_FUTURE_YEAR, consent.dt.month(), pl.min_horizontal(consent.dt.day(), pl.lit(28)))
    changed = register.with_columns(
        withdrawal_date=pl.when(pid.is_in(kinds["withdrawal_far_future"]))
        .then(far_future)
        .when(pid.is_in(kinds["withdrawal_before_consent"]))
        .then(consent - pl.duration(days=pl.lit(before_days)))
        .otherwise(pl.col("withdrawal_date"))
    )
    last = int(register.get_column("participant_id").str.slice(1).cast(pl.Int64).max())
    new_ids = [f"P{last + i:07d}" for i in range(1, each + 1)]
    later_days = pl.Series(rng.integers(1, 61, size=each))
    duplicates = (
        register.filter(pid.is_in(kinds["same_nhs_number_declined"]))
        .sort("participant_id")
        .with_columns(
            participant_id=pl.Series(new_ids),
            consent_status=pl.lit("declined"),
            consent_date=pl.min_horizontal(consent + pl.duration(days=pl.lit(later_days)), pl.lit(_date(study.EXTRACT_DATE))),
            withdrawal_date=pl.lit(None, dtype=pl.Date),
        )
    )
    kinds["same_nhs_number_declined"] = [f"{a}={b}" for a, b in zip(kinds["same_nhs_number_declined"], new_ids, strict=True)]
    return pl.concat([changed, duplicates]).sort("participant_id"), kinds


def _date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=day)
