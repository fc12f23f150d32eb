"""Spec tests for propensity-score matching: small written-out inputs, the expected matches beside them."""

import numpy as np
import pytest

from pipeline.cohort.balance import balance_table
from pipeline.cohort.matching import fit_logistic, match_nearest
from pipeline.settings import MatchingOptions

#                 row:   0     1     2     3     4     5     6
LOGIT = np.array([0.00, 0.10, 0.52, 0.50, 0.45, 3.00, 0.11])
TREATED = np.array([True, False, True, False, False, True, False])
STRATA = np.array([1, 1, 1, 1, 1, 1, 2])  # row 6 is alone in its stratum (say, another site)


def pairs(result):
    return sorted(result.pairs)


def test_nearest_without_replacement_largest_score_first_and_caliper():
    # Caliper 0.2 SD of the logit (SD = 1.01): row 2 (0.52) takes row 3 (0.50) first; row 0 then takes
    # row 1 (0.10); row 5 (3.00) has nothing within the caliper and stays unmatched; row 6, in another
    # stratum, is never used even though it is nearest to row 0.
    result = match_nearest(LOGIT, TREATED, STRATA, MatchingOptions(ratio=1, caliper_sd=0.2))
    assert pairs(result) == [(1, 3), (2, 1)]
    assert result.treated_set.tolist() == [2, -1, 1, -1, -1, -1, -1]
    assert result.weight.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_one_to_two_matching_takes_two_rounds_and_weights_controls():
    result = match_nearest(LOGIT, TREATED, STRATA, MatchingOptions(ratio=2, caliper_sd=1.0))
    # Round 1: row 5 (3.00) is nearest to 0.50 but 2.5 > caliper 1.01, so unmatched; row 2 -> 3; row 0 -> 1.
    # Round 2: row 2 -> 4 (0.45); row 0 finds no free control left in its stratum (row 6 is in another).
    assert pairs(result) == [(1, 3), (1, 4), (2, 1)]
    # Set 1 has two controls (1/2 each), set 2 one control (1); rescaled to sum to 3 matched controls.
    w = result.weight
    assert w[0] == w[2] == 1.0
    assert w[1] / w[3] == pytest.approx(2.0) and w[1] + w[3] + w[4] == pytest.approx(3.0)


def test_with_replacement_a_control_can_serve_twice():
    logit = np.array([0.5, 0.51, 0.49])
    treated = np.array([True, True, False])
    result = match_nearest(logit, treated, np.ones(3, dtype=int), MatchingOptions(replace=True, caliper_sd=10))
    assert pairs(result) == [(1, 2), (2, 2)]
    assert result.weight[2] == pytest.approx(1.0)  # two sets, one control: rescaled to one matched control


def test_logistic_regression_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    y = (rng.random(20000) < 1 / (1 + np.exp(-(-0.5 + 1.0 * x[:, 0] - 2.0 * x[:, 1])))).astype(float)
    beta = fit_logistic(x, y)
    assert beta == pytest.approx([-0.5, 1.0, -2.0], abs=0.08)


def test_balance_smd_uses_pooled_sd_before_matching():
    x = np.array([1.0, 2.0, 3.0, 2.0, 3.0, 4.0])
    treated = np.array([True, True, True, False, False, False])
    weight = np.ones(6)
    row = balance_table({"x": x}, treated, weight, "all").row(0, named=True)
    # Means 2 and 3, both variances 1: SMD = -1; variance ratio 1.
    assert row["smd_before"] == pytest.approx(-1.0) and row["variance_ratio_before"] == pytest.approx(1.0)
