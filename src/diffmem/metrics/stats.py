"""Every test and interval of the audit, as pure functions of counts and scores.

* Proportions: Wilson intervals, Newcombe's interval and a one-sided Fisher test for a rate
  excess (:func:`rate_excess`), exact binomial tails (:func:`binomial_p_values`), the
  reproduction rate corrected for a detector's recall and false positives
  (:func:`corrected_rate`).
* Scores: the Mann–Whitney AUC with a stratified bootstrap interval, TPR at a fixed FPR,
  permutation tests, Holm's adjustment.
* Boundary curves p̂_t: the robust boundary t50 with its parametric-bootstrap interval, the rank
  of a query among its controls, the walk-back answer, the upper Darboux area.
* The verdict's rule (:func:`decide`), the rate a copy test could have detected at its sizes
  (:func:`detectable_rate`), the test that samples are less like the data than unseen images
  (:func:`less_similar`), and the result of a question without a null (:func:`untested`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# the answer of a question whose score has no null (no unseen images to compare with)
NO_NULL = "inconclusive (no null)"
# the copy question's answer when generated images are less like the training images than
# unseen ones are (noise, or another kind of image): not a "no", which would sound safe
UNLIKE = "samples unlike the training data"


def wilson_interval(k, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions k/n (well-behaved at 0 and 1)."""
    k = np.asarray(k, dtype=float)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """:func:`wilson_interval` of one count; (0, 1) when there is nothing to count."""
    if n == 0:
        return 0.0, 1.0
    lo, hi = wilson_interval(k, n, z)
    return float(lo), float(hi)


def rate_excess(k1: int, n1: int, k2: int, n2: int) -> dict:
    """Is rate 1 (k1/n1) above rate 2 (k2/n2)? One-sided Fisher exact p and Newcombe's hybrid
    score 95 % interval for the difference p1 − p2."""
    from scipy.stats import fisher_exact

    p = float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater")[1]) \
        if n1 and n2 else 1.0
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"effect": d, "ci_low": lo, "ci_high": hi, "p_value": p,
            "value": p1, "null_value": p2, "n": n1, "null_n": n2}


def says_yes(k1, n1: int, k2: int, n2: int, alpha: float) -> np.ndarray:
    """The copy question's yes-rule (:func:`rate_excess` then :func:`decide`: one-sided Fisher
    p < α and Newcombe's lower bound > 0) for every count ``k1`` (an array) against one null
    count ``k2``, vectorised: Fisher's one-sided p is the hypergeometric tail
    P(X ≥ k1), X ~ Hypergeometric(n1 + n2, k1 + k2, n1)."""
    from scipy.stats import hypergeom

    k1 = np.asarray(k1)
    p = hypergeom.sf(k1 - 1, n1 + n2, k1 + k2, n1)
    l1, _ = wilson_interval(k1, n1)
    _, u2 = wilson(k2, n2)
    p1, p2 = k1 / n1, k2 / n2
    lo = (p1 - p2) - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    return (p < alpha) & (lo > 0)


def detectable_rate(n1: int, n2: int, p0: float, *, alpha: float = 0.05,
                    power: float = 0.8) -> float | None:
    """The smallest excess δ the copy question's yes-rule finds with probability ≥ ``power``
    when ``n1`` generated images land in the high band at rate p0 + δ and ``n2`` null images at
    p0: computed exactly at these sizes (for each plausible null count, the generated counts
    that say yes, then binomial sums; δ by bisection). None when no δ reaches that power. A
    "no" from a test that could not have seen the margin is no "no"."""
    from scipy.stats import binom

    if n1 == 0 or n2 == 0:
        return None
    lo_k = 0 if p0 <= 0 else int(binom.ppf(1e-12, n2, p0))
    hi_k = 0 if p0 <= 0 else int(binom.ppf(1 - 1e-12, n2, p0))
    k2s = np.arange(lo_k, hi_k + 1)
    weight = binom.pmf(k2s, n2, p0) if p0 > 0 else np.ones(1)
    # the yes-rule holds from a smallest count on (Fisher's p falls and Newcombe's lower bound
    # rises with k1): find it by bisection for each null count
    first = []
    for k2 in k2s:
        lo, hi = 0, n1 + 1  # says_yes(hi) counts as true: n1 + 1 means "never"
        while lo < hi:
            mid = (lo + hi) // 2
            if says_yes(mid, n1, int(k2), n2, alpha):
                hi = mid
            else:
                lo = mid + 1
        first.append(lo)
    first = np.asarray(first)

    def power_at(delta: float) -> float:
        return float(weight @ binom.sf(first - 1, n1, min(p0 + delta, 1.0)))

    top = 1.0 - p0
    if power_at(top) < power:
        return None
    lo, hi = 0.0, top
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power_at(mid) >= power else (mid, hi)
    return hi


