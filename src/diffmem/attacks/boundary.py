"""The boundary search: from how much noise does the model walk back to a query image?

* :func:`boundary_search`: p̂_t, the fraction of M reverse runs started from the query noised to
  step t that the acceptance test accepts, for many t at once, either on a grid (exhaustive) or
  by batched k-section (bisection with k points per round); ρ = t′/T with
  t′ = max{t : p̂_t > 0}, the upper Darboux area of p̂ over t/T, and Wilson score bands.
* :func:`search_queries`: the search from every query (the fingerprinted target and its
  controls, or an imported model's training images and theirs) with the classifier-free test
  :func:`nearest_accept`, one sampler and one random stream; :func:`walk_back_summary`.
* :func:`choose_images`: which training images an imported model is searched from.

The search is written against two callables, ``reverse_fn(x_t, t) -> x_0`` and
``accept_fn(x_0) -> bool``, so it can be tested with stand-ins whose answer is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ..device import as_nchw_uint8, normalise, to_uint8
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import fast_runner, reverse
from ..metrics.similarity import PLAIN_PIXELS, Matching, centred_unit, nearest
from ..metrics.stats import (
    rank_p_value,
    t50,
    t50_interval,
    upper_darboux,
    walks_back,
    wilson_interval,
)

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


def boundary_sampler(cfg: dict, process: NoiseProcess) -> tuple[str, int]:
    """The boundary search's own sampler: ``auto`` is what the authors' code runs from t
    (MischaD/Privacy, compute_t_dash.py: DDPM ancestral steps, 100 of them) for a DDPM model and
    the paper's Euler–Maruyama for the sub-VP SDE. Stochastic steps matter: deterministic DDIM
    keeps more of x_t, so a walk back is found from more noise than the paper's sampler finds."""
    sampler = cfg.get("sampler", "auto")
    if sampler == "auto":
        sampler = "euler_maruyama" if process.kind == "subvp" else "ddpm"
    return sampler, min(int(cfg.get("steps", 100)), process.T)


def nearest_accept(refs: np.ndarray, group: np.ndarray, device="cpu"):
    """Classifier-free acceptance: the output's nearest image (Pearson) among ``refs`` belongs
    to the query's group (the query and its clean original), and the output is at least as
    similar to it as the query is to any image outside its group. Works alike for the target
    and for controls the classifiers were never trained on.

    The second condition matters: a barely trained model returns about the same blurry mean
    image from any noise, and whichever query is nearest to that image would otherwise be
    "walked back to" from pure noise (seen on the 30-step test model: 25 % of pure-noise runs
    accepted for a control)."""

    feats = torch.as_tensor(centred_unit(refs), device=device)  # once, not per reverse batch
    members = torch.as_tensor(group, device=device)
    bar = float((feats[members] @ feats[~members].T).max())

    def accept(x0):
        sim = torch.as_tensor(centred_unit(to_uint8(x0)), device=device) @ feats.T
        best = sim.max(1)
        return (members[best.indices] & (best.values >= bar)).to(x0.device)

    accept.bar = bar
    return accept


def decoded(accept, model):
    """An acceptance test of images applied to a model's outputs: decoded first (a latent
    model's; a pixel model's decode is the identity)."""

    def test(x0):
        return accept(model.decode(x0))

    return test


