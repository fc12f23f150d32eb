"""Propensity-score matching, with the options economists know from MatchIt.

- The propensity score is a logistic regression of arm on the covariates, fitted with statsmodels
  (`Logit`, Newton's method); its coefficients and standard errors are released per sample.
- `method="nearest"` is greedy nearest neighbour, treated units taken from the largest score down
  (MatchIt's default `m.order = "largest"`), 1:k in k rounds (every treated unit gets its first
  control before any gets a second, as MatchIt does), with or without replacement.
- `method="optimal"` pairs treated and controls so that the total distance is least (MatchIt's
  `method = "optimal"`, optmatch's pair matching): a minimum-weight full matching of the sparse
  bipartite graph of candidate pairs (`scipy.sparse.csgraph.min_weight_full_bipartite_matching`),
  where a treated unit with no candidate left stays unmatched rather than forcing a bad pair.
- `distance="glm"` measures closeness on the logit of the score; `distance="mahalanobis"` on the
  Mahalanobis distance of key covariates (`mahvars`, the pooled within-arm covariance), still only
  among controls inside the propensity caliper (MatchIt's `mahvars` with a caliper).
- Always exactly within strata of the `exact` variables, and within a caliper of `caliper` pooled
  standard deviations of the logit (Austin 2011, Pharmaceutical Statistics 10:150:
  sqrt((var_treated + var_control) / 2)).
- Weights estimate the effect on the treated: 1 for a matched treated unit; a control gets the sum over
  its matched sets of 1 / (controls in the set), rescaled to sum to the number of matched controls
  (MatchIt's `match_data()` weights).

Everything is deterministic: ties are broken by the order of the input rows, which callers sort.
Scale: greedy nearest neighbour on the logit matches 100,000 treated against 1,000,000 controls in
about a second (bench/matching.py): search positions come from one vectorised searchsorted per
stratum, matching with replacement is fully vectorised, and the sequential part of matching without
replacement (which control is still free) is a union-find over plain Python lists. The other
methods work on a graph of candidate pairs: each treated unit's CANDIDATES_PER_SIDE nearest controls
on the logit either side, inside the caliper (bench/matching.py times optimal matching on 10,000
against 100,000).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.settings import MatchingOptions

# Controls considered per treated unit on each side of it on the logit (inside the caliper) by the
# graph-based methods (optimal, Mahalanobis). The nearest-on-the-logit candidates hold the optimal
# pairs unless a region of the score is so crowded that more than this many controls sit between a
# treated unit and its best partner, when the caliper is the real limit anyway.
CANDIDATES_PER_SIDE = 100


@dataclass(frozen=True)
class PropensityModel:
    """A fitted logistic propensity model: coefficients and standard errors on the covariates' own
    scale (intercept first), as statsmodels reports them."""

    names: tuple[str, ...]
    coef: np.ndarray
    std_error: np.ndarray
    converged: bool

    def logit(self, x: np.ndarray) -> np.ndarray:
        return self.coef[0] + x @ self.coef[1:]

    def to_json(self) -> dict:
        """{"converged": ..., "coefficients": [{"term", "estimate", "std_error"}, ...]} for the manifest."""
        terms = ("(intercept)", *self.names)
        return {
            "converged": self.converged,
            "coefficients": [
                {"term": t, "estimate": _rounded(b), "std_error": None if not np.isfinite(se) else _rounded(se)}
                for t, b, se in zip(terms, self.coef, self.std_error, strict=True)
            ],
        }


def _rounded(value: float) -> float:
    """`value` to 6 decimals, with no negative zero: a coefficient shrunk to nothing by the penalty
    rounds to 0.0 whichever side of zero its last bits fell."""
    return round(float(value), 6) + 0.0


def fit_propensity(x: np.ndarray, y: np.ndarray, names: tuple[str, ...] | None = None) -> PropensityModel:
    """Logistic regression of y (1 treated) on x, with statsmodels.

    The fit runs on standardised covariates (better conditioned) and the coefficients and their
    covariance are mapped back to the covariates' own scale. Under (quasi-)separation, where Newton's
    method diverges, it falls back to a lightly L1-penalised fit (standard errors then unavailable).
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(x.shape[1]))
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd == 0, 1.0, sd)
    z = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    # beta (own scale) = A @ gamma (standardised): slopes divided by sd, intercept shifted by the means.
    a = np.zeros((z.shape[1], z.shape[1]))
    a[0, 0] = 1.0
    a[0, 1:] = -mu / sd
    a[1:, 1:] = np.diag(1.0 / sd)
    model = sm.Logit(y, z)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit = model.fit(method="newton", maxiter=50, disp=0)
            gamma, cov = np.asarray(fit.params), np.asarray(fit.cov_params())
            converged = bool(fit.mle_retvals.get("converged", False)) and np.all(np.isfinite(gamma)) and np.all(np.abs(gamma) < 30)
        except (np.linalg.LinAlgError, PerfectSeparationWarning, ValueError):
            converged = False
        if not converged:
            gamma = _penalised_logit(model)
            cov = np.full((z.shape[1], z.shape[1]), np.nan)
    coef = a @ gamma
    se = np.sqrt(np.clip(np.diag(a @ cov @ a.T), 0, None)) if np.all(np.isfinite(cov)) else np.full(len(coef), np.nan)
    return PropensityModel(names, coef, se, bool(converged))


