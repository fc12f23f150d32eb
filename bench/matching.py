"""Benchmark: propensity-score fit (statsmodels) and nearest-neighbour matching of 100,000 MDT
participants against 1,000,000 candidate comparators (the scale of an integrated care system), then
optimal pair matching of 10,000 against 100,000.

    .venv/bin/python bench/matching.py [--treated 100000] [--controls 1000000] [--ratio 1] [--replace]
        [--optimal-treated 10000] [--optimal-controls 100000]

Prints the time of the logistic fit, of the matching, and of the two together; the target is under
60 seconds for the default sizes. Then the time of optimal matching (method optimal, distance glm)
on the smaller population, which has no target: it grows faster than linearly. The data are random but shaped like the cohort: 16 covariates
(continuous and binary), exact matching on site and sex (4 strata), caliper 0.2 pooled SD of the logit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cohort.matching import match, match_nearest, propensity_logit  # noqa: E402
from pipeline.settings import MatchingOptions  # noqa: E402


def synthetic(n_treated: int, n_controls: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covariates, treated, strata): treated people are older, sicker and use more care."""
    rng = np.random.default_rng(seed)
    n = n_treated + n_controls
    treated = np.zeros(n, dtype=bool)
    treated[rng.choice(n, n_treated, replace=False)] = True
    shift = treated * 0.4
    cols = [
        rng.normal(70 + 4 * shift, 8),  # age
        rng.poisson(3 + shift),  # conditions
        rng.poisson(0.3 + shift),  # emergency admissions
        rng.poisson(0.2 + 0.1 * shift),  # elective admissions
        rng.poisson(0.5 + shift),  # A&E
        rng.poisson(3 + shift),  # outpatients
        rng.poisson(8 + 2 * shift),  # GP
        rng.exponential(2 + shift),  # bed days
        np.log1p(rng.exponential(2000 * (1 + shift))),  # cost
        rng.normal(0.7 - 0.1 * shift, 0.2),  # EQ-5D index
        rng.normal(65 - 5 * shift, 15),  # VAS
    ]
    for q in (2, 3, 4):
        cols.append((rng.random(n) < 0.2 + 0.05 * shift).astype(float))  # IMD quintile dummies
    site = rng.random(n) < 0.45
    female = rng.random(n) < 0.55
    cols += [site.astype(float), female.astype(float)]
    strata = site.astype(np.int64) * 2 + female.astype(np.int64)
    return np.column_stack(cols).astype(float), treated, strata


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--treated", type=int, default=100_000)
    p.add_argument("--controls", type=int, default=1_000_000)
    p.add_argument("--ratio", type=int, default=1)
    p.add_argument("--replace", action="store_true")
    p.add_argument("--caliper", type=float, default=0.2)
    p.add_argument("--optimal-treated", type=int, default=10_000)
    p.add_argument("--optimal-controls", type=int, default=100_000)
    args = p.parse_args()

    x, treated, strata = synthetic(args.treated, args.controls)
    options = MatchingOptions(ratio=args.ratio, caliper=args.caliper, replace=args.replace)
    t0 = time.perf_counter()
    logit = propensity_logit(x, treated.astype(float))
    t1 = time.perf_counter()
    result = match_nearest(logit, treated, strata, options)
    t2 = time.perf_counter()
    matched = int((result.treated_set > 0).sum())
    print(f"{args.treated:,} treated, {args.controls:,} candidate comparators, {x.shape[1]} covariates, "
          f"1:{args.ratio} {'with' if args.replace else 'without'} replacement, caliper {args.caliper} SD")
    print(f"  propensity fit:  {t1 - t0:6.2f} s")
    print(f"  matching:        {t2 - t1:6.2f} s  ({matched:,} treated matched, {len(result.pairs):,} pairs)")
    print(f"  total:           {t2 - t0:6.2f} s  (target < 60 s)")

    x, treated, strata = synthetic(args.optimal_treated, args.optimal_controls, seed=2)
    t0 = time.perf_counter()
    logit = propensity_logit(x, treated.astype(float))
    t1 = time.perf_counter()
    result = match(logit, treated, strata, MatchingOptions(method="optimal", ratio=args.ratio, caliper=args.caliper))
    t2 = time.perf_counter()
    matched = int((result.treated_set > 0).sum())
    print(f"{args.optimal_treated:,} treated, {args.optimal_controls:,} candidate comparators, optimal 1:{args.ratio}, caliper {args.caliper} SD")
    print(f"  propensity fit:  {t1 - t0:6.2f} s")
    print(f"  optimal matching:{t2 - t1:6.2f} s  ({matched:,} treated matched, {len(result.pairs):,} pairs)")


if __name__ == "__main__":
    main()
