"""Spec tests for the first estimates (pipeline/cohort/estimates.py): small written-out matched data,
with the answer each estimator must give worked out by hand beside it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.cohort.estimates import cluster_groups, did_rate_ratio, mean_difference, person_outcomes, rate_ratio

#               set:  1    1    2    2    3    3    3    4    4
MDT = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
WEIGHT = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0])
SETS = np.array([1, 1, 2, 2, 3, 3, 3, 4, 4])
Y = np.array([1.0, 2.0, 0.0, 3.0, 2.0, 1.0, 3.0, 1.0, 2.0])


def test_mean_difference_is_the_weighted_difference_of_means():
    # MDT: (1 + 0 + 2 + 1) / 4 = 1. Comparators: (2 + 3 + 0.5*1 + 0.5*3 + 2) / 4 = 2.25. Difference -1.25.
    b, se = mean_difference(Y, MDT, WEIGHT, SETS)
    assert b == pytest.approx(-1.25) and se > 0


def test_unadjusted_rate_ratio_is_the_ratio_of_weighted_means():
    b, se = rate_ratio(Y, MDT, WEIGHT, SETS)
    assert np.exp(b) == pytest.approx(1.0 / 2.25) and se > 0


def test_no_event_in_an_arm_gives_no_rate_ratio():
    assert rate_ratio(np.where(MDT == 1, 0.0, Y), MDT, WEIGHT, SETS) is None


def test_did_rate_ratio_is_the_ratio_of_the_arms_post_to_pre_ratios():
    pre = np.array([2.0, 1.0, 1.0, 1.0, 3.0, 2.0, 0.0, 2.0, 1.0])
    post = np.array([1.0, 1.0, 0.0, 2.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    # MDT: post 3 / pre 8. Comparators (weighted): post 1 + 2 + 0.5*2 + 0.5*2 + 1 = 6, pre 1 + 1 + 0.5*2 + 0 + 1 = 4.
    b, se = did_rate_ratio(pre, post, MDT, WEIGHT, SETS)
    assert np.exp(b) == pytest.approx((3 / 8) / (6 / 4)) and se > 0


def _crv1(x: np.ndarray, w: np.ndarray, e: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """The CRV1 cluster-robust covariance of weighted least squares, written out: bread (X'WX)^-1,
    meat the sum over clusters of each cluster's summed score x w e, outer-multiplied, times
    G/(G-1) x (N-1)/(N-K)."""
    bread = np.linalg.inv(x.T @ (x * w[:, None]))
    scores = x * (w * e)[:, None]
    labels = np.unique(clusters, axis=0)
    meat = sum(np.outer(s, s) for s in (scores[(clusters == g).reshape(len(x), -1).all(axis=1)].sum(axis=0) for g in labels))
    n, k, g = len(x), x.shape[1], len(labels)
    return g / (g - 1) * (n - 1) / (n - k) * bread @ meat @ bread


def test_with_replacement_the_error_is_clustered_by_set_and_participant_both():
    """A comparator who serves sets 1 and 4 (matching with replacement) ties them together: the error
    is the two-way one of Cameron, Gelbach & Miller, V(set) + V(participant) - V(set x participant),
    worked out here without statsmodels. Without replacement it stays clustered by set alone."""
    people = np.array(["m1", "c1", "m2", "c2", "m3", "c3", "c4", "m4", "c1"])  # c1 in sets 1 and 4
    x = np.column_stack([np.ones(len(Y)), MDT])
    beta = np.linalg.solve(x.T @ (x * WEIGHT[:, None]), x.T @ (WEIGHT * Y))
    e = Y - x @ beta
    person = np.unique(people, return_inverse=True)[1]
    pairs = np.column_stack([SETS, person])
    two_way = _crv1(x, WEIGHT, e, SETS) + _crv1(x, WEIGHT, e, person) - _crv1(x, WEIGHT, e, pairs)
    b, se = mean_difference(Y, MDT, WEIGHT, cluster_groups(SETS, people))
    assert b == pytest.approx(beta[1]) and se == pytest.approx(np.sqrt(two_way[1, 1]), rel=1e-9)
    assert se != pytest.approx(np.sqrt(_crv1(x, WEIGHT, e, SETS)[1, 1]), rel=1e-3)  # not the one-way error
    # Everyone in one set: one-way, by set, as before.
    alone = np.array([f"p{i}" for i in range(len(Y))])
    assert cluster_groups(SETS, alone) is SETS
    assert mean_difference(Y, MDT, WEIGHT, cluster_groups(SETS, alone))[1] == pytest.approx(np.sqrt(_crv1(x, WEIGHT, e, SETS)[1, 1]), rel=1e-9)


def test_person_outcomes_sum_post_index_units_and_take_the_eq5d_change():
    use = pl.DataFrame(
        {
            "participant_id": ["P1"] * 5 + ["P2"],
            "period": ["post_12m", "post_12m", "post_12m", "pre_12m", "post_12m", "post_12m"],
            "service_type": ["gp_surgery", "gp_telephone", "home_care_hour", "gp_surgery", "emergency_admission", "bed_day"],
            "units": [2.0, 1.0, 10.5, 7.0, 1.0, 4.0],
            "cost_gbp": [80.0, 40.0, 300.0, 280.0, 2000.0, 1600.0],
        }
    )
    outcomes = pl.DataFrame({"participant_id": ["P1", "P1", "P2"], "wave": ["baseline", "followup", "baseline"], "eq5d_index": [0.5, 0.7, 0.6]})
    got = person_outcomes(use, outcomes).select("participant_id", "gp_consultations", "social_care_hours", "emergency_admissions", "bed_days", "total_cost_gbp", "eq5d_index_change")
    assert got.rows() == [("P1", 3.0, 10.5, 1.0, 0.0, 2420.0, pytest.approx(0.2)), ("P2", 0.0, 0.0, 0.0, 4.0, 1600.0, None)]


def test_a_fit_is_freed_when_its_estimate_is_returned():
    """Issue 19: a statsmodels result and the objects around it form reference cycles; the fit's
    arrays must not wait for the cycle collector (every fit of a run used to stay in memory until
    the stage ended). Nothing unreachable is left behind by a fit."""
    import gc

    import statsmodels.api as sm

    from pipeline.cohort.estimates import _clustered

    rng = np.random.default_rng(19)
    x = np.column_stack([np.ones(400), rng.integers(0, 2, 400)])
    y = rng.poisson(2.0, 400).astype(float)
    gc.collect()
    gc.disable()
    try:
        fit = _clustered(sm.GLM(y, x, family=sm.families.Poisson(), var_weights=np.ones(400)), np.arange(400) // 2)
        assert fit is not None
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_participants_are_numbered_as_numpy_numbers_its_unique_values():
    """cluster_groups numbers participants with Polars; the numbers, and so every clustered error, are
    those numpy's unique(return_inverse=True) gave before."""
    rng = np.random.default_rng(3)
    ids = np.array([f"S{v:x}" for v in rng.integers(0, 400, 1_000)])
    sets = np.arange(1_000) // 3
    assert np.array_equal(cluster_groups(sets, pl.Series(ids))[:, 1], np.unique(ids, return_inverse=True)[1])
    assert np.array_equal(cluster_groups(sets, ids), cluster_groups(sets, pl.Series(ids)))