def _penalised_logit(model) -> np.ndarray:
    """A logistic fit with a small L1 penalty on the slopes (statsmodels' `fit_regularized`), which
    stays finite under separation; the penalty (1e-3 per unit of coefficient, per observation) is
    tiny next to the log-likelihood of any real sample."""
    alpha = np.full(model.exog.shape[1], 1e-3 * len(model.endog))
    alpha[0] = 0.0
    return np.asarray(model.fit_regularized(method="l1", alpha=alpha, disp=0, trim_mode="off", maxiter=500).params)


def propensity_logit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fitted logit of the propensity score of every row (a convenience for benchmarks and tests)."""
    return fit_propensity(x, y).logit(x)


def pooled_sd(values: np.ndarray, treated: np.ndarray) -> float:
    """sqrt((var_treated + var_control) / 2), sample variances; an arm of one unit has variance 0."""

    def var(x: np.ndarray) -> float:
        return float(np.var(x, ddof=1)) if len(x) > 1 else 0.0

    return float(np.sqrt((var(values[treated]) + var(values[~treated])) / 2))


@dataclass(frozen=True)
class MatchResult:
    """Matched sets: each matched treated row heads a set (numbered 1.. from the largest score down)."""

    treated_set: np.ndarray  # per row: the set a treated row heads, -1 if unmatched or a control
    pair_set: np.ndarray  # per match: the set number ...
    pair_control: np.ndarray  # ... and the control row matched into it
    weight: np.ndarray  # per row: the matching weight (0 when unmatched)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(set, control row) for every match, in the order they were made."""
        return list(zip(self.pair_set.tolist(), self.pair_control.tolist(), strict=True))


