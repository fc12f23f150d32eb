"""Spec tests for propensity-score matching: small written-out inputs, the expected matches beside them."""

import numpy as np
import pytest

from pipeline.cohort.balance import balance_table
from pipeline.cohort.matching import fit_propensity, match, match_nearest, pooled_sd
from pipeline.settings import MatchingOptions

#                 row:   0     1     2     3     4     5     6
LOGIT = np.array([0.00, 0.10, 0.52, 0.50, 0.45, 3.00, 0.11])
TREATED = np.array([True, False, True, False, False, True, False])
STRATA = np.array([1, 1, 1, 1, 1, 1, 2])  # row 6 is alone in its stratum (say, another site)


def pairs(result):
    return sorted(result.pairs)


def test_caliper_is_in_pooled_standard_deviations_of_the_logit():
    # Treated 0, 0.52, 3.00 (sample variance 2.5701); controls 0.10, 0.50, 0.45, 0.11 (0.04607).
    assert pooled_sd(LOGIT, TREATED) == pytest.approx(np.sqrt((2.5701 + 0.04607) / 2), abs=1e-4)


def test_nearest_without_replacement_largest_score_first_and_caliper():
    # Caliper 0.2 pooled SD of the logit (SD 1.14, caliper 0.23): row 2 (0.52) takes row 3 (0.50) first; row 0 then takes
    # row 1 (0.10); row 5 (3.00) has nothing within the caliper and stays unmatched; row 6, in another
    # stratum, is never used even though it is nearest to row 0.
    result = match_nearest(LOGIT, TREATED, STRATA, MatchingOptions(ratio=1, caliper=0.2))
    assert pairs(result) == [(1, 3), (2, 1)]
    assert result.treated_set.tolist() == [2, -1, 1, -1, -1, -1, -1]
    assert result.weight.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_one_to_two_matching_takes_two_rounds_and_weights_controls():
    result = match_nearest(LOGIT, TREATED, STRATA, MatchingOptions(ratio=2, caliper=1.0))
    # Round 1: row 5 (3.00) is nearest to 0.50 but 2.5 > caliper 1.14, so unmatched; row 2 -> 3; row 0 -> 1.
    # Round 2: row 2 -> 4 (0.45); row 0 finds no free control left in its stratum (row 6 is in another).
    assert pairs(result) == [(1, 3), (1, 4), (2, 1)]
    # Set 1 has two controls (1/2 each), set 2 one control (1); rescaled to sum to 3 matched controls.
    w = result.weight
    assert w[0] == w[2] == 1.0
    assert w[1] / w[3] == pytest.approx(2.0) and w[1] + w[3] + w[4] == pytest.approx(3.0)


def test_with_replacement_a_control_can_serve_twice():
    logit = np.array([0.5, 0.51, 0.49])
    treated = np.array([True, True, False])
    result = match_nearest(logit, treated, np.ones(3, dtype=int), MatchingOptions(replace=True, caliper=10))
    assert pairs(result) == [(1, 2), (2, 2)]
    assert result.weight[2] == pytest.approx(1.0)  # two sets, one control: rescaled to one matched control


def test_logistic_regression_recovers_known_coefficients_with_standard_errors():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(70, 8, 20000), rng.normal(size=20000)])
    truth = np.array([-0.5 - 0.05 * 70, 0.05, -2.0])
    y = (rng.random(20000) < 1 / (1 + np.exp(-(truth[0] + x @ truth[1:])))).astype(float)
    model = fit_propensity(x, y, ("age", "z"))
    assert model.converged and model.names == ("age", "z")
    # Fitted on standardised covariates and mapped back: the same as fitting on the raw scale.
    direct = sm.Logit(y, sm.add_constant(x)).fit(disp=0)
    assert model.coef == pytest.approx(direct.params, rel=1e-6)
    assert model.std_error == pytest.approx(direct.bse, rel=1e-6)
    assert np.all(np.abs(model.coef - truth) < 1.96 * model.std_error)
    assert [c["term"] for c in model.to_json()["coefficients"]] == ["(intercept)", "age", "z"]


