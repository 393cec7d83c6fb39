"""DPM training: the loss falls, checkpoints resume exactly, corrupt ones are survived."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from diffmem.data import load_medmnist
from diffmem.io import load_safetensors
from diffmem.train import train_dpm

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
    return train_dpm(train_npz=str(train_npz), model_cfg=TINY, diffusion_cfg=DIFF, train_cfg=tc,
                     seed=0, device="cpu", out_weights=str(tmp / "m.safetensors"),
                     out_config=str(tmp / "m.json"), out_loss_csv=str(tmp / "loss.csv"),
                     out_loss_png=str(tmp / "loss.png"),
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
    from diffmem.diffusion import NoiseProcess, load_model, sample

    diff = {"process": "subvp", "num_train_timesteps": 1000, "beta_min": 0.1, "beta_max": 20.0}
    tmp_path.mkdir(exist_ok=True)
    train_dpm(train_npz=str(train_npz), model_cfg=TINY, diffusion_cfg=diff, train_cfg=cfg(steps=60),
              seed=0, device="cpu", out_weights=str(tmp_path / "m.safetensors"),
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
    import diffmem.train as T

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
