"""Fingerprint audit: reproductions among samples, their significance, and the boundary search.

* :func:`binomial_p_values`: exact one-sided binomial tails of k reproductions in K samples
  against p0 = 1/N (a model that reproduces x* as often as any one training image).
* :func:`detect_reproductions`: run C_SAF and C_ID on generated images; a reproduction is an
  image both accept.
* :func:`boundary_search`: p̂_t, the fraction of M reverse runs started from x_SAF noised to step
  t that land in the private region B (both classifiers accept), for many t at once, either on
  a grid (exhaustive) or by batched k-section (bisection with k points per round); ρ = t′/T with
  t′ = max{t : p̂_t > 0}, the upper Darboux area of p̂ over t/T, and Wilson score bands.

The search is written against two callables, ``reverse_fn(x_t, t) -> x_0`` and
``accept_fn(x_0) -> bool``, so it can be tested with stand-ins whose answer is known.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .scoring import wilson_interval  # noqa: F401  (one implementation; boundary_search uses it)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- statistics
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





# ----------------------------------------------------------------------------- disc pixels
def disc_strength(samples: np.ndarray, saf: np.ndarray, original: np.ndarray,
                  mask: np.ndarray) -> np.ndarray:
    """How much of the SAF each sample carries at the SAF's known place, in [0, 1].

    Inside the disc, d_saf = mean |y − x_SAF| and d_orig = mean |y − x*| (x* the clean
    original); strength = d_orig / (d_orig + d_saf): 1 where the disc is reproduced exactly,
    0 where the sample shows the clean original there, ~α for a disc blended in at strength α.
    A pixel test that needs the auditor's knowledge of the disc, reported beside the
    classifiers (whose C_SAF must find discs anywhere) to show faint discs C_SAF misses.
    """
    m = mask.astype(bool)
    y = samples.astype(np.float32)[:, m]  # (N, disc pixels[, C])
    y = y.reshape(len(samples), -1)
    d_saf = np.abs(y - saf.astype(np.float32)[m].reshape(1, -1)).mean(1)
    d_orig = np.abs(y - original.astype(np.float32)[m].reshape(1, -1)).mean(1)
    return d_orig / np.maximum(d_orig + d_saf, 1e-6)


# ----------------------------------------------------------------------------- classifiers
@torch.no_grad()
def classify(nets: list[torch.nn.Module], images: torch.Tensor, threshold: float = 0.5,
             batch: int = 4096) -> list[torch.Tensor]:
    """Probabilities of each classifier for float images in [-1, 1] (B, C, H, W)."""
    outs = [[] for _ in nets]
    for i in range(0, len(images), batch):
        for j, net in enumerate(nets):
            outs[j].append(torch.sigmoid(net(images[i:i + batch]).float().squeeze(-1)))
    return [torch.cat(o) if o else torch.zeros(0, device=images.device) for o in outs]


# ----------------------------------------------------------------------------- boundary search
ReverseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AcceptFn = Callable[[torch.Tensor], torch.Tensor]


def p_hat_at(ts: np.ndarray, x_saf: torch.Tensor, m: int, noise_fn, reverse_fn: ReverseFn,
             accept_fn: AcceptFn) -> np.ndarray:
    """Accepted counts of M reverse runs for every t in ``ts``, all in one batch."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    t = torch.as_tensor(np.repeat(ts, m), device=x_saf.device)
    x_t = noise_fn(x_saf.expand(len(t), *x_saf.shape[1:]), t)
    accepted = accept_fn(reverse_fn(x_t, t))
    accepted = accepted.view(len(ts), m, -1)  # (levels, M, acceptance rules)
    counts = accepted.sum(1).cpu().numpy().astype(np.int64)
    return counts[:, 0] if counts.shape[1] == 1 else counts


