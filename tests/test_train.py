"""DPM training: the loss falls, checkpoints resume exactly, corrupt ones are survived."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from diffmem.data.medmnist import load_medmnist
from diffmem.io import load_safetensors
from diffmem.stages.dpm import train_dpm_stage

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [],
        "norm_num_groups": 8}
DIFF = {"num_train_timesteps": 100, "beta_schedule": "linear"}


def cfg(**kw):
    base = dict(steps=40, batch_size=16, learning_rate=2e-3, weight_decay=0.0, warmup_steps=5,
                ema_decay=0.9, grad_clip=1.0, bf16=False, compile=False, log_every=5,
                checkpoint_every=10, keep_checkpoints=2)
    return base | kw


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory, data_root):
    from diffmem.io import save_npz

    images = load_medmnist(data_root / "breastmnist.npz", "breastmnist", 28)["train_images"][:32]
    path = tmp_path_factory.mktemp("d") / "train.npz"
    save_npz(path, images=images)
    return path


def run(tmp, train_npz, tc, ckdir=None):
    tmp.mkdir(parents=True, exist_ok=True)
    return train_dpm_stage(train_npz=str(train_npz), model_cfg=TINY, diffusion_cfg=DIFF,
                           train_cfg=tc, seed=0, device="cpu",
                           out_weights=str(tmp / "m.safetensors"), out_config=str(tmp / "m.json"),
                           out_loss_csv=str(tmp / "loss.csv"), out_loss_png=str(tmp / "loss.png"),
                           checkpoint_dir=str(ckdir or tmp / "ck"), progress=False)


def test_training_lowers_the_loss(tmp_path, train_npz):
    summary = run(tmp_path, train_npz, cfg(steps=60))
    losses = pd.read_csv(tmp_path / "loss.csv")
    assert list(losses["step"]) == list(range(5, 61, 5))
    assert losses["loss"].iloc[-3:].mean() < 0.6 * losses["loss"].iloc[0]
    assert summary["final_loss"] == pytest.approx(losses["loss"].iloc[-1])
    assert not (tmp_path / "ck").exists(), "checkpoints are removed once the weights are final"
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["unet"]["block_out_channels"] == [16, 32] and meta["train"]["steps"] == 60


def test_subvp_training_lowers_the_loss_and_the_model_samples(tmp_path, train_npz):
    """The sub-VP SDE trains (continuous time), is recorded with the weights, and its samplers
    run from the saved files alone."""
    from diffmem.diffusion.process import NoiseProcess
    from diffmem.diffusion.sampler import sample
    from diffmem.diffusion.unet import load_model

    diff = {"process": "subvp", "num_train_timesteps": 1000, "beta_min": 0.1, "beta_max": 20.0}
    tmp_path.mkdir(exist_ok=True)
    train_dpm_stage(train_npz=str(train_npz), model_cfg=TINY, diffusion_cfg=diff,
                    train_cfg=cfg(steps=60), seed=0, device="cpu",
                    out_weights=str(tmp_path / "m.safetensors"),
                    out_config=str(tmp_path / "m.json"), out_loss_csv=str(tmp_path / "loss.csv"),
                    out_loss_png=str(tmp_path / "loss.png"), checkpoint_dir=str(tmp_path / "ck"),
                    progress=False)
    losses = pd.read_csv(tmp_path / "loss.csv")["loss"]
    assert losses.iloc[-3:].mean() < 0.6 * losses.iloc[0]
    model, meta = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    process = NoiseProcess.from_config(meta["diffusion"])
    assert process.kind == "subvp"
    for sampler in ("euler_maruyama", "ddim"):
        imgs = sample(model, process, 4, shape=(1, 28, 28), sampler=sampler, steps=10,
                      batch_size=4, seed=0, progress=False)
        assert imgs.shape == (4, 28, 28) and imgs.std() > 0


class Crash(Exception):
    pass


def crash_after(monkeypatch, n_checkpoints):
    """Make the run die right after its n-th checkpoint, as a killed job would."""
    import diffmem.diffusion.train as T

    real, calls = T.save_checkpoint, {"n": 0}

    def wrapped(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == n_checkpoints:
            raise Crash

    monkeypatch.setattr(T, "save_checkpoint", wrapped)


def test_resume_continues_the_step_count_and_matches_uninterrupted(tmp_path, train_npz,
                                                                    monkeypatch, caplog):
    ref = run(tmp_path / "ref", train_npz, cfg())
    crash_after(monkeypatch, 2)  # dies after step 20
    with pytest.raises(Crash):
        run(tmp_path / "a", train_npz, cfg())
    assert not (tmp_path / "a/m.safetensors").exists(), "no finished-looking output on a crash"
    assert sorted(p.name for p in (tmp_path / "a/ck").iterdir()) == ["step_000000010",
                                                                     "step_000000020"]
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        resumed = run(tmp_path / "a", train_npz, cfg())
    assert resumed["resumed_from"] == 20
    assert "resuming from" in caplog.text
    losses = pd.read_csv(tmp_path / "a/loss.csv")
    assert list(losses["step"]) == list(range(5, 41, 5))  # history kept, no restart at 0
    w_ref, _ = load_safetensors(tmp_path / "ref/m.safetensors")
    w_res, _ = load_safetensors(tmp_path / "a/m.safetensors")
    for k in w_ref:  # same seeds, same data order: resuming changes nothing
        np.testing.assert_allclose(w_res[k].numpy(), w_ref[k].numpy(), atol=1e-5)
    assert ref["final_loss"] == pytest.approx(resumed["final_loss"], rel=1e-4)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, train_npz, monkeypatch, caplog):
    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        run(tmp_path, train_npz, cfg())
    monkeypatch.undo()
    (tmp_path / "ck/step_000000020/model.safetensors").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        resumed = run(tmp_path, train_npz, cfg())
    assert resumed["resumed_from"] == 10
    assert "unusable" in caplog.text


@pytest.mark.parametrize("broken", ["ema.safetensors", "optimizer.safetensors", "state.json"])
def test_an_unusable_only_checkpoint_starts_fresh_with_none_of_its_weights(
        tmp_path, train_npz, monkeypatch, caplog, broken):
    """The only checkpoint has a corrupt file that is read after the model's weights (the EMA,
    the optimizer state) or holds a wrong optimizer state: the fresh start must equal a run that
    never had a checkpoint, not keep the broken checkpoint's weights."""
    ref = run(tmp_path / "ref", train_npz, cfg(steps=20))
    crash_after(monkeypatch, 1)  # dies right after step 10's checkpoint
    with pytest.raises(Crash):
        run(tmp_path / "a", train_npz, cfg(steps=20))
    monkeypatch.undo()
    ck = tmp_path / "a/ck/step_000000010"
    if broken == "state.json":  # readable, but its optimizer state does not fit the model
        state = json.loads((ck / broken).read_text())
        state["optimizer"]["param_groups"][0]["params"] = [0]
        (ck / broken).write_text(json.dumps(state))
    else:
        (ck / broken).write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        fresh = run(tmp_path / "a", train_npz, cfg(steps=20))
    assert fresh["resumed_from"] == 0 and "unusable" in caplog.text
    w_ref, _ = load_safetensors(tmp_path / "ref/m.safetensors")
    w_new, _ = load_safetensors(tmp_path / "a/m.safetensors")
    for k in w_ref:  # bit for bit: the same seeded initialisation, data order and steps
        assert torch_equal(w_new[k], w_ref[k]), k
    assert fresh["final_loss"] == ref["final_loss"]
    assert pd.read_csv(tmp_path / "a/loss.csv").equals(pd.read_csv(tmp_path / "ref/loss.csv"))


