"""The noise process and the one sampler: equal to diffusers' schedulers, right shapes/ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmem.diffusion import (
    NoiseProcess,
    build_unet,
    load_model,
    reverse,
    sample,
    save_model,
    start_sequences,
    to_tensor,
    to_uint8,
)

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}


class FixedEps(torch.nn.Module):
    """A stand-in denoiser with a deterministic, t-dependent output."""

    def forward(self, x, t):
        out = torch.tanh(x * 0.7 + t.float().view(-1, 1, 1, 1) / 500.0)
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 20), ("ddpm", 100)])
def test_vectorised_step_equals_diffusers(sampler, steps):
    process = NoiseProcess(num_train_timesteps=100)
    sch = process.scheduler(sampler)
    sch.set_timesteps(steps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    model = FixedEps()
    ours = reverse(model, process, x, int(sch.timesteps[0]), sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    g = torch.Generator().manual_seed(1)
    for t in sch.timesteps:
        eps = model(ref, torch.full((4,), int(t))).sample
        kw = {"generator": g} if sampler == "ddpm" else {"eta": 0.0,
                                                          "use_clipped_model_output": True}
        ref = sch.step(eps, t, ref, **kw).prev_sample
    # both draw one (B, C, H, W) normal per noisy step from equally seeded generators, so even
    # the stochastic DDPM trajectories coincide
    torch.testing.assert_close(ours, ref.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_start_sequences_right_aligned():
    grid = np.array([90, 60, 30, 0])
    seq = start_sequences(grid, [95, 45, 0])
    assert seq.tolist() == [[95, 90, 60, 30, 0], [-1, -1, 45, 30, 0], [-1, -1, -1, -1, 0]]


def test_per_sample_start_equals_separate_runs():
    """Batching trajectories with different start steps gives the same result as one by one."""
    process = NoiseProcess(num_train_timesteps=100)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    starts = [99, 40, 7]
    together = reverse(FixedEps(), process, x, starts, sampler="ddim", steps=10)
    for i, t in enumerate(starts):
        alone = reverse(FixedEps(), process, x[i:i + 1], t, sampler="ddim", steps=10)
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
    a = sample(model, process, 5, shape=(channels, 28, 28), sampler=sampler, steps=5,
               batch_size=2, seed=3, progress=False)
    b = sample(model, process, 5, shape=(channels, 28, 28), sampler=sampler, steps=5,
               batch_size=2, seed=3, progress=False)
    c = sample(model, process, 5, shape=(channels, 28, 28), sampler=sampler, steps=5,
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
        torch.testing.assert_close(loaded(x, t).sample, model.eval()(x, t).sample)
    assert meta["diffusion"]["num_train_timesteps"] == 10


def test_too_many_levels_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        build_unet({"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                    "norm_num_groups": 8}, 28, 1)