def test_separation_falls_back_to_a_finite_penalised_fit():
    x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]])
    y = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # x separates the arms perfectly
    model = fit_propensity(x, y)
    assert not model.converged and np.all(np.isfinite(model.coef)) and np.isnan(model.std_error).all()
    assert np.all(np.diff(model.logit(x)) > 0)


# Optimal against greedy, written out: treated A (1.00) and B (0.85); controls C (0.90) and D (1.20).
#                    A     B     C     D
OPT_LOGIT = np.array([1.00, 0.85, 0.90, 1.20])
OPT_TREATED = np.array([True, True, False, False])


def test_greedy_takes_the_nearest_for_the_largest_score_first():
    result = match_nearest(OPT_LOGIT, OPT_TREATED, np.zeros(4, dtype=int), MatchingOptions(caliper=10))
    # A (largest) takes C (0.10); B is left with D (0.35): total 0.45.
    assert pairs(result) == [(1, 2), (2, 3)]


def test_optimal_pairs_minimise_the_total_distance():
    result = match(OPT_LOGIT, OPT_TREATED, np.zeros(4, dtype=int), MatchingOptions(method="optimal", caliper=10))
    # A with D (0.20) and B with C (0.05): total 0.25 instead of 0.45. Set 1 is still A's.
    assert pairs(result) == [(1, 3), (2, 2)]


def test_optimal_leaves_a_treated_unit_without_candidates_unmatched():
    #                 0     1     2     3
    logit = np.array([0.0, 3.0, 0.05, 0.1])
    treated = np.array([True, True, False, False])
    # Caliper 0.2 pooled SD (SD about 1.5): row 1 has no control within 0.3, so only row 0 is matched.
    result = match(logit, treated, np.zeros(4, dtype=int), MatchingOptions(method="optimal", caliper=0.2))
    assert pairs(result) == [(1, 2)] and result.treated_set.tolist() == [1, -1, -1, -1]


def test_mahalanobis_picks_the_covariate_twin_inside_the_caliper():
    #                 0 (t)  1     2     3 (t) 4
    logit = np.array([0.50, 0.505, 0.49, 0.20, 0.19])
    treated = np.array([True, False, False, True, False])
    age = np.array([[80.0], [60.0], [81.0], [70.0], [70.0]])
    glm = match(logit, treated, np.zeros(5, dtype=int), MatchingOptions(caliper=10))
    maha = match(logit, treated, np.zeros(5, dtype=int), MatchingOptions(distance="mahalanobis", caliper=10), features=age)
    assert pairs(glm) == [(1, 1), (2, 4)]  # nearest on the score: row 1
    assert pairs(maha) == [(1, 2), (2, 4)]  # the same age: row 2
    # Outside the caliper the twin is not a candidate however close the covariate.
    tight = match(logit, treated, np.zeros(5, dtype=int), MatchingOptions(distance="mahalanobis", caliper=0.001), features=age)
    assert pairs(tight) == []


def dense_optimum(logit, treated, caliper_sd):
    """The optimal number of pairs and total distance by scipy's dense linear_sum_assignment over every
    treated-control pair (pairs outside the caliper cost more than leaving a treated unit unmatched)."""
    from scipy.optimize import linear_sum_assignment

    t, c = np.flatnonzero(treated), np.flatnonzero(~treated)
    caliper = caliper_sd * pooled_sd(logit, treated)
    d = np.abs(logit[t][:, None] - logit[c][None, :])
    big = len(t) * (caliper + 1) + 1
    cost = np.hstack([np.where(d <= caliper, d, 10 * big), np.full((len(t), len(t)), big)])
    rows, cols = linear_sum_assignment(cost)
    real = cols < len(c)
    return int(real.sum()), float(d[rows[real], cols[real]].sum())


@pytest.mark.parametrize("seed", range(25))
def test_optimal_matching_agrees_with_a_dense_assignment(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 40))
    logit = rng.normal(size=n).round(6)
    treated = rng.random(n) < 0.4
    if treated.all() or not treated.any():
        return
    caliper = float(rng.choice([0.1, 0.3, 2.0]))
    result = match(logit, treated, np.zeros(n, dtype=int), MatchingOptions(method="optimal", caliper=caliper))
    head = {int(s): int(r) for r, s in enumerate(result.treated_set) if s > 0}
    total = sum(abs(logit[head[s]] - logit[c]) for s, c in result.pairs)
    count, best = dense_optimum(logit, treated, caliper)
    assert len(result.pairs) == count and total == pytest.approx(best, abs=1e-9)