def search_queries(model, process, sampler: str, steps: int, queries: list, refs: np.ndarray,
                   cfg: dict, seed: int, dev, bf16: bool, extra_accept: dict | None = None,
                   graphs: bool = True) -> tuple[dict, pd.DataFrame, float]:
    """The boundary search from every query (name, image, indices of its group in ``refs``)
    with the classifier-free test (:func:`nearest_accept`); ``extra_accept[name]`` adds a second
    rule for that query (the paper's C_SAF ∧ C_ID for the target). One sampler, one random
    stream, for the fingerprint audit and for an imported model's training images alike."""

    gen = torch.Generator(device=dev).manual_seed(seed)
    coef = process.coefficients(dev)
    autocast = bf16 and dev.type == "cuda"
    chunk = int(cfg.get("batch_size", 4096))
    extra_accept = extra_accept or {}
    # fixed-shape, CUDA-graphed steps on a GPU: each distinct batch size is captured once
    runner = fast_runner(model, dev, autocast=autocast, graphs=graphs)

    def noise_fn(x0, t):
        return process.add_noise(x0, torch.randn(x0.shape, generator=gen, device=dev), t, coef)

    def reverse_fn(x_t, t):
        out = []
        for i in range(0, len(x_t), chunk):  # one batch per chunk: every t runs together
            out.append(reverse(model, process, x_t[i:i + chunk], t[i:i + chunk].cpu().numpy(),
                               sampler=sampler, steps=steps, generator=gen, autocast=autocast,
                               runner=runner))
        return torch.cat(out)

    t0 = time.perf_counter()
    results, frames = {}, []
    for name, image, members in queries:
        group = np.zeros(len(refs), bool)
        group[members] = True
        # a latent model's outputs are decoded before the test (``refs`` are then the
        # decoded references D(E(·)); a pixel model's decode is the identity)
        near = decoded(nearest_accept(refs, group, dev), model)
        extra = extra_accept.get(name)
        accept = (lambda x0, near=near, extra=extra: torch.stack([near(x0), extra(x0)], 1)) \
            if extra else near
        x_q = model.encode(normalise(as_nchw_uint8(image[None], dev)))
        res = boundary_search(x_q, process.T, int(cfg["trajectories"]), noise_fn, reverse_fn,
                              accept, method=cfg["method"], t_step=int(cfg["t_step"]),
                              points_per_round=int(cfg.get("points_per_round", 8)))
        res["t50"] = t50(res["t"], res["k"], res["m"], process.T)
        res["t50_ci"] = t50_interval(res["t"], res["k"], res["m"], process.T, seed=seed)
        results[name] = res
        frame = pd.DataFrame({"query": name, "t": res["t"], "t_over_T": res["t"] / process.T,
                              "accepted": res["k"], "m": res["m"], "p_hat": res["p_hat"],
                              "ci_low": res["ci_low"], "ci_high": res["ci_high"]})
        if extra:
            frame["accepted_classifiers"] = res["k_rules"][:, 1]
        frames.append(frame)
    seconds = round(time.perf_counter() - t0, 2)
    return results, pd.concat(frames, ignore_index=True), seconds


def walk_back_summary(tr: dict, controls: list[dict], T: int) -> dict:
    """A query's boundary beside its controls': ρ, t50 with its interval, the rank p-values,
    the walk-back answer and the false-accept rate from nearly pure noise."""

    # false accepts: controls' acceptance from nearly pure noise (t/T ≥ 0.9), where no reverse
    # run can know an unseen image; times the target search's reverse runs
    hi_t = [(c["k"][c["t"] >= 0.9 * T].sum(), (c["t"] >= 0.9 * T).sum() * c["m"])
            for c in controls]
    k_fa, n_fa = sum(h[0] for h in hi_t), sum(h[1] for h in hi_t)
    fa_rate = float(k_fa / n_fa) if n_fa else None
    return {
        "rho": tr["rho"], "t_star": tr["t_star"],
        "rho_control": [c["rho"] for c in controls],
        "t50": tr["t50"], "t50_ci": list(tr["t50_ci"]),
        "t50_control": [c["t50"] for c in controls],
        "t50_control_ci": [list(c["t50_ci"]) for c in controls],
        "rank_p_value_t50": rank_p_value(tr["t50"], [c["t50"] for c in controls]),
        "rank_p_value_rho": rank_p_value(tr["rho"], [c["rho"] for c in controls]),
        "walks_back": walks_back(tr["t50"], tr["t50_ci"], [c["t50"] for c in controls]),
        "false_accept_rate": fa_rate,
        "expected_false_accepts": None if fa_rate is None else fa_rate * tr["evaluations"] *
        tr["m"],
        "t_star_is_lower_bound": tr["t_star_is_lower_bound"],
    }


def most_copied(samples: np.ndarray, refs: np.ndarray, *, matching: Matching = PLAIN_PIXELS,
                device="cpu") -> dict:
    """How many samples have each reference image as their nearest (Pearson, at the best
    transform of ``matching``), and the highest similarity of a sample to it; ``order``: most
    copied first, ties by that similarity."""
    nn_ = nearest(samples, refs, kind="cosine", top_k=1, device=device, matching=matching)
    idx, sim = nn_["index"][:, 0], nn_["sim"][:, 0]
    counts = np.bincount(idx, minlength=len(refs))
    best = np.full(len(refs), -np.inf)
    np.maximum.at(best, idx, sim)
    return {"counts": counts, "best": best, "order": np.lexsort((-best, -counts))}


def choose_images(chosen: list, names: list[str], samples: np.ndarray, train: np.ndarray,
                  count: int, *, matching: Matching = PLAIN_PIXELS, device="cpu"
                  ) -> tuple[list[int], str]:
    """The training images to run the boundary search from: the configured ones (file names
    or indices), or else the ``count`` images plain sampling copied most."""
    if chosen:
        where = {n: i for i, n in enumerate(names)}
        return [int(c) if isinstance(c, int) else where[c] for c in chosen], "configured"
    mc = most_copied(samples, train, matching=matching, device=device)
    return [int(i) for i in mc["order"][:count]], "most copied by plain sampling"