def less_similar(gen: np.ndarray, null: np.ndarray) -> float:
    """One-sided Mann–Whitney p that generated images are *less* similar to the training set
    than unseen images are (whole distributions of nearest-training similarity): samples that
    look like no data at all."""
    from scipy.stats import mannwhitneyu

    if len(gen) == 0 or len(null) == 0:
        return 1.0
    return float(mannwhitneyu(gen, null, alternative="less").pvalue)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie) (the Mann–Whitney AUC)."""
    from scipy.stats import rankdata

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))[: len(pos)]
    return float((r.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_test(pos: np.ndarray, neg: np.ndarray, *, seed: int = 0, boot: int = 1000) -> dict:
    """AUC with a one-sided Mann–Whitney p-value (positives score higher) and a 95 % stratified
    bootstrap interval."""
    from scipy.stats import mannwhitneyu

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    a = auc(pos, neg)
    p = float(mannwhitneyu(pos, neg, alternative="greater").pvalue) if len(pos) and len(neg) \
        else 1.0
    rng = np.random.default_rng(seed)
    reps = [auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(boot)]
    lo, hi = np.quantile(reps, [0.025, 0.975]) if reps else (0.0, 1.0)
    return {"effect": a, "ci_low": float(lo), "ci_high": float(hi), "p_value": p,
            "n": int(len(pos)), "null_n": int(len(neg)), "null_value": 0.5}


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> dict:
    """TPR at the threshold that flags at most ``fpr`` of the negatives, with a Wilson interval;
    with fewer than 1/fpr negatives the smallest resolvable FPR (1/n) is used and stated."""
    neg = np.sort(np.asarray(neg, float))
    allowed = max(int(math.floor(fpr * len(neg))), 1 if len(neg) < 1 / fpr else 0)
    thr = neg[len(neg) - allowed - 1] if allowed < len(neg) else -math.inf
    k = int((np.asarray(pos) > thr).sum())
    lo, hi = wilson(k, len(pos))
    return {"fpr_target": fpr, "fpr_achieved": float((neg > thr).mean()), "tpr": k / len(pos),
            "tpr_ci_low": lo, "tpr_ci_high": hi, "threshold": float(thr)}


def permutation_test(stat: Callable[[np.ndarray, np.ndarray], float], n_a: int, n_b: int, *,
                     permutations: int, seed: int) -> float:
    """One-sided p of stat(rows of A, rows of B) over random relabellings of the pooled rows
    (rows 0..n_a−1 are A, n_a..n_a+n_b−1 are B): (1 + #{perm ≥ observed}) / (R + 1)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n_a + n_b)
    observed = stat(rows[:n_a], rows[n_a:])
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(rows)
        hits += stat(p[:n_a], p[n_a:]) >= observed - 1e-12
    return (1 + hits) / (permutations + 1)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment (family-wise error), in the input order."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def untested(value, n: int, reason: str) -> dict:
    """A primary statistic without unseen images to compare with: its value is reported,
    nothing is tested, and the answer is :data:`NO_NULL`."""
    return {"value": value, "n": n, "null_value": None, "null_n": 0, "effect": None,
            "ci_low": None, "ci_high": None, "p_value": None, "answer": NO_NULL,
            "no_null": reason}


def decide(test: dict, *, alpha: float, margin: float, null_effect: float = 0.0) -> str:
    """yes: significant at ``alpha`` and the interval excludes no effect; otherwise, where the
    test says how unlike the data the images are (``unlike_p_value``) and that is significant,
    :data:`UNLIKE`; no: the interval excludes an effect larger than ``margin`` and, where the
    test states the rate it could have detected (``detectable_rate``), that rate is at most
    the margin; otherwise inconclusive. A test without a null (``test["answer"]`` set to
    :data:`NO_NULL`) keeps that answer."""
    if test.get("answer"):
        return test["answer"]
    if test["p_value"] < alpha and test["ci_low"] > null_effect:
        return "yes"
    if test.get("unlike_p_value") is not None and test["unlike_p_value"] < alpha:
        return UNLIKE
    powered = "detectable_rate" not in test or (test["detectable_rate"] is not None and
                                                test["detectable_rate"] <= margin)
    if test["ci_high"] < null_effect + margin and powered:
        return "no"
    return "inconclusive"


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed in log space (exact for the sizes used here)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [_log_pmf(i, n, p) for i in range(k + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def binomial_p_values(k: int, n: int, p0: float) -> dict:
    """One-sided exact p-values: 'rate < p0' = P(X ≤ k), 'rate > p0' = P(X ≥ k)."""
    return {"p_value_less": binom_cdf(k, n, p0),
            "p_value_greater": 1.0 - binom_cdf(k - 1, n, p0) if k > 0 else 1.0,
            "expected": n * p0}


def corrected_rate(k: int, n: int, recall: tuple[float, float, float],
                   fpr: tuple[float, float, float], null_rate: float) -> dict:
    """The reproduction rate π behind k detections in n samples when the detector finds a true
    reproduction with probability r and flags a non-reproduction with probability f:
    k ~ Bin(n, r·π + f·(1 − π)). ``recall`` and ``fpr`` are (estimate, low, high). The 95 %
    interval combines the Wilson interval of k/n with the ends of r's and f's intervals that
    widen it. "Rate below 1/N" is supported only when the interval's upper end is below 1/N;
    with an unmeasured or low recall it is refused and the upper end is the finding."""
    q = k / n if n else 0.0
    lo_arr, hi_arr = wilson_interval(np.array([k]), max(n, 1))
    q_lo, q_hi = float(lo_arr[0]), float(hi_arr[0])
    r, r_lo, r_hi = recall
    f, f_lo, f_hi = fpr

    def solve(qq, rr, ff):
        return float(np.clip((qq - ff) / (rr - ff), 0, 1)) if rr > ff else None

    est = solve(q, r, f)
    hi = solve(q_hi, r_lo, f_lo)
    lo = solve(q_lo, r_hi, f_hi)
    hi = 1.0 if hi is None else hi
    lo = 0.0 if lo is None else lo
    return {"rate_observed": q, "rate_corrected": est, "rate_ci": [lo, hi],
            "null_rate": null_rate,
            "below_null": "supported" if hi < null_rate else "refused",
            "above_null": "supported" if lo > null_rate else "not shown"}


def t50(ts: np.ndarray, k: np.ndarray, m: int, T: int) -> float:
    """Where an isotonic (non-increasing in t) fit of p̂_t crosses 0.5, as t/T.

    Linear between the grid points around the crossing; 0 when the fit starts below 0.5, the
    last grid point when it never falls below. Unlike ρ = max{t : p̂_t > 0}, one false accept
    at a large t cannot move it."""
    from sklearn.isotonic import IsotonicRegression

    ts = np.asarray(ts, float)
    fit = IsotonicRegression(increasing=False, y_min=0, y_max=1).fit(
        ts, np.asarray(k, float) / m).predict(ts)
    below = np.flatnonzero(fit < 0.5)
    if len(below) == 0:
        return float(ts[-1] / T)
    i = int(below[0])
    if i == 0:
        return 0.0
    t_a, t_b, p_a, p_b = ts[i - 1], ts[i], fit[i - 1], fit[i]
    return float((t_a + (p_a - 0.5) / (p_a - p_b) * (t_b - t_a)) / T)


def t50_interval(ts, k, m: int, T: int, *, boot: int = 500, seed: int = 0) -> tuple[float, float]:
    """95 % parametric-bootstrap interval of :func:`t50`: accept counts redrawn as
    Binomial(M, p̃_t) at every t with p̃_t = (k + ½)/(M + 1), so that levels where all or none
    of the M runs came back still vary (with p̂_t itself the interval collapses to a point)."""
    rng = np.random.default_rng(seed)
    p = (np.asarray(k, float) + 0.5) / (m + 1)
    reps = [t50(ts, rng.binomial(m, p), m, T) for _ in range(boot)]
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return float(lo), float(hi)


def rank_p_value(target: float, controls) -> float:
    """(1 + #{controls ≥ target}) / (C + 1): how often an unseen image's boundary is at least
    the target's."""
    controls = list(controls)
    return (1 + sum(c >= target for c in controls)) / (len(controls) + 1)


def walks_back(target_t50: float, target_ci: tuple[float, float], control_t50s,
               alpha: float = 0.05) -> str:
    """yes: the target's whole t50 interval lies above every control's t50 *and* its rank among
    the controls is significant (:func:`rank_p_value` ≤ α, which needs at least 1/α − 1
    controls: 19 for α = 0.05); no: the target's whole interval lies within the controls' range
    (its upper end is not above the largest control's t50); otherwise inconclusive, and
    "inconclusive (no null)" without controls."""
    control_t50s = list(control_t50s)
    if not control_t50s:  # no unseen image to compare with

        return NO_NULL
    top = max(control_t50s)
    if target_ci[0] > top and rank_p_value(target_t50, control_t50s) <= alpha:
        return "yes"
    if target_ci[1] <= top:
        return "no"
    return "inconclusive"


def upper_darboux(ts: np.ndarray, k: np.ndarray, m: int, T: int) -> float:
    """Upper Darboux sum of p̂ over t/T on the evaluated grid: each interval takes its larger
    end (the paper's bound on the probability of reproducing anything in B)."""
    u, p = np.asarray(ts) / T, np.asarray(k) / m
    return float(np.sum(np.diff(u) * np.maximum(p[:-1], p[1:]))) if len(u) > 1 else 0.0


def size_to_decide(test: dict, *, alpha: float = 0.05, max_factor: float = 1000.0) -> dict:
    """What would decide an inconclusive test, if its estimate held: by how much its sizes
    would have to grow (``factor``, applied to both ``n`` and ``null_n``) for the 95 % interval
    to leave the undecided region on the side the estimate is farther from, and, for a copy test
    (one with ``detectable_rate``), for the detectable rate to reach the margin too.

    The interval's half-width on the side that must move (the lower one for a yes, the upper
    one for a no: bootstrap intervals are not symmetric) is taken to shrink as 1/√size, so the
    factor is (that half-width / distance to the boundary)²; the boundary is ``null_effect``
    for a yes (interval above it) and ``null_effect + margin`` for a no (interval below it). The
    detectable rate is recomputed exactly (:func:`detectable_rate`) at the grown sizes. A
    planning figure, not a promise: a real effect may differ from its estimate.

    Returns ``{"direction": "yes" | "no" | None, "factor", "n", "null_n", "why"}``; direction
    None (and factor None) when no size decides it at this estimate (it lies on a boundary) or
    more than ``max_factor`` times these sizes would be needed."""
    est, lo, hi = test["effect"], test["ci_low"], test["ci_high"]
    null_effect, margin = test.get("null_effect", 0.0), test["margin"]
    n, null_n = int(test["n"]), int(test["null_n"])
    d_yes, d_no = est - null_effect, null_effect + margin - est
    direction, dist = ("yes", d_yes) if d_yes > d_no else ("no", d_no)
    half = est - lo if direction == "yes" else hi - est
    out = {"direction": None, "factor": None, "n": None, "null_n": None}
    if dist <= 0 or half <= 0:
        return out | {"why": "its estimate lies on the boundary between the answers: no size "
                             "decides it unless the estimate moves"}
    factor = max(1.0, (half / dist) ** 2)
    p0 = test.get("null_rate_calibration")
    if direction == "no" and "detectable_rate" in test and p0 is not None:
        # a no also needs the power to have seen the margin: grow until it has
        f = factor
        while f <= max_factor:
            d = detectable_rate(math.ceil(n * f), math.ceil(null_n * f), p0, alpha=alpha)
            if d is not None and d <= margin:
                break
            f *= 1.25
        factor = f
    if factor > max_factor:
        return out | {"why": f"more than {max_factor:g} times these sizes"}
    return {"direction": direction, "factor": float(factor), "n": math.ceil(n * factor),
            "null_n": math.ceil(null_n * factor),
            "why": f"about {factor:.1f}× these sizes ({math.ceil(n * factor)} and "
                   f"{math.ceil(null_n * factor)}) would answer {direction}, if the estimate "
                   f"held"}