def test_a_checkpoint_that_fails_while_it_is_applied_leaves_the_model_as_it_was(tmp_path,
                                                                              train_npz):
    """Every file read and only then applied; and if applying fails half way (a tensor of the
    wrong shape in the EMA file), the model, the EMA, the optimizer and the generator are put
    back as they were."""
    import torch

    from diffmem.diffusion.train import EMA, load_latest_checkpoint, save_checkpoint
    from diffmem.diffusion.unet import build_unet
    from diffmem.io import save_safetensors

    torch.manual_seed(0)
    model = build_unet(TINY, 28, 1)
    ema = EMA(model, 0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).sample.sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 5, model, ema, opt, gen, [[5, 1.0]], "fp", keep=2)
    ck = tmp_path / "step_000000005"
    tensors, _ = load_safetensors(ck / "ema.safetensors")
    last = sorted(tensors)[-1]
    tensors[last] = torch.zeros(3)  # the wrong shape: fails inside load_state_dict
    save_safetensors(ck / "ema.safetensors", tensors)

    torch.manual_seed(1)
    fresh = build_unet(TINY, 28, 1)
    fresh_ema = EMA(fresh, 0.9)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_gen = torch.Generator().manual_seed(7)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    before_ema = {k: v.clone() for k, v in fresh_ema.module.state_dict().items()}
    rng = fresh_gen.get_state()
    assert load_latest_checkpoint(tmp_path, "fp", fresh, fresh_ema, fresh_opt,
                                  fresh_gen) == (0, [])
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    assert all(torch.equal(v, before_ema[k]) for k, v in fresh_ema.module.state_dict().items())
    assert fresh_opt.state_dict()["state"] == {} and fresh_ema.num_updates == 0
    assert torch.equal(fresh_gen.get_state(), rng)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_changed_settings_do_not_resume_old_checkpoints(tmp_path, train_npz, monkeypatch,
                                                       caplog):
    crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        run(tmp_path, train_npz, cfg())
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        fresh = run(tmp_path, train_npz, cfg(learning_rate=1e-3))
    assert fresh["resumed_from"] == 0
    assert "other settings" in caplog.text


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory, train_npz):
    """The trainer and the plain diffusers loop (bench.py) on the same data, model, seed and lr."""
    import torch

    from diffmem.io import load_npz
    from diffmem.stages.bench import plain_diffusers_loop

    tmp = tmp_path_factory.mktemp("pair")
    images = load_npz(train_npz)["images"]
    out = []
    for seed in (0, 1, 2):
        _, plain = plain_diffusers_loop(images, TINY, DIFF, 16, 80, torch.device("cpu"),
                                        warmup=0, lr=2e-3, seed=seed)
        train_dpm_stage(train_npz=str(train_npz), model_cfg=TINY, diffusion_cfg=DIFF,
                  train_cfg=cfg(steps=80, warmup_steps=1), seed=seed, device="cpu",
                  out_weights=str(tmp / "m.safetensors"), out_config=str(tmp / "m.json"),
                  out_loss_csv=str(tmp / "loss.csv"), out_loss_png=str(tmp / "l.png"),
                  checkpoint_dir=str(tmp / "ck"), progress=False)
        out.append((np.asarray(plain), pd.read_csv(tmp / "loss.csv")["loss"].to_numpy()))
    return out, tmp


