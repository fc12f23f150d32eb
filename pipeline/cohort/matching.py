"""Propensity-score matching, with the options economists know from MatchIt.

- The propensity score is a logistic regression of arm on the covariates, fitted by iteratively
  reweighted least squares (Newton's method) with a tiny ridge penalty so separation cannot diverge.
- Matching is greedy nearest neighbour on the logit of the score, treated units taken from the largest
  score down (MatchIt's default `m.order = "largest"`), exactly within strata of the `exact` variables,
  within a caliper of `caliper_sd` pooled standard deviations of the logit (Austin 2011,
  Pharmaceutical Statistics 10:150: sqrt((var_treated + var_control) / 2)), 1:k in k rounds (every
  treated unit gets its first control before any gets a second, as MatchIt does), with or without
  replacement.
- Weights estimate the effect on the treated: 1 for a matched treated unit; a control gets the sum over
  its matched sets of 1 / (controls in the set), rescaled to sum to the number of matched controls
  (MatchIt's `match_data()` weights).

Everything is deterministic: ties are broken by the order of the input rows, which callers sort.
Scale: 100,000 treated against 1,000,000 controls match in a few seconds (bench/matching.py): the
search positions are found with one vectorised searchsorted per stratum, matching with replacement
is fully vectorised, and the sequential part of matching without replacement (which control is
still free) is a union-find over plain Python lists, a few microseconds per treated unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.settings import MatchingOptions


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6, max_iter: int = 50) -> np.ndarray:
    """Coefficients (intercept first) of a logistic regression of y on standardised x, by IRLS."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    z = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    beta = np.zeros(z.shape[1])
    for _ in range(max_iter):
        eta = np.clip(z @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p)
        hessian = z.T @ (z * w[:, None]) + ridge * np.eye(z.shape[1])
        step = np.linalg.solve(hessian, z.T @ (y - p) - ridge * beta)
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    # Back to the scale of x so the coefficients can be reported and reused.
    coef = beta[1:] / sd
    return np.concatenate([[beta[0] - np.sum(coef * mu)], coef])


def propensity_logit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    beta = fit_logistic(x, y)
    return beta[0] + x @ beta[1:]


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
    n = len(logit)
    caliper = options.caliper_sd * pooled_sd(logit, treated)
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
        match = _with_replacement if options.replace else _without_replacement
        pairs = match(logit[t_here], logit[c_here], options.ratio, caliper)
        if pairs:
            ti, ci = np.array(pairs, dtype=np.int64).T
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
