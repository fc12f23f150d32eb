"""The samples a release is matched in, as the study lists them (pipeline.study: samples).

Each sample is matched on its own, with its own propensity model (as an analyst would run MatchIt on
the subset), with the run's matching options:
- `all`: every eligible participant;
- `site=<site>` (per_site): the participants of one site (exact matching on site is then a no-op);
- `operating_model=<model>` (per_operating_model): the MDT participants of teams with that operating
  model, against every comparator (comparators have no operating model; exact matching keeps them to
  the same site and sex);
- a named subset: the participants of its sites, of the MDT arm only those of its operating models.

A sample's matched sets become rows of the long `matches` table (one row per sample, participant
and matched set: with replacement a comparator can be in several sets), and its balance rows go to
`balance`. Sample names come from the study, so a new site is a change of the study file only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from pipeline.cohort.balance import balance_table
from pipeline.cohort.covariates import covariate_columns, covariate_names, informative, propensity_covariates
from pipeline.cohort.ladder import balance_summary, chosen_step, imbalanced_covariates, ladder
from pipeline.cohort.matching import MatchResult, PropensityModel, fit_propensity, match
from pipeline.errors import PipelineError
from pipeline.settings import DEFAULT_MAHVARS, MatchingOptions, setting
from pipeline.study import SampleSpec, Study, load_study


@dataclass(frozen=True)
class Sample:
    name: str
    members: pl.Expr  # which cohort rows belong to it


def _members(spec: SampleSpec) -> pl.Expr:
    rule = pl.lit(True)
    if spec.sites is not None:
        rule = rule & pl.col("site").is_in(list(spec.sites))
    if spec.operating_models is not None:
        rule = rule & ((pl.col("arm") == "comparator") | pl.col("operating_model").is_in(list(spec.operating_models)))
    return rule


def samples(study: Study | None = None) -> tuple[Sample, ...]:
    """The study's samples, in its order."""
    return tuple(Sample(spec.name, _members(spec)) for spec in (study or load_study()).samples)
MATCHES_SCHEMA = {
    "sample": pl.String, "participant_id": pl.String, "matched_set": pl.Int32, "arm": pl.String,
    "weight": pl.Float64, "propensity_score": pl.Float64,
}  # fmt: skip


@dataclass(frozen=True)
class SampleMatch:
    """One sample's members (cohort rows), propensity logits and matching result."""

    name: str
    participant_id: pl.Series
    arm: pl.Series
    treated: np.ndarray
    logit: np.ndarray
    result: MatchResult
    balance: pl.DataFrame
    # The propensity model, the ladder's attempts (what the manifest records) and the step kept.
    model: PropensityModel | None = None
    attempts: tuple[dict, ...] = ()
    options: MatchingOptions | None = None

    @property
    def balanced(self) -> bool:
        return bool(self.attempts and self.attempts[self.chosen]["balanced"])

    @property
    def chosen(self) -> int:
        return next((i for i, a in enumerate(self.attempts) if a.get("kept")), 0)

    def diagnostics(self, threshold: float) -> dict:
        """The manifest's record of the sample: counts, the kept step's balance, every attempt, the model."""
        kept = self.attempts[self.chosen] if self.attempts else balance_summary(self.balance, threshold)
        return {
            **self.counts(),
            **{k: kept[k] for k in ("max_abs_smd_after", "worst_covariate", "variance_ratio_after_min", "variance_ratio_after_max", "balanced")},
            "balance_threshold": threshold,
            "specification": self.options.describe() if self.options else None,
            "attempts": list(self.attempts),
            "propensity_model": self.model.to_json() if self.model else None,
        }

    @property
    def propensity_score(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit))

    def counts(self) -> dict[str, int]:
        t, w = self.treated, self.result.weight
        return {
            "mdt": int(t.sum()),
            "comparators": int((~t).sum()),
            "matched_mdt": int((self.result.treated_set > 0).sum()),
            "matched_comparators": int(((w > 0) & ~t).sum()),
            "unmatched_mdt": int(t.sum() - (self.result.treated_set > 0).sum()),
        }

    def matches(self) -> pl.DataFrame:
        """sample, participant_id, matched_set, arm, weight (within the set), propensity_score."""
        r = self.result
        per_set = np.bincount(r.pair_set) if len(r.pair_set) else np.zeros(1)
        heads = np.flatnonzero(r.treated_set > 0)
        rows = np.concatenate([heads, r.pair_control])
        sets = np.concatenate([r.treated_set[heads], r.pair_set])
        weight = np.concatenate([np.ones(len(heads)), 1.0 / per_set[r.pair_set]])
        return pl.DataFrame(
            {
                "sample": [self.name] * len(rows),
                "participant_id": self.participant_id.gather(rows),
                "matched_set": sets,
                "arm": self.arm.gather(rows),
                "weight": weight,
                "propensity_score": self.propensity_score[rows],
            },
            schema=MATCHES_SCHEMA,
        ).sort("matched_set", "arm", "participant_id", descending=[False, True, False])


