"""Does the process reach noise? The β schedules and sampling grids as numpy arithmetic, for the
checks made when the DAG is built (no torch, no diffusers).

Sampling starts from pure noise at the first step t₀ of its reverse grid, as if x_t₀ held no
trace of an image. It does when the signal factor there is small: m = √ᾱ_t₀ for the DDPM chain,
m(τ) = exp(−½∫₀^τ β) for the sub-VP SDE (which does not depend on T). A DDPM chain with T = 100
and β from 1e-4 to 0.02 keeps m = 0.60 of the image at its last step (0.66 at the first step of
10 DDIM steps): sampling it from noise gives noise, not data, and every "does it copy?" on
those samples reads "no". :data:`MAX_SIGNAL` = 0.1 passes Stable Diffusion's scaled_linear at
T = 1,000 (about 0.07) and refuses the cosine schedule at T = 100 with 10 DDIM steps (0.14).

The formulas follow diffusers' ``DDPMScheduler``/``DDIMScheduler`` (their β schedules and the
"leading" timestep spacing the workflow's sampler uses); ``tests/test_diffusion.py`` checks them
against :class:`diffmem.diffusion.process.NoiseProcess`.
"""

from __future__ import annotations

import math

import numpy as np

MAX_SIGNAL = 0.1


def betas(diffusion: dict) -> np.ndarray:
    """β_t of a DDPM chain's settings (``trained_betas``, or ``beta_schedule`` from ``beta_start``
    to ``beta_end`` over ``num_train_timesteps``), as diffusers computes them."""
    T = int(diffusion["num_train_timesteps"])
    if diffusion.get("trained_betas"):
        return np.asarray(diffusion["trained_betas"], dtype=np.float64)
    start = float(diffusion.get("beta_start", 1e-4))
    end = float(diffusion.get("beta_end", 0.02))
    schedule = diffusion.get("beta_schedule", "linear")
    if schedule == "linear":
        return np.linspace(start, end, T)
    if schedule == "scaled_linear":
        return np.linspace(start ** 0.5, end ** 0.5, T) ** 2
    if schedule == "squaredcos_cap_v2":  # diffusers' betas_for_alpha_bar (cosine, max β 0.999)
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999)
                         for i in range(T)])
    raise ValueError(f"unknown beta_schedule {schedule!r}")


def first_step(T: int, sampler: str, steps: int) -> int:
    """The first grid step of the reverse process (:meth:`NoiseProcess.timestep_grid`): T − 1
    for ancestral DDPM over every step and for Euler–Maruyama; else diffusers' "leading"
    spacing, (steps − 1)·⌊T/steps⌋."""
    if sampler == "euler_maruyama" or (sampler == "ddpm" and steps >= T):
        return T - 1
    return (min(steps, T) - 1) * (T // min(steps, T))


def signal_at_start(diffusion: dict, sampler: str, steps: int) -> float:
    """The signal factor m at the first step the sampler starts from noise at (module
    docstring)."""
    T = int(diffusion["num_train_timesteps"])
    t0 = first_step(T, sampler, steps)
    if diffusion.get("process", "ddpm") == "subvp":
        tau = (t0 + 1) / T
        lo, hi = float(diffusion.get("beta_min", 0.1)), float(diffusion.get("beta_max", 20.0))
        return math.exp(-0.5 * (lo * tau + 0.5 * (hi - lo) * tau ** 2))
    return float(np.sqrt(np.cumprod(1 - betas(diffusion))[t0]))
