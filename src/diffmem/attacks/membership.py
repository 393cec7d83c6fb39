"""Membership inference: can training images be told from unseen ones?

Three attacks on the one noise process (ε and v models alike: the network's output becomes ε̂
through :func:`diffmem.diffusion.sampler.predict_eps`, ε̂ = σ_t x_t + m_t v̂ for v; m_t and σ_t
come from the process, so sub-VP's σ = 1 − e^{−∫β} too, and times go through the model-time
mapping). Each gives a score per image, higher for a member:

* **loss** (Matsumoto et al. 2023; the baseline every later attack beats), below.
* **SimA** (arXiv 2509.25003): the network on the *clean* image, −Σ|ε̂_θ(x₀, t)|⁴: a memorized
  image is a fixed point the model predicts little noise for. One query per image and t.
* **PIA** (Kong et al., ICLR 2024): ε₀ = ε̂_θ(x₀, 0), x_t = m_t x₀ + σ_t ε₀ and
  −Σ|ε̂_θ(x_t, t) − ε₀|⁴: the model's own noise, put back, comes back for a member. Two queries.

Both papers' code (kong13661/PIA ``components.PIA.distance``, mx-ethan-rao/SimA
``components.SimA.distance``) sums |·|⁴ over the pixels without taking the fourth root, which
orders the images the same way; we follow the code. The attack and its t are chosen on one half
of the members and non-members and scored on the other (:func:`select_and_score`), so the
verdict's AUC is not the best of many looks at the same images.

The loss attack:

Each image's denoising loss ‖ε̂(m_t x + σ_t ε, t) − ε‖² is averaged over a few noise levels t
and noise draws; a training image the model memorized has a lower loss than an unseen one. The
attack's score is −loss; its AUC over members (the run's training images) against non-members
(the null of unseen real images, twins of training images excluded) and its TPR at 1 % FPR are
what MIA toolkits report. This is the baseline attack of SecMI and PIA (Matsumoto et al. 2023's
loss threshold), which both compare against; the noise levels default to small t, where those
papers find the gap between members and non-members largest.

Every image sees the same noise draws (one generator per draw, seeded), so members and
non-members differ only in the image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import process_tensor
from ..metrics.stats import auc, auc_test, tpr_at_fpr

ATTACKS = ("loss", "sima", "pia")
# t/T of the attacks' grid (the papers sweep t over 0–300 of 1,000)
T_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


@torch.no_grad()
def denoising_losses(eps_fn, process, images: np.ndarray, t_fracs, draws: int, seed: int,
                     batch_size: int = 512, device="cpu") -> np.ndarray:
    """Per-image loss, shape (N, len(t_fracs)): mean over ``draws`` of the ε-MSE at each t."""
    dev = torch.device(device)
    coef = process.coefficients(dev)
    ts = grid_steps(process, t_fracs)
    out = np.zeros((len(images), len(ts)))
    shape = (1, *process_tensor(images[:1]).shape[1:])
    for d in range(draws):
        # one noise image per draw and image position, the same for members and non-members
        gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + d)
        noise_all = torch.randn((len(images), *shape[1:]), generator=gen)
        for j, t in enumerate(ts):
            for i in range(0, len(images), batch_size):
                x0 = process_tensor(images[i:i + batch_size], dev)
                noise = noise_all[i:i + batch_size].to(dev)
                tt = torch.full((len(x0),), t, device=dev, dtype=torch.long)
                x_t = process.add_noise(x0, noise, tt, coef)
                eps = eps_fn(x_t, tt)
                out[i:i + len(x0), j] += ((eps.float() - noise) ** 2).mean((1, 2, 3)).cpu().numpy()
    return out / draws


def attack(member_loss: np.ndarray, nonmember_loss: np.ndarray, *, seed: int,
           t_fracs=None) -> dict:
    """AUC (with interval and one-sided p), TPR at 1 % FPR, and the AUC at each t."""
    pos, neg = -member_loss.mean(1), -nonmember_loss.mean(1)
    res = auc_test(pos, neg, seed=seed)
    res |= tpr_at_fpr(pos, neg, 0.01)
    res["auc_by_t"] = [{"t_over_T": float(f), "auc": auc(-member_loss[:, j],
                                                            -nonmember_loss[:, j])}
                       for j, f in enumerate(t_fracs or [])]
    return res


def grid_steps(process, t_fracs) -> list[int]:
    """The grid steps t = round(f·(T − 1)) of fractions f of the process."""
    return [min(process.T - 1, max(0, int(round(f * (process.T - 1))))) for f in t_fracs]


@torch.no_grad()
def sima_scores(eps_fn, process, images: np.ndarray, t_fracs, batch_size: int = 512,
                device="cpu") -> np.ndarray:
    """SimA, shape (N, len(t_fracs)): −Σ|ε̂(x₀, t)|⁴, the network on the clean image."""
    dev = torch.device(device)
    ts = grid_steps(process, t_fracs)
    out = np.zeros((len(images), len(ts)))
    for i in range(0, len(images), batch_size):
        x0 = process_tensor(images[i:i + batch_size], dev)
        for j, t in enumerate(ts):
            eps = eps_fn(x0, torch.full((len(x0),), t, device=dev, dtype=torch.long)).float()
            out[i:i + len(x0), j] = -(eps.abs() ** 4).flatten(1).sum(1).cpu().numpy()
    return out


@torch.no_grad()
def pia_scores(eps_fn, process, images: np.ndarray, t_fracs, batch_size: int = 512,
               device="cpu") -> np.ndarray:
    """PIA, shape (N, len(t_fracs)): ε₀ = ε̂(x₀, 0); x_t = m_t x₀ + σ_t ε₀;
    −Σ|ε̂(x_t, t) − ε₀|⁴."""
    dev = torch.device(device)
    coef = process.coefficients(dev)
    ts = grid_steps(process, t_fracs)
    out = np.zeros((len(images), len(ts)))
    for i in range(0, len(images), batch_size):
        x0 = process_tensor(images[i:i + batch_size], dev)
        eps0 = eps_fn(x0, torch.zeros(len(x0), device=dev, dtype=torch.long)).float()
        for j, t in enumerate(ts):
            tt = torch.full((len(x0),), t, device=dev, dtype=torch.long)
            back = eps_fn(process.add_noise(x0, eps0, tt, coef), tt).float()
            out[i:i + len(x0), j] = -((back - eps0).abs() ** 4).flatten(1).sum(1).cpu().numpy()
    return out


def attack_scores(eps_fn, process, images: np.ndarray, cfg: dict, device="cpu") -> dict:
    """Every attack's scores (higher: more likely a member) at every t of the grid:
    ``{attack: (N, len(grid))}``; the loss attack averages ``draws`` noise draws per t."""
    grid = [float(f) for f in cfg.get("t_grid", T_GRID)]
    kw = dict(batch_size=int(cfg.get("batch_size", 512)), device=device)
    out = {}
    for name in cfg.get("attacks", ATTACKS):
        if name == "loss":
            out[name] = -denoising_losses(eps_fn, process, images, grid,
                                          draws=int(cfg.get("draws", 4)),
                                          seed=int(cfg.get("seed", 5)), **kw)
        elif name == "sima":
            out[name] = sima_scores(eps_fn, process, images, grid, **kw)
        elif name == "pia":
            out[name] = pia_scores(eps_fn, process, images, grid, **kw)
        else:
            raise ValueError(f"unknown membership attack {name!r}; expected one of {ATTACKS}")
    return out


def queries(name: str, cfg: dict) -> int:
    """Network calls per image and t: the loss attack's draws, SimA's one, PIA's two."""
    return {"loss": int(cfg.get("draws", 4)), "sima": 1, "pia": 2}[name]