def test_balance_smd_uses_pooled_sd_before_matching():
    x = np.array([1.0, 2.0, 3.0, 2.0, 3.0, 4.0])
    treated = np.array([True, True, True, False, False, False])
    weight = np.ones(6)
    row = balance_table({"x": x}, treated, weight, "all").row(0, named=True)
    # Means 2 and 3, both variances 1: SMD = -1; variance ratio 1.
    assert row["smd_before"] == pytest.approx(-1.0) and row["variance_ratio_before"] == pytest.approx(1.0)


def test_with_replacement_one_to_two_takes_the_two_nearest_in_rounds():
    #                  0     1     2     3     4
    logit = np.array([0.50, 0.30, 0.48, 0.55, 0.20])
    treated = np.array([True, True, False, False, False])
    result = match_nearest(logit, treated, np.ones(5, dtype=int), MatchingOptions(ratio=2, replace=True, caliper=10))
    # Set 1 = row 0 (largest): nearest 2 (0.02), then 3 (0.05). Set 2 = row 1: nearest 4 (0.10), then 2 (0.18).
    assert pairs(result) == [(1, 2), (1, 3), (2, 2), (2, 4)]
    # Control weights before rescaling: row 2 1/2 + 1/2 = 1, rows 3 and 4 1/2 each; rescaled to sum to 3.
    assert result.weight[2:].tolist() == pytest.approx([1.5, 0.75, 0.75])


def test_no_controls_in_a_stratum_leaves_its_treated_unmatched():
    logit = np.array([0.5, 0.5, 0.4, 0.9, 0.1])
    treated = np.array([True, True, False, False, False])
    result = match_nearest(logit, treated, np.array([1, 2, 1, 1, 1]), MatchingOptions(caliper=10))
    assert result.treated_set.tolist() == [1, -1, -1, -1, -1] and pairs(result) == [(1, 2)]


def reference_match(logit, treated, strata, options):
    """Greedy matching written the slow, obvious way: for each treated unit in turn (largest score
    first), every control of its stratum is a candidate, the nearest wins (the earlier in score order
    on a tie). Returns the (treated row, control row) pairs."""
    free = [True] * len(logit)
    t_rows = sorted(np.flatnonzero(treated), key=lambda r: -logit[r])
    c_rank = {int(c): k for k, c in enumerate(sorted(np.flatnonzero(~treated), key=lambda r: logit[r]))}
    pooled = pooled_sd(logit, treated)
    taken: dict[int, set[int]] = {}
    out = []
    for _ in range(options.ratio):
        for t in t_rows:
            cands = [
                c for c in c_rank
                if strata[c] == strata[t] and (options.replace or free[c]) and c not in taken.get(t, set())
            ]  # fmt: skip
            if not cands:
                continue
            best = min(cands, key=lambda c: (abs(logit[c] - logit[t]), c_rank[c]))
            if abs(logit[best] - logit[t]) > options.caliper * pooled:
                continue
            free[best] = False
            taken.setdefault(t, set()).add(best)
            out.append((int(t), best))
    return sorted(out)


@pytest.mark.parametrize("seed", range(40))
def test_fast_matching_agrees_with_the_obvious_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    logit = rng.normal(size=n).round(6)
    treated = rng.random(n) < rng.uniform(0.2, 0.7)
    strata = rng.integers(0, 3, size=n)
    options = MatchingOptions(ratio=int(rng.integers(1, 4)), replace=bool(rng.random() < 0.5), caliper=float(rng.choice([0.05, 0.2, 1.0])))
    result = match_nearest(logit, treated, strata, options)
    head = {int(s): int(r) for r, s in enumerate(result.treated_set) if s > 0}
    assert sorted((head[s], c) for s, c in result.pairs) == reference_match(logit, treated, strata, options)


