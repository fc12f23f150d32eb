"""Survey answers: EQ-5D-5L, EQ VAS, the eight ASCOT items and the number of long-term conditions,
at baseline (everyone in the consent register, decliners too) and at 12-month follow-up (~80%).

Answers come from one latent "ill-health" per person and wave: the need score plus person-level
noise at baseline; at follow-up a little worse (a year older) and, for the MDT arm, better by
`MDT_FOLLOWUP_GAIN`. Each item is an ordered-probit-style cut of that latent plus item noise, so
items correlate with each other and with service use the way real answers do. The thresholds were
set so the levels look like published EQ-5D-5L profiles of older people with multimorbidity
(most report some problems with mobility and pain, few with self-care) and the VAS averages ~65.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.synth import study
from pipeline.synth.population import as_dates, sigmoid, solve_intercept
from pipeline.synth.profiles import FaultRates

# Improvement of the MDT arm's latent ill-health at follow-up, in the latent's units (its SD is ~0.9).
MDT_FOLLOWUP_GAIN = 0.15
AGEING_PER_YEAR = 0.05
# (column, offset of the first threshold): a higher offset means fewer people report problems.
EQ5D = (("eq5d_mobility", 0.0), ("eq5d_selfcare", 0.9), ("eq5d_usual", 0.3), ("eq5d_pain", -0.1), ("eq5d_anxiety", 0.5))
ASCOT = (
    ("ascot_control", 0.7), ("ascot_care", 1.2), ("ascot_food", 1.5), ("ascot_safety", 1.2),
    ("ascot_social", 0.6), ("ascot_occupation", 0.7), ("ascot_accommodation", 1.5), ("ascot_dignity", 1.4),
)  # fmt: skip
ITEMS: tuple[str, ...] = tuple(c for c, _ in EQ5D) + ("eq_vas",) + tuple(c for c, _ in ASCOT)


def _levels(rng: np.random.Generator, latent: np.ndarray, offset: float, n_levels: int, step: float) -> np.ndarray:
    """1 + the number of thresholds (offset, offset + step, ...) the noisy latent passes."""
    x = latent + rng.normal(0.0, 0.8, size=latent.shape[0])
    thresholds = offset + step * np.arange(n_levels - 1)
    return 1 + (x[:, None] > thresholds).sum(axis=1)


def _answers(rng: np.random.Generator, latent: np.ndarray) -> dict[str, np.ndarray]:
    out = {col: _levels(rng, latent, off, 5, 0.8) for col, off in EQ5D}
    out["eq_vas"] = np.clip(np.round(68 - 12 * latent + rng.normal(0, 12, size=latent.shape[0])), 0, 100)
    out.update({col: _levels(rng, latent, off, 4, 1.0) for col, off in ASCOT})
    return out


def build_survey(seed: int, persons: pl.DataFrame, faults: FaultRates) -> pl.DataFrame:
    """Every questionnaire, sorted by response_id (numbered in order of date, then participant)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    reg = persons.filter(pl.col("in_register")).sort("participant_id")
    n = reg.height
    need = reg.get_column("need").to_numpy()
    is_mdt = (reg.get_column("arm") == "mdt").to_numpy()
    baseline_day = reg.get_column("baseline_survey_date").cast(pl.Int32).to_numpy().astype(np.int64)

    latent0 = need + rng.normal(0.0, 0.5, size=n)
    latent1 = latent0 + AGEING_PER_YEAR + rng.normal(0.0, 0.3, size=n) - MDT_FOLLOWUP_GAIN * is_mdt
    # The sicker are a little less likely to return the follow-up questionnaire.
    p_follow = sigmoid(solve_intercept(-0.3 * need, study.FOLLOWUP_RESPONSE) - 0.3 * need)
    answered = rng.random(n) < p_follow
    followup_day = baseline_day + study.FOLLOWUP_AFTER_DAYS + rng.integers(
        -study.FOLLOWUP_JITTER_DAYS, study.FOLLOWUP_JITTER_DAYS + 1, size=n
    )

    waves = []
    for wave, latent, day, keep in (
        ("baseline", latent0, baseline_day, np.ones(n, dtype=bool)),
        ("followup", latent1, followup_day, answered),
    ):
        answers = _answers(rng, latent)
        frame = pl.DataFrame(
            {
                "participant_id": reg.get_column("participant_id"),
                "wave": pl.Series([wave] * n, dtype=pl.String),
                "survey_date": as_dates(day),
                "n_ltc": reg.get_column("n_ltc"),
                **{col: pl.Series(v.astype(np.int64)) for col, v in answers.items()},
            }
        )
        # Item non-response: each item blank independently (never n_ltc, which eligibility needs).
        blanks = rng.random((n, len(ITEMS))) < faults.survey_item_missing
        frame = frame.with_columns(
            [pl.when(pl.lit(pl.Series(blanks[:, j]))).then(None).otherwise(pl.col(c)).alias(c) for j, c in enumerate(ITEMS)]
        )
        waves.append(frame.filter(pl.lit(pl.Series(keep))))
    survey = pl.concat(waves).sort("survey_date", "participant_id", "wave")
    return survey.with_columns(response_id=pl.format("R{}", pl.int_range(1, survey.height + 1).cast(pl.String).str.zfill(8)))