class _Free:
    """Sorted control positions still free, with near-constant-time nearest-free look-ups (union-find).

    right[i] leads to the first free position at or after i (n means none); left[i + 1] leads to the
    first free position at or before i, shifted by one so that 0 means none. Plain lists: indexing
    them from Python is several times faster than indexing numpy arrays.
    """

    def __init__(self, n: int):
        self.right = list(range(n + 1))
        self.left = list(range(n + 1))

    @staticmethod
    def _find(parent: list[int], i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def right_of(self, i: int) -> int:
        return self._find(self.right, i)

    def left_of(self, i: int) -> int:
        return self._find(self.left, i + 1) - 1

    def take(self, i: int) -> None:
        self.right[i] = i + 1
        self.left[i + 1] = i


def _without_replacement(t_logit: np.ndarray, c_logit: np.ndarray, ratio: int, caliper: float) -> list[tuple[int, int]]:
    """(treated position, control position) matches, treated in the given order, in `ratio` rounds."""
    values = c_logit.tolist()
    n = len(values)
    targets = t_logit.tolist()
    starts = np.searchsorted(c_logit, t_logit).tolist()
    free = _Free(n)
    out: list[tuple[int, int]] = []
    for _round in range(ratio):
        for ti, (target, pos) in enumerate(zip(targets, starts, strict=True)):
            left, right = free.left_of(pos - 1), free.right_of(pos)
            candidates = []
            if left >= 0:
                candidates.append((abs(values[left] - target), left))
            if right < n:
                candidates.append((abs(values[right] - target), right))
            if not candidates:
                continue
            distance, best = min(candidates)  # on a tie the left one: it comes first in input order
            if distance <= caliper:
                free.take(best)
                out.append((ti, best))
    return out


def _with_replacement(t_logit: np.ndarray, c_logit: np.ndarray, ratio: int, caliper: float) -> list[tuple[int, int]]:
    """The `ratio` nearest controls of every treated unit within the caliper, in rounds (vectorised)."""
    n = len(c_logit)
    pos = np.searchsorted(c_logit, t_logit)
    # The k nearest of a sorted array lie among the k positions either side of the insertion point.
    cand = pos[:, None] + np.arange(-ratio, ratio)[None, :]
    valid = (cand >= 0) & (cand < n)
    dist = np.where(valid, np.abs(c_logit[np.clip(cand, 0, n - 1)] - t_logit[:, None]), np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :ratio]  # stable: nearer position first on ties
    chosen = np.take_along_axis(cand, order, axis=1)
    ok = np.take_along_axis(dist, order, axis=1) <= caliper
    # Round r holds every treated unit's r-th nearest, so set sizes match MatchIt's round order.
    rounds = [(ti, int(chosen[ti, r])) for r in range(ratio) for ti in np.flatnonzero(ok[:, r]).tolist()]
    return rounds


def match_nearest(logit: np.ndarray, treated: np.ndarray, strata: np.ndarray, options: MatchingOptions) -> MatchResult:
    """Greedy nearest-neighbour matching on `logit` within `strata` (integer codes)."""
    return match(logit, treated, strata, options)


def match(
    logit: np.ndarray, treated: np.ndarray, strata: np.ndarray, options: MatchingOptions, features: np.ndarray | None = None
) -> MatchResult:
    """Match treated rows to controls within `strata` (integer codes) as `options` say.

    `features` are the rows' Mahalanobis covariates (needed when options.distance is mahalanobis).
    """
    n = len(logit)
    caliper = options.caliper * pooled_sd(logit, treated)
    mahalanobis = options.distance == "mahalanobis"
    if mahalanobis:
        if features is None:
            raise ValueError("Mahalanobis matching needs the rows' features")
        features = whitened(features, treated)
    t_rows = np.flatnonzero(treated)
    t_rows = t_rows[np.argsort(-logit[t_rows], kind="stable")]  # largest score first; ties keep input order
    set_of_row = np.full(n, -1, dtype=np.int64)
    set_of_row[t_rows] = np.arange(1, len(t_rows) + 1)
    found_set: list[np.ndarray] = []
    found_control: list[np.ndarray] = []
    for s in np.unique(strata):
        t_here = t_rows[strata[t_rows] == s]
        c_here = np.flatnonzero(~treated & (strata == s))
        if not len(t_here) or not len(c_here):
            continue
        c_here = c_here[np.argsort(logit[c_here], kind="stable")]
        if options.method == "nearest" and not mahalanobis:
            pairs = (_with_replacement if options.replace else _without_replacement)(logit[t_here], logit[c_here], options.ratio, caliper)
        else:
            edges = candidate_pairs(logit[t_here], logit[c_here], caliper)
            if mahalanobis:
                assert features is not None
                edges = (edges[0], edges[1], np.linalg.norm(features[t_here[edges[0]]] - features[c_here[edges[1]]], axis=1))
            solve = _optimal if options.method == "optimal" else _greedy
            pairs = solve(*edges, len(t_here), options.ratio, options.replace)
        if len(pairs):
            ti, ci = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
            found_set.append(set_of_row[t_here[ti]])
            found_control.append(c_here[ci])
    pair_set = np.concatenate(found_set) if found_set else np.zeros(0, dtype=np.int64)
    pair_control = np.concatenate(found_control) if found_control else np.zeros(0, dtype=np.int64)
    # Order pairs as MatchIt makes them (set by set from the largest score; rounds kept in order),
    # then renumber the sets 1..m so the numbers carry no gaps.
    order = np.argsort(pair_set, kind="stable")
    pair_set, pair_control = pair_set[order], pair_control[order]
    used, pair_set = np.unique(pair_set, return_inverse=True)
    pair_set = pair_set.astype(np.int64) + 1
    treated_set = np.full(n, -1, dtype=np.int64)
    head_rows = t_rows[used - 1]
    treated_set[head_rows] = np.arange(1, len(used) + 1)
    return MatchResult(treated_set, pair_set, pair_control, att_weights(n, treated_set, pair_set, pair_control))


def whitened(x: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """Rows of x transformed so that Euclidean distance is the Mahalanobis distance under the pooled
    within-arm covariance (as MatchIt's `mahalanobis`); a constant covariate contributes nothing."""
    x = np.atleast_2d(x.T).T.astype(float)
    cov = (np.atleast_2d(np.cov(x[treated], rowvar=False)) + np.atleast_2d(np.cov(x[~treated], rowvar=False))) / 2
    values, vectors = np.linalg.eigh(np.nan_to_num(cov))
    keep = values > 1e-12 * max(values.max(initial=0.0), 1e-300)
    return (x @ vectors[:, keep]) / np.sqrt(values[keep])


def candidate_pairs(t_logit: np.ndarray, c_logit: np.ndarray, caliper: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(treated position, control position, |logit difference|) of every candidate pair: each treated
    unit's CANDIDATES_PER_SIDE nearest controls either side on the logit, inside the caliper.
    `c_logit` is sorted; pairs come out by treated position, then control position."""
    pos = np.searchsorted(c_logit, t_logit)
    lo = np.maximum(np.searchsorted(c_logit, t_logit - caliper, side="left"), pos - CANDIDATES_PER_SIDE)
    hi = np.minimum(np.searchsorted(c_logit, t_logit + caliper, side="right"), pos + CANDIDATES_PER_SIDE)
    count = np.maximum(hi - lo, 0)
    ti = np.repeat(np.arange(len(t_logit)), count)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
    ci = start + np.arange(count.sum())
    return ti, ci, np.abs(c_logit[ci] - t_logit[ti])


def _greedy(ti: np.ndarray, ci: np.ndarray, dist: np.ndarray, n_treated: int, ratio: int, replace: bool) -> list[tuple[int, int]]:
    """Greedy matching on a candidate graph: treated in order (largest score first), each taking its
    nearest free candidate, in `ratio` rounds; with replacement simply each one's `ratio` nearest."""
    order = np.lexsort((ci, dist, ti))  # by treated, then distance, then control (input order on ties)
    ti, ci = ti[order], ci[order]
    bounds = np.searchsorted(ti, np.arange(n_treated + 1))
    if replace:
        return [(t, int(ci[bounds[t] + r])) for r in range(ratio) for t in range(n_treated) if bounds[t] + r < bounds[t + 1]]
    taken: set[int] = set()
    cursor = bounds[:-1].tolist()
    ends = bounds[1:].tolist()
    controls = ci.tolist()
    out: list[tuple[int, int]] = []
    for _round in range(ratio):
        for t in range(n_treated):
            k = cursor[t]
            while k < ends[t] and controls[k] in taken:
                k += 1
            if k < ends[t]:
                taken.add(controls[k])
                out.append((t, controls[k]))
                k += 1
            cursor[t] = k
    return out


def _optimal(ti: np.ndarray, ci: np.ndarray, dist: np.ndarray, n_treated: int, ratio: int, replace: bool) -> list[tuple[int, int]]:
    """Optimal matching on a candidate graph: as many treated units as possible matched (each `ratio`
    times), and among such matchings the least total distance. Every treated unit is copied `ratio`
    times; each copy also has a private "unmatched" column so a full matching always exists, at a
    cost higher than any set of real pairs could save."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    if not len(ti):
        return []
    n_controls = int(ci.max()) + 1
    rows = n_treated * ratio
    copy = np.arange(ratio)
    # Edge weights must be non-zero: distances are shifted by 1 (every row is matched exactly once,
    # so the shift adds the same constant to every full matching).
    r = (ti[:, None] * ratio + copy[None, :]).ravel()
    c = np.repeat(ci, ratio)
    w = np.repeat(dist + 1.0, ratio)
    unmatched_cost = rows * (float(dist.max()) + 1.0) + 1.0
    graph = coo_array(
        (np.concatenate([w, np.full(rows, unmatched_cost)]), (np.concatenate([r, np.arange(rows)]), np.concatenate([c, n_controls + np.arange(rows)]))),
        shape=(rows, n_controls + rows),
    ).tocsr()
    row_of, col_of = min_weight_full_bipartite_matching(graph)
    real = col_of < n_controls
    t, ctrl = row_of[real] // ratio, col_of[real]
    # Rounds as MatchIt reports them: a treated unit's nearest partner first.
    d = np.asarray(graph[row_of[real], col_of[real]]).ravel()
    order = np.lexsort((ctrl, d, t))
    t, ctrl = t[order], ctrl[order]
    first = np.searchsorted(t, t)  # index of each treated unit's first pair
    rank = np.arange(len(t)) - first
    out = sorted(zip(rank.tolist(), t.tolist(), ctrl.tolist(), strict=True))
    return [(ti_, c_) for _, ti_, c_ in out]


def att_weights(n: int, treated_set: np.ndarray, pair_set: np.ndarray, pair_control: np.ndarray) -> np.ndarray:
    """MatchIt's weights for the effect on the treated (see the module docstring)."""
    weight = np.zeros(n)
    weight[treated_set > 0] = 1.0
    if len(pair_set):
        per_set = np.bincount(pair_set)
        weight += np.bincount(pair_control, weights=1.0 / per_set[pair_set], minlength=n)
        controls = np.unique(pair_control)
        weight[controls] *= len(controls) / weight[controls].sum()
    return weight