def boundary_search(x_saf: torch.Tensor, T: int, m: int, noise_fn, reverse_fn: ReverseFn,
                    accept_fn: AcceptFn, *, method: str = "exhaustive", t_step: int = 10,
                    points_per_round: int = 8, max_rounds: int = 12,
                    check_above: int = 4) -> dict:
    """Estimate p̂_t and the indicator ρ = t′/T.

    ``exhaustive``: t = 0, t_step, 2·t_step, … ≤ T−1 (and T−1 itself), all batched together.
    ``bisection``: assumes p̂_t > 0 at t = 0 and searches for the last positive t by k-section:
    each round evaluates ``points_per_round`` t's between the last known positive and the first
    known zero in one batch (k = 1 is plain bisection), until they are adjacent. p̂_t need not
    fall monotonically, so it then checks ``check_above`` t's spread above its answer; a
    positive there makes t′ a lower bound (``t_star_is_lower_bound``).

    ``accept_fn`` may return one acceptance rule (B,) or several (B, R); the first decides the
    search and ρ, the others are counted on the same reverse runs (``k_rules``).
    """
    t0 = time.perf_counter()
    evaluated: dict[int, int] = {}
    extra: dict[int, np.ndarray] = {}

    def evaluate(ts):
        ts = [int(t) for t in ts if int(t) not in evaluated]
        counts = p_hat_at(np.array(ts), x_saf, m, noise_fn, reverse_fn, accept_fn)
        for t, k in zip(ts, counts, strict=True):
            k = np.atleast_1d(k)
            evaluated[t] = int(k[0])
            extra[t] = k

    rounds = 0
    above_positive = False
    if method == "exhaustive":
        grid = sorted(set(range(0, T, t_step)) | {T - 1})
        evaluate(grid)
        rounds = 1
    elif method == "bisection":
        evaluate([0, T - 1])
        rounds = 1
        lo, hi = 0, T - 1  # invariant: lo positive (or 0), hi zero (or the end)
        if evaluated[T - 1] > 0:
            lo = hi
        elif evaluated[0] == 0:
            hi = 0
        while hi - lo > 1 and rounds < max_rounds:
            inner = np.unique(np.linspace(lo, hi, points_per_round + 2).round().astype(int))[1:-1]
            inner = [t for t in inner if lo < t < hi]
            if not inner:
                break
            evaluate(inner)
            rounds += 1
            pos = [t for t in inner if evaluated[t] > 0]
            zero = [t for t in inner if evaluated[t] == 0]
            lo = max([lo, *pos])
            hi = min([t for t in [hi, *zero] if t > lo], default=hi)
        above = [t for t in np.unique(np.linspace(lo + 1, T - 1, check_above).round().astype(int))
                 if t not in evaluated and lo < t < T] if check_above and lo < T - 1 else []
        if above:
            evaluate(above)
            rounds += 1
            above_positive = any(evaluated[t] > 0 for t in above)
    else:
        raise ValueError(f"unknown boundary search method {method!r}; expected exhaustive or "
                         f"bisection")
    ts = np.array(sorted(evaluated))
    k = np.array([evaluated[t] for t in ts])
    p_hat = k / m
    lo_band, hi_band = wilson_interval(k, m)
    positive = ts[k > 0]
    t_star = int(positive.max()) if len(positive) else None
    k_rules = np.stack([extra[t] for t in ts]) if len(ts) else np.zeros((0, 1), np.int64)
    # a positive above the bisection's answer: p̂_t is not monotone there, so the last positive
    # found is only a lower bound of t′
    lower_bound = above_positive
    area = upper_darboux(ts, k, m, T)
    return {"t": ts, "k": k, "p_hat": p_hat, "ci_low": lo_band, "ci_high": hi_band,
            "t_star": t_star, "rho": (t_star / T) if t_star is not None else 0.0,
            "upper_darboux_area": area, "method": method, "m": m, "T": T,
            "k_rules": k_rules, "t_star_is_lower_bound": lower_bound,
            "evaluations": int(len(ts)), "rounds": rounds,
            "seconds": round(time.perf_counter() - t0, 3)}


# ----------------------------------------------------------------------------- robust boundary
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
        from .scoring import NO_NULL

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


# ----------------------------------------------------------------------------- detector check
def pixel_reproduction(images: np.ndarray, saf: np.ndarray, original: np.ndarray,
                       mask: np.ndarray, mae_bar: float) -> np.ndarray:
    """Ground truth of the detector check: the image carries the disc at the SAF's place
    (:func:`disc_strength` ≥ 0.5) and is closer to x_SAF (MAE, [0, 1] pixels) than any unseen
    real image is (``mae_bar``)."""
    strength = disc_strength(images, saf, original, mask)
    return (strength >= 0.5) & (mae_to(images, saf) < mae_bar)


def mae_to(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return np.abs(flat - ref.reshape(1, -1).astype(np.float32) / 255.0).mean(1)


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
