"""The noise process: every stage asks this one object for m_t, σ_t, grids and time inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PROCESSES = ("ddpm", "subvp")


PREDICTIONS = ("epsilon", "v_prediction")


SAMPLERS = ("ddpm", "ddim", "euler_maruyama")


# score_sde (Song et al. 2021, configs/subvp/*_continuous.py): training draws τ ~ U(1e-5, 1)
SUBVP_TRAIN_EPS = 1e-5


@dataclass(frozen=True)
class NoiseProcess:
    """The forward process q(x_t | x_0) = N(m_t x_0, σ_t² I) on a grid of T steps t = 0..T-1.

    ``kind="ddpm"``: the discrete DDPM chain of diffusers' ``DDPMScheduler`` (β schedule
    ``beta_schedule`` from ``beta_start`` to ``beta_end``): m_t = sqrt(ᾱ_t), σ_t = sqrt(1-ᾱ_t).

    ``kind="subvp"``: the sub-VP SDE of Song et al. 2021 (the fingerprinting paper's setting),
    dx = -½β(τ)x dτ + sqrt(β(τ)(1 - e^{-2∫β})) dw with β(τ) = β_min + τ(β_max - β_min),
    τ ∈ (0, 1]; m(τ) = e^{-½∫β}, σ(τ) = 1 - e^{-∫β} (score_sde's ``subVPSDE.marginal_prob``).
    Step t of the grid is τ_t = (t+1)/T, so with T = 1000 the grid runs from score_sde's
    sampling ε = 1e-3 to 1. The network's time input is (T-1)·τ, score_sde's label for
    continuous VP/sub-VP models; training draws τ continuously (:meth:`training_inputs`).

    Both are linear SDEs with Gaussian marginals, so one set of reverse steps serves both
    (see :func:`diffmem.diffusion.sampler.reverse`); every stage asks this object for m_t, σ_t
    and time labels.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "ddpm"
    beta_min: float = 0.1
    beta_max: float = 20.0
    # what the network predicts: ε (every model this workflow trains) or v = m_t ε − σ_t x_0
    # (Salimans & Ho 2022; diffusers' "v_prediction"), for imported DDPM models
    prediction_type: str = "epsilon"
    trained_betas: tuple[float, ...] | None = None  # an explicit β_t (diffusers' trained_betas)

    def __post_init__(self):
        if self.kind not in PROCESSES:
            raise ValueError(f"unknown diffusion process {self.kind!r}; expected one of "
                             f"{PROCESSES}")
        if self.prediction_type not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {self.prediction_type!r}; expected one of "
                             f"{PREDICTIONS}")
        if self.kind != "ddpm" and (self.prediction_type != "epsilon" or self.trained_betas):
            raise ValueError("v-prediction and trained betas need the DDPM process")

    @classmethod
    def from_config(cls, cfg: dict) -> NoiseProcess:
        betas = cfg.get("trained_betas")
        return cls(int(cfg["num_train_timesteps"]), cfg.get("beta_schedule", "linear"),
                   float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02)),
                   cfg.get("process", "ddpm"), float(cfg.get("beta_min", 0.1)),
                   float(cfg.get("beta_max", 20.0)), cfg.get("prediction_type", "epsilon"),
                   tuple(float(b) for b in betas) if betas else None)

    @property
    def T(self) -> int:
        return self.num_train_timesteps

    def scheduler(self, sampler: str = "ddpm"):
        """The diffusers scheduler whose grid (and, for DDPM, whose ᾱ_t) this process uses."""
        from diffusers import DDIMScheduler, DDPMScheduler

        kw = dict(num_train_timesteps=self.T, beta_schedule=self.beta_schedule,
                  beta_start=self.beta_start, beta_end=self.beta_end, clip_sample=True,
                  prediction_type=self.prediction_type,
                  trained_betas=list(self.trained_betas) if self.trained_betas else None)
        if sampler == "ddpm":
            return DDPMScheduler(variance_type="fixed_small", **kw)
        if sampler == "ddim":
            return DDIMScheduler(set_alpha_to_one=True, **kw)
        raise ValueError(f"sampler {sampler!r} has no diffusers scheduler; expected ddpm or ddim")

    # --- continuous time (sub-VP) ---------------------------------------------------------
    def tau(self, t):
        """Continuous time τ_t = (t+1)/T of grid step t (tensor or array)."""
        return (t + 1) / self.T

    def _integral_beta(self, tau):
        return self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau ** 2

    def subvp_marginal(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(τ), σ(τ)) of the sub-VP SDE."""
        b = self._integral_beta(tau)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def subvp_sde(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(β(τ), g(τ)²): drift -½β(τ)x and squared diffusion of the sub-VP SDE."""
        beta = self.beta_min + tau * (self.beta_max - self.beta_min)
        return beta, beta * -torch.expm1(-2 * self._integral_beta(tau))

    # --- the grid ---------------------------------------------------------------------------
    def coefficients64(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_t, σ_t) for t = 0..T-1 in float64."""
        if self.kind == "ddpm":
            acp = self.scheduler("ddpm").alphas_cumprod.double()
            m, s = acp.sqrt(), (1 - acp).sqrt()
        else:
            m, s = self.subvp_marginal(self.tau(torch.arange(self.T, dtype=torch.float64)))
        return m.to(device), s.to(device)

    def coefficients(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_t, σ_t) for t = 0..T-1 as float32."""
        m, s = self.coefficients64(device)
        return m.float(), s.float()

    def signal_at(self, t: int) -> float:
        """m_t at grid step t: how much of the image x_t keeps."""
        return float(self.coefficients64()[0][t])

    def alphas_cumprod(self, device=None) -> torch.Tensor:
        """m_t² (ᾱ_t for DDPM)."""
        return self.coefficients(device)[0] ** 2

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's (and the guidance classifier's) time input for grid step t."""
        if self.kind == "ddpm":
            return t
        return (self.T - 1) * self.tau(t.double()).float()

    def timestep_grid(self, sampler: str, steps: int) -> np.ndarray:
        """Descending grid steps of the reverse process.

        ``ddpm``/``ddim``: the diffusers schedulers' own spacing. ``euler_maruyama``: evenly
        spaced from T-1 down to 0, i.e. τ from 1 to 1/T, as score_sde's
        ``linspace(T, eps, N)``.
        """
        if sampler == "euler_maruyama":
            grid = np.round(np.linspace(self.T - 1, 0, min(steps, self.T))).astype(np.int64)
            return np.unique(grid)[::-1].copy()
        sch = self.scheduler(sampler)
        if sampler == "ddpm" and steps >= self.T:
            return np.asarray(sch.timesteps, dtype=np.int64)
        sch.set_timesteps(steps)
        return np.asarray(sch.timesteps, dtype=np.int64)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  coef: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x_t = m_t x_0 + σ_t ε (for DDPM the same as ``DDPMScheduler.add_noise``)."""
        m, s = self.coefficients(x0.device) if coef is None else coef
        shape = (-1, *([1] * (x0.dim() - 1)))
        return m[t].view(shape) * x0 + s[t].view(shape) * noise

    def training_inputs(self, x0: torch.Tensor, noise: torch.Tensor, generator,
                        coef: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, time input) for one ε-prediction training batch.

        DDPM: t uniform on the T steps. Sub-VP: τ ~ U(1e-5, 1), continuous, as score_sde's
        ``get_sde_loss_fn``; its loss ‖σ s_θ + z‖² with s_θ = -ε_θ/σ is the ε-MSE used here.
        """
        shape = (-1, *([1] * (x0.dim() - 1)))
        if self.kind == "ddpm":
            t = torch.randint(self.T, (x0.shape[0],), generator=generator, device=x0.device)
            return self.add_noise(x0, noise, t, coef), t
        u = torch.rand((x0.shape[0],), generator=generator, device=x0.device)
        tau = u * (1 - SUBVP_TRAIN_EPS) + SUBVP_TRAIN_EPS
        m, s = self.subvp_marginal(tau)
        return m.view(shape) * x0 + s.view(shape) * noise, (self.T - 1) * tau

    def check_sampler(self, sampler: str) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if sampler == "euler_maruyama" and self.kind != "subvp":
            raise ValueError("sampler 'euler_maruyama' integrates the sub-VP SDE; it needs "
                             "diffusion.process: subvp (use ddpm or ddim for a DDPM model)")