def strata_codes(frame: pl.DataFrame, exact: tuple[str, ...]) -> np.ndarray:
    """Integer codes of the combinations of the exact-matching columns (all zero when none)."""
    if not exact or not frame.height:
        return np.zeros(frame.height, dtype=np.int64)
    unknown = [c for c in exact if c not in frame.columns]
    if unknown:
        raise ValueError(f"matching option exact names {unknown}, which are not cohort columns; use e.g. site, sex, age_band")
    return frame.select(pl.struct(list(exact)).rank("dense").alias("s")).get_column("s").to_numpy().astype(np.int64)


def match_sample(cohort: pl.DataFrame, sample: Sample, options: MatchingOptions, study: Study | None = None) -> SampleMatch | None:
    """Fit the propensity model in the sample and match, climbing the balance ladder
    (pipeline.cohort.ladder) until the sample balances; None when an arm is empty."""
    study = study or load_study()
    frame = cohort.filter(sample.members)
    treated = (frame.get_column("arm") == "mdt").to_numpy()
    if not treated.any() or treated.all():
        return None
    columns = covariate_columns(frame, study)
    ps = informative(columns, propensity_covariates(study))
    x = np.column_stack(list(ps.values())) if ps else np.zeros((frame.height, 0))
    model = fit_propensity(x, treated.astype(float), tuple(ps))
    logit = model.logit(x)
    if options.mahvars == DEFAULT_MAHVARS:
        # The default key covariates are those of the study's covariates it has (a study may leave out EQ-5D).
        options = replace(options, mahvars=tuple(v for v in DEFAULT_MAHVARS if v in columns))
    unknown = [v for v in options.mahvars if v not in columns]
    if unknown:
        raise PipelineError(f"{setting('mahvars')} names {unknown}, which are not covariates; use names of the balance table, e.g. {', '.join(covariate_names(study)[:3])}")
    balance_columns = informative(columns, covariate_names(study))
    tried: list[tuple[MatchingOptions, MatchResult, pl.DataFrame, dict]] = []
    steps = list(ladder(options))
    while len(tried) < len(steps):
        step = steps[len(tried)]
        features = np.column_stack([columns[v] for v in step.mahvars]) if step.distance == "mahalanobis" else None
        result = match(logit, treated, strata_codes(frame, step.exact), step, features)
        balance = balance_table(balance_columns, treated, result.weight, sample.name)
        matched = int((result.treated_set > 0).sum())
        summary = {"specification": step.describe(), **balance_summary(balance, options.balance_threshold),
                   "matched_mdt": matched, "unmatched_mdt": int(treated.sum()) - matched}  # fmt: skip
        tried.append((step, result, balance, summary))
        if summary["balanced"]:
            break
        if len(tried) == 1:  # the later steps also match on what the study's specification left unbalanced
            steps = [step, *ladder(options, imbalanced_covariates(balance, options.balance_threshold))[1:]]
    kept = chosen_step([t[3] for t in tried])
    attempts = tuple({**t[3], "kept": i == kept} for i, t in enumerate(tried))
    step, result, balance, _ = tried[kept]
    return SampleMatch(
        sample.name, frame.get_column("participant_id"), frame.get_column("arm"), treated, logit, result, balance, model, attempts, step
    )