def test_trainer_losses_match_the_plain_diffusers_loop(trained_pair):
    """Same model, data, lr, steps: the fast trainer's loss curve is the plain loop's, interval
    by interval (5 steps each, averaged over 3 seeds), so its speed-ups do not change what is
    learned. Measured on this data: every interval's ratio within 0.82-1.16 and the mean ratio
    after the first interval 1.03; a target scaled by 0.9 gives intervals down to 0.67 and a
    mean of 0.85, timesteps drawn from the first half of the chain only up to 1.86 and 1.58."""
    pairs, _ = trained_pair
    plain = np.mean([p.reshape(-1, 5).mean(1) for p, _ in pairs], axis=0)
    ours = np.mean([o for _, o in pairs], axis=0)  # logged every 5 steps: the same intervals
    assert plain.shape == ours.shape == (16,)
    assert ours[-6:].mean() < 0.5 * ours[0]  # it learned
    ratio = ours / plain
    assert ratio[0] == pytest.approx(1, abs=0.15), ratio
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio
    assert ratio[1:].mean() == pytest.approx(1, abs=0.08), ratio


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 10)])
def test_samples_match_diffusers_pipelines(trained_pair, sampler, steps):
    """Our batched sampler and diffusers' DDIMPipeline / DDPMPipeline on the same trained model
    draw the same distribution: pixel mean, spread and mean image agree."""
    import torch
    from diffusers import DDIMPipeline, DDPMPipeline

    from diffmem.diffusion.process import NoiseProcess
    from diffmem.diffusion.sampler import sample
    from diffmem.diffusion.unet import load_model

    _, tmp = trained_pair
    model, meta = load_model(tmp / "m.safetensors", tmp / "m.json")
    process = NoiseProcess.from_config(meta["diffusion"])
    ours = sample(model, process, 256, shape=(1, 28, 28), sampler=sampler, steps=steps,
                  batch_size=256, seed=0, progress=False) / 255.0
    pipe = (DDIMPipeline if sampler == "ddim" else DDPMPipeline)(
        unet=model.net, scheduler=process.scheduler(sampler))
    pipe.set_progress_bar_config(disable=True)
    kw = {"eta": 0.0, "use_clipped_model_output": True} if sampler == "ddim" else {}
    ref = pipe(batch_size=256, generator=torch.Generator().manual_seed(5),
               num_inference_steps=steps, output_type="np", **kw).images[..., 0]
    assert ours.mean() == pytest.approx(ref.mean(), abs=0.02)
    assert ours.std() == pytest.approx(ref.std(), rel=0.05)
    assert np.abs(ours.mean(0) - ref.mean(0)).mean() < 0.03
