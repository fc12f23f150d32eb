"""Propensity-score matching, with the options economists know from MatchIt.

- The propensity score is a logistic regression of arm on the covariates, fitted by iteratively
  reweighted least squares (Newton's method) with a tiny ridge penalty so separation cannot diverge.
- Matching is greedy nearest neighbour on the logit of the score, treated units taken from the largest
  score down (MatchIt's default `m.order = "largest"`), exactly within strata of the `exact` variables,
  within a caliper of `caliper_sd` standard deviations of the logit, 1:k in k rounds, with or without
  replacement.
- Weights estimate the effect on the treated: 1 for a matched treated unit; a control gets the sum over
  its matched sets of 1 / (controls in the set), rescaled to sum to the number of matched controls.

Everything is deterministic: ties are broken by the order of the input rows, which callers sort.
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


class _Available:
    """Sorted control positions still free to match, with O(α) nearest-free look-ups (union-find)."""

    def __init__(self, n: int):
        # right: parent pointers towards the next free position at or after i (root n means none).
        # left: the same towards the left, shifted by one so that root 0 means none.
        self.right = np.arange(n + 1)
        self.left = np.arange(n + 1)

    def _find(self, parent: np.ndarray, i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def right_of(self, i: int) -> int:
        return self._find(self.right, i)

    def left_of(self, i: int) -> int:
        return self._find(self.left, i + 1) - 1 if i >= 0 else -1

    def take(self, i: int) -> None:
        self.right[i] = i + 1
        self.left[i + 1] = i


@dataclass(frozen=True)
class MatchResult:
    """Per row: matched set of each treated row (-1 if unmatched), and the matching weight."""

    treated_set: np.ndarray  # set number for treated rows, -1 otherwise
    pairs: list[tuple[int, int]]  # (set number, control row) for every match
    weight: np.ndarray


def match_nearest(
    logit: np.ndarray, treated: np.ndarray, strata: np.ndarray, options: MatchingOptions
) -> MatchResult:
    """Greedy nearest-neighbour matching on `logit` within `strata` (integer codes)."""
    n = len(logit)
    caliper = options.caliper_sd * float(np.std(logit))
    treated_set = np.full(n, -1, dtype=np.int64)
    pairs: list[tuple[int, int]] = []
    # Treated rows from the largest score down; stable so equal scores keep input order.
    t_rows = np.flatnonzero(treated)
    t_rows = t_rows[np.argsort(-logit[t_rows], kind="stable")]
    set_of = {int(r): k + 1 for k, r in enumerate(t_rows)}
    controls_by_stratum: dict[int, tuple[np.ndarray, np.ndarray, _Available]] = {}
    for s in np.unique(strata[~treated]):
        rows = np.flatnonzero((~treated) & (strata == s))
        rows = rows[np.argsort(logit[rows], kind="stable")]
        controls_by_stratum[int(s)] = (rows, logit[rows], _Available(len(rows)))
    matched_any: set[int] = set()
    controls_of_set: dict[int, set[int]] = {}
    for _round in range(options.ratio):
        for t in t_rows:
            entry = controls_by_stratum.get(int(strata[t]))
            if entry is None:
                continue
            rows, values, avail = entry
            pos = int(np.searchsorted(values, logit[t]))
            if options.replace:
                # With replacement every control stays available; the k nearest are taken in rounds.
                already = controls_of_set.get(set_of[int(t)], set())
                cands = [j for j in range(max(0, pos - options.ratio - 1), min(len(rows), pos + options.ratio + 1)) if rows[j] not in already]
                best = min(cands, key=lambda j: (abs(values[j] - logit[t]), j), default=None)
            else:
                r, left = avail.right_of(pos), avail.left_of(pos - 1)
                options_ = [j for j in (left, r) if 0 <= j < len(rows)]
                best = min(options_, key=lambda j: (abs(values[j] - logit[t]), j), default=None)
            if best is None or abs(values[best] - logit[t]) > caliper:
                continue
            if not options.replace:
                avail.take(best)
            pairs.append((set_of[int(t)], int(rows[best])))
            controls_of_set.setdefault(set_of[int(t)], set()).add(int(rows[best]))
            matched_any.add(int(t))
    for t in matched_any:
        treated_set[t] = set_of[t]
    # Renumber sets 1..m in order of treated score so numbers carry no gaps.
    order = {old: new + 1 for new, old in enumerate(sorted(set(treated_set[treated_set > 0].tolist())))}
    treated_set = np.array([order.get(int(v), -1) for v in treated_set], dtype=np.int64)
    pairs = [(order[s], c) for s, c in pairs]
    return MatchResult(treated_set=treated_set, pairs=pairs, weight=_att_weights(n, treated_set, pairs))


def _att_weights(n: int, treated_set: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    weight = np.zeros(n)
    weight[treated_set > 0] = 1.0
    per_set: dict[int, int] = {}
    for s, _ in pairs:
        per_set[s] = per_set.get(s, 0) + 1
    for s, c in pairs:
        weight[c] += 1.0 / per_set[s]
    controls = sorted({c for _, c in pairs})
    total = weight[controls].sum()
    if total > 0:
        weight[controls] *= len(controls) / total
    return weight
