"""Covariate balance, as cobalt reports it: standardised mean differences and variance ratios.

The SMD's denominator is the pooled standard deviation of the two arms before matching,
sqrt((var_treated + var_control) / 2), used both before and after so the two are comparable
(Austin 2009, Statistics in Medicine 28:3083). Binary covariates are standardised the same way
(cobalt's default shows them as raw differences in proportion; here every covariate is on one scale,
so one threshold, |SMD| < 0.1, reads across the table). Variance ratios are reported for continuous
covariates only, as cobalt does. "After" is weighted by the matching weights.
"""

from __future__ import annotations

import numpy as np
import polars as pl

BALANCE_SCHEMA = {
    "sample": pl.String, "covariate": pl.String, "covariate_type": pl.String,
    "smd_before": pl.Float64, "smd_after": pl.Float64,
    "variance_ratio_before": pl.Float64, "variance_ratio_after": pl.Float64,
}  # fmt: skip


def _wmean_var(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    if w.sum() <= 0:
        return float("nan"), float("nan")
    m = float(np.average(x, weights=w))
    v = float(np.average((x - m) ** 2, weights=w))
    # Unbiased-style correction with the effective sample size, as cobalt does for weighted variances.
    n_eff = w.sum() ** 2 / (w**2).sum()
    if n_eff > 1:
        v *= n_eff / (n_eff - 1)
    return m, v


def balance_table(covariates: dict[str, np.ndarray], treated: np.ndarray, weight: np.ndarray, sample: str) -> pl.DataFrame:
    """One row per covariate: smd and variance ratio before (unweighted) and after (weighted)."""
    rows = []
    ones = np.ones(len(treated))
    for name, x in covariates.items():
        x = x.astype(float)
        binary = set(np.unique(x)).issubset({0.0, 1.0})
        mt0, vt0 = _wmean_var(x[treated], ones[treated])
        mc0, vc0 = _wmean_var(x[~treated], ones[~treated])
        mt1, vt1 = _wmean_var(x[treated], weight[treated])
        mc1, vc1 = _wmean_var(x[~treated], weight[~treated])
        sd = np.sqrt((vt0 + vc0) / 2)

        def smd(a: float, b: float) -> float | None:
            if np.isnan(a) or np.isnan(b):
                return None
            return (a - b) / sd if sd > 0 else 0.0

        def vr(a: float, b: float) -> float | None:
            return a / b if (not binary and b > 0 and not np.isnan(a)) else None

        rows.append(
            {
                "sample": sample,
                "covariate": name,
                "covariate_type": "binary" if binary else "continuous",
                "smd_before": smd(mt0, mc0),
                "smd_after": smd(mt1, mc1),
                "variance_ratio_before": vr(vt0, vc0),
                "variance_ratio_after": vr(vt1, vc1),
            }
        )
    return pl.DataFrame(rows, schema=BALANCE_SCHEMA)