def group_halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows split in two halves of whole near-duplicate groups (seeded): select, score."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(groups))
    rows = np.concatenate([np.flatnonzero(groups == g) for g in order])
    cut = len(rows) // 2
    while 0 < cut < len(rows) and groups[rows[cut]] == groups[rows[cut - 1]]:
        cut += 1
    return np.sort(rows[:cut]), np.sort(rows[cut:])


def report(pos: np.ndarray, neg: np.ndarray, *, seed: int) -> dict:
    """AUC with a one-sided Mann–Whitney p and a bootstrap interval; TPR at 1 % FPR (and at
    0.1 % where at least 1,000 negatives can resolve it), each with its interval."""
    res = auc_test(pos, neg, seed=seed)
    res |= tpr_at_fpr(pos, neg, 0.01)
    if len(neg) >= 1000:
        low = tpr_at_fpr(pos, neg, 0.001)
        res |= {"tpr_0.1%": low["tpr"], "tpr_0.1%_ci": [low["tpr_ci_low"], low["tpr_ci_high"]]}
    return res


def select_and_score(member: dict, nonmember: dict, member_groups: np.ndarray,
                     nonmember_halves: tuple[np.ndarray, np.ndarray], cfg: dict,
                     min_members: int = 10, min_nonmembers: int = 20) -> dict:
    """The attack and its t chosen by AUC on one half of the members (whole near-duplicate
    groups) and the non-members (the null's calibration half), then scored on the other halves:
    ``chosen`` and every attack at its own chosen t. Ties go to fewer queries, then smaller t.
    With fewer than ``min_members`` members or ``min_nonmembers`` non-members in a half there is
    no selection: None (the caller falls back to the loss attack on every image)."""
    grid = [float(f) for f in cfg.get("t_grid", T_GRID)]
    seed = int(cfg.get("seed", 5))
    m_sel, m_score = group_halves(member_groups, seed)
    n_sel, n_score = nonmember_halves
    if min(len(m_sel), len(m_score)) < min_members or \
            min(len(n_sel), len(n_score)) < min_nonmembers:
        return None
    each = {}
    for name, scores in member.items():
        sel = [auc(scores[m_sel, j], nonmember[name][n_sel, j]) for j in range(len(grid))]
        j = max(range(len(grid)), key=lambda j: (sel[j], -grid[j]))
        each[name] = {"t_over_T": grid[j], "selection_auc": float(sel[j]),
                      "queries": queries(name, cfg),
                      **report(scores[m_score, j], nonmember[name][n_score, j], seed=seed)}
    chosen = max(each, key=lambda a: (each[a]["selection_auc"], -each[a]["queries"],
                                      -each[a]["t_over_T"]))
    return {"chosen": chosen, "attacks": each,
            "halves": {"selection": {"members": int(len(m_sel)), "nonmembers": int(len(n_sel))},
                       "scoring": {"members": int(len(m_score)),
                                   "nonmembers": int(len(n_score))}},
            "member_rows": {"selection": m_sel, "scoring": m_score}}