def balance_rows(smd_after: list[float | None]) -> "pl.DataFrame":
    import polars as pl

    return pl.DataFrame(
        {
            "covariate": [f"c{i}" for i in range(len(smd_after))],
            "smd_after": smd_after,
            "variance_ratio_after": [1.5, None, 0.8][: len(smd_after)] + [None] * max(0, len(smd_after) - 3),
        },
        schema={"covariate": pl.String, "smd_after": pl.Float64, "variance_ratio_after": pl.Float64},
    )


def test_the_balance_gate_takes_the_largest_absolute_smd_and_the_variance_ratio_range():
    from pipeline.cohort.ladder import balance_summary

    s = balance_summary(balance_rows([0.05, -0.12, 0.08]), 0.1)
    assert s == {"max_abs_smd_after": pytest.approx(0.12), "worst_covariate": "c1", "variance_ratio_after_min": 0.8,
                 "variance_ratio_after_max": 1.5, "balanced": False}  # fmt: skip
    assert balance_summary(balance_rows([0.05, -0.09, 0.08]), 0.1)["balanced"]
    assert not balance_summary(balance_rows([0.05, None, 0.01]), 0.1)["balanced"]  # an SMD that cannot be computed fails


def test_the_ladder_keeps_the_first_balanced_step_or_else_the_least_unbalanced():
    from pipeline.cohort.ladder import chosen_step

    step = lambda smd: {"max_abs_smd_after": smd, "balanced": smd is not None and smd < 0.1}  # noqa: E731
    assert chosen_step([step(0.14), step(0.09), step(0.05)]) == 1
    assert chosen_step([step(0.14), step(None), step(0.12), step(0.12)]) == 2


def test_the_ladder_is_fixed_and_off_means_the_study_specification_only():
    from pipeline.cohort.ladder import ladder

    study = MatchingOptions(caliper=0.1)
    steps = ladder(study, ("imd_quintile=4",))
    assert steps[0] == study and len(steps) == 4  # the 0.1-caliper steps equal earlier ones and collapse
    assert [(s.method, s.distance, s.ratio, s.caliper) for s in steps] == [
        ("nearest", "glm", 1, 0.1), ("optimal", "glm", 1, 0.1), ("nearest", "glm", 2, 0.1), ("nearest", "mahalanobis", 1, 0.1),
    ]  # fmt: skip
    assert steps[-1].mahvars[-1] == "imd_quintile=4"
    assert ladder(MatchingOptions(ladder=False)) == (MatchingOptions(ladder=False),)
    assert all(s.method == "nearest" for s in ladder(MatchingOptions(replace=True)))  # optimal has no replacement


def test_a_coefficient_shrunk_to_nothing_is_released_as_zero_not_negative_zero():
    """The sign of a coefficient the penalty shrank to nothing is noise in its last bits (it differed
    between a Celery task and the embedded run); the manifest must not carry it as -0.0."""
    import json

    from pipeline.cohort.matching import PropensityModel

    model = PropensityModel(("age",), np.array([0.5, -1e-12]), np.array([0.1, -3e-13]), True)
    text = json.dumps(model.to_json())
    assert "-0.0" not in text
    assert [c["estimate"] for c in model.to_json()["coefficients"]] == [0.5, 0.0]


# In a fresh interpreter, where scipy's own BLAS is not loaded yet: does the cohort stage's limit
# reach every BLAS the models use, scipy's included (loaded by statsmodels)?
BLAS_PROBE = """
import json
from threadpoolctl import threadpool_info
from pipeline.cohort.stage import one_blas_thread
with one_blas_thread():
    import numpy as np
    from pipeline.cohort.matching import fit_propensity
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    fit_propensity(x, (x[:, 0] + rng.normal(size=400) > 0).astype(float))
    inside = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps(inside))
"""


def test_the_cohort_models_run_on_one_thread_of_every_blas():
    import json
    import subprocess
    import sys

    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", BLAS_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    inside = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(inside) >= 2, f"expected numpy's and scipy's BLAS, found {inside}"
    assert all(threads == 1 for _, threads in inside), inside
