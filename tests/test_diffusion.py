"""The noise process and the one sampler: equal to diffusers' schedulers, right shapes/ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmem.device import to_tensor, to_uint8
from diffmem.diffusion.denoiser import Denoiser
from diffmem.diffusion.process import NoiseProcess
from diffmem.diffusion.sampler import EpsRunner, reverse, sample, start_sequences
from diffmem.diffusion.unet import build_unet, load_model, save_model

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}


class FixedEps(torch.nn.Module):
    """A stand-in denoiser with a deterministic, t-dependent output."""

    def forward(self, x, t):
        out = torch.tanh(x * 0.7 + t.float().view(-1, 1, 1, 1) / 500.0)
        return type("Out", (), {"sample": out})()


def diffusers_trajectory(sch, model, x, sampler):
    """The same run with diffusers' own scheduler.step, noise from an equally seeded generator."""
    ref = x.clone()
    g = torch.Generator().manual_seed(1)
    for t in sch.timesteps:
        out = model(ref, torch.full((len(x),), int(t))).sample
        kw = {"generator": g} if sampler == "ddpm" else {"eta": 0.0,
                                                          "use_clipped_model_output": True}
        ref = sch.step(out, t, ref, **kw).prev_sample
    return ref


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 20), ("ddpm", 100)])
def test_vectorised_step_equals_diffusers(sampler, steps):
    process = NoiseProcess(num_train_timesteps=100)
    sch = process.scheduler(sampler)
    sch.set_timesteps(steps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    model = FixedEps()
    ours = reverse(Denoiser(model, process), process,
                   x, int(sch.timesteps[0]), sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(1))
    ref = diffusers_trajectory(sch, model, x, sampler)
    # both draw one (B, C, H, W) normal per noisy step from equally seeded generators, so even
    # the stochastic DDPM trajectories coincide. diffusers forms β_t = 1 - ᾱ_t/ᾱ_{t-1} in
    # float32 (relative error ~1e-3 for the smallest β); ours forms the step coefficients in
    # float64, so 100 DDPM steps drift apart by ~7e-5 — and ours is the accurate one
    # (test_ddpm_steps_match_a_float64_reference).
    tol = 2e-4 if sampler == "ddpm" else 1e-5
    torch.testing.assert_close(ours, ref.clamp(-1, 1), atol=tol, rtol=tol)


def test_ddpm_steps_match_a_float64_reference():
    """The DDPM posterior step written out in float64 (same noise stream) agrees to 2e-6."""
    process = NoiseProcess(num_train_timesteps=100)
    acp = process.scheduler("ddpm").alphas_cumprod.double()
    model = FixedEps()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    ref = x.double()
    for t in range(99, -1, -1):
        eps = model(ref.float(), torch.full((4,), t)).sample.double()
        a_t, a_p = acp[t], (acp[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
        beta = 1 - a_t / a_p
        x0 = ((ref - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        mean = (a_p.sqrt() * beta / (1 - a_t)) * x0 + \
            ((1 - beta).sqrt() * (1 - a_p) / (1 - a_t)) * ref
        var = (1 - a_p) / (1 - a_t) * beta
        ref = mean + (t > 0) * var.sqrt() * torch.randn(ref.shape, generator=g).double()
    ours = reverse(Denoiser(model, process), process, x, 99, sampler="ddpm", steps=100,
                   generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.double(), ref.clamp(-1, 1), atol=2e-6, rtol=0)


def test_start_sequences_right_aligned():
    grid = np.array([90, 60, 30, 0])
    seq = start_sequences(grid, [95, 45, 0])
    assert seq.tolist() == [[95, 90, 60, 30, 0], [-1, -1, 45, 30, 0], [-1, -1, -1, -1, 0]]


def test_per_sample_start_equals_separate_runs():
    """Batching trajectories with different start steps gives the same result as one by one."""
    process = NoiseProcess(num_train_timesteps=100)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    starts = [99, 40, 7]
    together = reverse(Denoiser(FixedEps(), process), process, x, starts, sampler="ddim", steps=10)
    for i, t in enumerate(starts):
        alone = reverse(Denoiser(FixedEps(), process), process,
                        x[i:i + 1], t, sampler="ddim", steps=10)
        torch.testing.assert_close(together[i:i + 1], alone)


def test_add_noise_matches_diffusers():
    process = NoiseProcess(num_train_timesteps=50)
    x0, noise = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([0, 10, 20, 30, 49])
    ref = process.scheduler("ddpm").add_noise(x0, noise, t)
    torch.testing.assert_close(process.add_noise(x0, noise, t), ref)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sample_shape_range_and_seed(tmp_path, sampler, channels):
    torch.manual_seed(0)
    model = build_unet(TINY, 28, channels).eval()
    process = NoiseProcess(num_train_timesteps=50)
    a = sample(Denoiser(model, process), process,
               5, shape=(channels, 28, 28), sampler=sampler, steps=5,
               batch_size=2, seed=3, progress=False)
    b = sample(Denoiser(model, process), process,
               5, shape=(channels, 28, 28), sampler=sampler, steps=5,
               batch_size=2, seed=3, progress=False)
    c = sample(Denoiser(model, process), process,
               5, shape=(channels, 28, 28), sampler=sampler, steps=5,
               batch_size=2, seed=4, progress=False)
    assert a.dtype == np.uint8
    assert a.shape == ((5, 28, 28) if channels == 1 else (5, 28, 28, 3))
    assert a.std() > 0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_uint8_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(to_tensor(img)), img)
    grey = img[..., 0]
    np.testing.assert_array_equal(to_uint8(to_tensor(grey)), grey)


def test_model_save_load_round_trip_is_safetensors(tmp_path):
    model = build_unet(TINY, 28, 1)
    save_model(model, tmp_path / "m.safetensors", tmp_path / "m.json",
               extra={"diffusion": {"num_train_timesteps": 10}})
    assert (tmp_path / "m.safetensors").read_bytes()[8:9] == b"{"  # safetensors header
    loaded, meta = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.output(x, t), model.eval()(x, t).sample)
    assert meta["diffusion"]["num_train_timesteps"] == 10


def test_too_many_levels_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        build_unet({"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                    "norm_num_groups": 8}, 28, 1)


# ----------------------------------------------------------------------------- sub-VP SDE
def test_subvp_marginals_follow_score_sde():
    """m(τ), σ(τ) equal score_sde's subVPSDE.marginal_prob; σ² ≤ 1 - m² (the "sub" variance)."""
    p = NoiseProcess(num_train_timesteps=1000, kind="subvp")
    m, s = p.coefficients()
    tau = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    log_mean = -0.25 * tau ** 2 * (20.0 - 0.1) - 0.5 * tau * 0.1  # score_sde, written out
    torch.testing.assert_close(m.double(), torch.exp(log_mean), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(s.double(), 1 - torch.exp(2 * log_mean), atol=1e-7, rtol=1e-6)
    assert float(p.tau(torch.tensor(0))) == pytest.approx(1e-3)  # score_sde's sampling eps
    assert bool((s ** 2 <= 1 - m ** 2 + 1e-7).all())
    assert bool((s[1:] > s[:-1]).all()) and float(s[-1]) > 0.999 and float(m[-1]) < 0.01
    # its SDE: d(σ²)/dτ = g² - β σ² (the variance ODE of a linear SDE) at a few τ
    t = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    h = 1e-6
    var = lambda x: p.subvp_marginal(x)[1] ** 2  # noqa: E731
    beta, g2 = p.subvp_sde(t)
    torch.testing.assert_close((var(t + h) - var(t - h)) / (2 * h), g2 - beta * var(t),
                               rtol=1e-5, atol=1e-8)


def test_subvp_training_inputs_are_continuous_and_have_the_marginal():
    p = NoiseProcess(num_train_timesteps=1000, kind="subvp")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    noise = torch.randn(x0.shape, generator=gen)
    xt, time = p.training_inputs(x0, noise, gen)
    assert time.dtype == torch.float32 and 0 < float(time.min()) < 1 and float(time.max()) < 999
    assert len(torch.unique(time)) > 19000  # not snapped to a grid
    m, s = p.subvp_marginal(time / 999)
    torch.testing.assert_close(xt.flatten(), m * 0.5 + s * noise.flatten())


class GaussianOracle(torch.nn.Module):
    """The exact ε-predictor for data N(μ, v) per pixel: E[ε | x_t] = σ (x_t - m μ)/(m² v + σ²)."""

    def __init__(self, process, mu, var):
        super().__init__()
        self.p, self.mu, self.var = process, mu, var
        self.m, self.s = process.coefficients()

    def forward(self, x, time):
        if self.p.kind == "ddpm":
            m, s = self.m[time], self.s[time]
        else:  # the time input is (T-1)·τ
            m, s = self.p.subvp_marginal(time.double() / (self.p.T - 1))
        m, s = m.float().view(-1, 1, 1, 1), s.float().view(-1, 1, 1, 1)
        return type("Out", (), {"sample": s * (x - m * self.mu) / (m ** 2 * self.var + s ** 2)})()


@pytest.mark.parametrize("kind,sampler", [("ddpm", "ddpm"), ("ddpm", "ddim"), ("subvp", "ddpm"),
                                         ("subvp", "ddim"), ("subvp", "euler_maruyama")])
def test_every_sampler_draws_the_data_distribution_from_the_exact_denoiser(kind, sampler):
    """With the exact ε of Gaussian data, every sampler of both processes must return N(μ, v):
    a sign or coefficient error in any step formula shifts the mean or the spread. (All T steps:
    with a coarse grid first-order samplers shrink the spread of such narrow data, and T must be
    long enough that x_T is pure noise, which T = 100 with the linear βs is not.)"""
    process = NoiseProcess(num_train_timesteps=1000, kind=kind)
    steps = 1000
    mu, sd = 0.3, 0.2
    model = GaussianOracle(process, mu, sd ** 2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 2, 2, generator=gen)
    t0 = int(process.timestep_grid(sampler, steps)[0])
    out = reverse(Denoiser(model, process), process,
                  x, t0, sampler=sampler, steps=steps, generator=gen)
    assert float(out.mean()) == pytest.approx(mu, abs=0.01)
    assert float(out.std()) == pytest.approx(sd, rel=0.05)


def test_subvp_reverse_from_an_intermediate_step_and_the_sampler_check():
    """Starting at step t from x_t ~ q(x_t | x_0) with a point-mass oracle lands back on x_0."""
    process = NoiseProcess(num_train_timesteps=1000, kind="subvp")
    x0 = torch.full((8, 1, 4, 4), -0.4)
    model = GaussianOracle(process, -0.4, 0.0)
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([999, 800, 500, 300, 100, 50, 10, 0])
    xt = process.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
    for sampler in ("ddim", "ddpm", "euler_maruyama"):
        out = reverse(Denoiser(model, process), process,
                      xt, t.numpy(), sampler=sampler, steps=200, generator=gen)
        torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="needs diffusion.process: subvp"):
        reverse(model, NoiseProcess(num_train_timesteps=10), xt[:1], 5,
                sampler="euler_maruyama", steps=5)


def test_subvp_model_time_matches_training_labels():
    p = NoiseProcess(num_train_timesteps=1000, kind="subvp")
    t = torch.tensor([0, 499, 999])
    torch.testing.assert_close(p.model_time(t), torch.tensor([0.999, 499.5, 999.0]))
    assert NoiseProcess.from_config({"num_train_timesteps": 10, "process": "subvp"}).kind == \
        "subvp"
    assert NoiseProcess.from_config({"num_train_timesteps": 10}).kind == "ddpm"
    with pytest.raises(ValueError, match="unknown diffusion process 'vp'"):
        NoiseProcess(kind="vp")


SCHEDULES = [("linear", None), ("scaled_linear", None), ("squaredcos_cap_v2", None),
             ("trained", tuple(np.linspace(2e-4, 0.04, 100)))]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule,betas", SCHEDULES)
@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 10)])
def test_each_beta_schedule_and_v_prediction_step_like_diffusers(schedule, betas, prediction,
                                                                  sampler, steps):
    """Imported models: every β schedule diffusers names (and an explicit trained_betas) and both
    ε- and v-prediction give diffusers' own scheduler.step, trajectory for trajectory."""
    process = NoiseProcess(num_train_timesteps=100,
                           beta_schedule="linear" if betas else schedule,
                           beta_start=1e-4 if schedule != "scaled_linear" else 8.5e-4,
                           beta_end=0.02 if schedule != "scaled_linear" else 0.012,
                           prediction_type=prediction, trained_betas=betas)
    sch = process.scheduler(sampler)
    assert sch.config.prediction_type == prediction
    sch.set_timesteps(steps)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = FixedEps()
    ours = reverse(Denoiser(model, process), process,
                   x, int(sch.timesteps[0]), sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(1))
    ref = diffusers_trajectory(sch, model, x, sampler)
    tol = 3e-4 if sampler == "ddpm" else 1e-5  # float32 β in diffusers (see above)
    torch.testing.assert_close(ours, ref.clamp(-1, 1), atol=tol, rtol=tol)


def test_v_prediction_loss_target_is_epsilon():
    """predict_eps turns a v-prediction into ε̂ = σ x_t + m v: for the exact v of a known x_0 and
    ε it returns ε (what membership inference scores)."""
    from diffmem.diffusion.sampler import predict_eps

    process = NoiseProcess(num_train_timesteps=100, prediction_type="v_prediction",
                           beta_schedule="squaredcos_cap_v2")
    x0, eps = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    m, s = (c[t].view(-1, 1, 1, 1) for c in process.coefficients())
    x_t = m * x0 + s * eps

    class ExactV(torch.nn.Module):
        def forward(self, x, tt):
            return type("Out", (), {"sample": m * eps - s * x0})()

    torch.testing.assert_close(predict_eps(Denoiser(ExactV(), process), process,
                                           x_t, t), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler,mixed", [("ddim", True), ("ddpm", False), ("ddpm", True)])
def test_the_fixed_shape_path_matches_the_plain_one(sampler, mixed):
    """The GPU fast path's code, run eagerly: padded static buffers and masked steps give the
    plain loop's images row for row, for deterministic and ancestral steps, with all
    trajectories starting together or each at its own step (the boundary search's case)."""
    torch.manual_seed(0)
    model = build_unet(TINY, 28, 1).eval()
    process = NoiseProcess(num_train_timesteps=50)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t_start = np.array([49, 30, 10, 30, 3]) if mixed else 49
    den = Denoiser(model, process)
    runner = EpsRunner(den, bucket=4)  # 5 rows padded to 8
    kw = dict(sampler=sampler, steps=10)
    plain = reverse(den, process, x, t_start, generator=torch.Generator().manual_seed(2), **kw)
    fast = reverse(den, process, x, t_start, generator=torch.Generator().manual_seed(2),
                   runner=runner, **kw)
    assert list(runner.sizes) == [8] and runner.calls > 0
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    if sampler == "ddpm":  # the noise matters: another stream gives other images
        other = reverse(den, process, x, t_start, generator=torch.Generator().manual_seed(3),
                        runner=runner, **kw)
        assert (other - plain).abs().max() > 0.05
    # sampling pads its last batch the same way and draws the same images
    a = sample(den, process, 5, shape=(1, 28, 28), sampler=sampler, steps=5, batch_size=3,
               seed=3, progress=False)
    b = sample(den, process, 5, shape=(1, 28, 28), sampler=sampler, steps=5, batch_size=3,
               seed=3, progress=False, runner=EpsRunner(den, bucket=4))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize("cfg", [
    {"num_train_timesteps": 100, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.2},
    {"num_train_timesteps": 50, "beta_schedule": "squaredcos_cap_v2"},
    {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
     "beta_end": 0.012},
    {"num_train_timesteps": 20, "trained_betas": list(np.linspace(1e-3, 0.3, 20))},
    {"num_train_timesteps": 1000, "process": "subvp"},
])
def test_the_signal_check_at_dag_build_agrees_with_the_noise_process(cfg):
    """diffusion.schedule (numpy, no diffusers: the config checks) gives the grid's first step
    and the signal there as NoiseProcess (diffusers' schedulers) does."""
    from diffmem.diffusion.schedule import first_step, signal_at_start

    process = NoiseProcess.from_config(cfg)
    samplers = ["euler_maruyama"] if cfg.get("process") == "subvp" else ["ddim", "ddpm"]
    for sampler in samplers:
        for steps in sorted({1, 7, 10, 50, process.T} & set(range(1, process.T + 1))):
            t0 = int(process.timestep_grid(sampler, steps)[0])
            assert first_step(process.T, sampler, steps) == t0, (sampler, steps)
            assert signal_at_start(cfg, sampler, steps) == pytest.approx(
                process.signal_at(t0), rel=1e-4, abs=1e-7)
