"""The sub-VP SDE through every stage that runs a reverse process: sampling, the boundary
search and SIDE's guided extraction, from the files the training stage writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffmem.attacks.fingerprint.classifiers import build_resnet, save_classifier
from diffmem.io import load_npz, save_npz
from diffmem.stages.data import prepare_data_stage
from diffmem.stages.dpm import sample_stage, train_dpm_stage
from diffmem.stages.fingerprint import boundary_search_stage
from diffmem.stages.side import side_extract_stage, train_surrogate_classifier_stage

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [],
        "norm_num_groups": 8}
SUBVP = {"process": "subvp", "num_train_timesteps": 1000, "beta_min": 0.1, "beta_max": 20.0}


def test_subvp_model_through_sampling_boundary_search_and_side(tmp_path, data_root):
    d = {k: str(tmp_path / v) for k, v in dict(
        train="train.npz", target="target.npz", tj="target.json", heldout="heldout.npz",
        fig="target.png", w="m.safetensors", mc="m.json", unused="unused.npz").items()}
    prepare_data_stage(flag="breastmnist", size=28, root=str(data_root), download=False, n_train=32,
                       seed=0, saf_radius=3.5, saf_grey=0.5, to_rgb=False, out_train=d["train"],
                       out_target=d["target"], out_target_json=d["tj"], out_heldout=d["heldout"],
                       out_figure=d["fig"], out_unused=d["unused"])
    train_dpm_stage(train_npz=d["train"], model_cfg=TINY, diffusion_cfg=SUBVP,
                    train_cfg=dict(steps=20, batch_size=16, learning_rate=2e-3, weight_decay=0.0,
                                   warmup_steps=2, ema_decay=0.9, grad_clip=1.0, bf16=False,
                                   compile=False, log_every=5, checkpoint_every=100,
                                   keep_checkpoints=1),
                    seed=0, device="cpu", out_weights=d["w"], out_config=d["mc"],
                    out_loss_csv=str(tmp_path / "l.csv"), out_loss_png=str(tmp_path / "l.png"),
                    checkpoint_dir=str(tmp_path / "ck"), progress=False)
    assert json.loads((tmp_path / "m.json").read_text())["diffusion"]["process"] == "subvp"

    info = sample_stage(weights=d["w"], model_config=d["mc"], num_samples=12, batch_size=6,
                        sampler="euler_maruyama", steps=20, seed=1, device="cpu", bf16=False,
                        out_samples=str(tmp_path / "s.npz"), out_grid=str(tmp_path / "g.png"),
                        progress=False)
    assert info["num_samples"] == 12

    meta = {"depth": 18, "in_channels": 1, "num_classes": 1}
    for name in ("c_saf", "c_id"):
        save_classifier(build_resnet(18, 1), str(tmp_path / f"{name}.safetensors"), meta,
                        str(tmp_path / "c.json"))
    summary = boundary_search_stage(
        weights=d["w"], model_config=d["mc"], target_npz=d["target"], target_json=d["tj"],
        train_npz=d["train"], heldout_npz=d["heldout"], unused_npz=d["unused"],
        c_saf=str(tmp_path / "c_saf.safetensors"), c_id=str(tmp_path / "c_id.safetensors"),
        classifiers_json=str(tmp_path / "c.json"), threshold=0.5,
        cfg={"method": "exhaustive", "t_step": 250, "trajectories": 2, "batch_size": 8,
             "sampler": "auto", "steps": 20, "controls": 1},
        seed=2, device="cpu", bf16=False,
        out_csv=str(tmp_path / "b.csv"), out_json=str(tmp_path / "b.json"),
        out_png=str(tmp_path / "b.png"))
    assert summary["T"] == 1000 and summary["evaluations"] == 5  # t = 0, 250, 500, 750, 999
    # ρ is the largest t/T at which a reverse run came back, read here from the per-t table
    table = pd.read_csv(tmp_path / "b.csv")
    for query, rho in [("target", summary["rho"]), ("control 1", summary["rho_control"][0])]:
        rows = table[(table["query"] == query) & (table["accepted"] > 0)]
        assert rho == pytest.approx(rows["t_over_T"].max() if len(rows) else 0.0), query
    assert sorted(table["t"].unique()) == [0, 250, 500, 750, 999]
    assert summary["sampler"] == "euler_maruyama"  # auto: the paper's sampler for sub-VP

    save_npz(tmp_path / "labels.npz", labels=np.arange(12) % 2)
    train_surrogate_classifier_stage(
        samples_npz=str(tmp_path / "s.npz"), labels_npz=str(tmp_path / "labels.npz"),
        model_config=d["mc"],
        cfg={"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "steps": 5, "batch_size": 8, "learning_rate": 1e-3},
        seed=3, device="cpu", out_weights=str(tmp_path / "clf.safetensors"),
        out_json=str(tmp_path / "clf.json"))
    out = side_extract_stage(weights=d["w"], model_config=d["mc"],
                             clf_weights=str(tmp_path / "clf.safetensors"),
                             clf_json=str(tmp_path / "clf.json"), scale=3.0, per_cluster=2,
                             sampler="ddim", steps=10, batch_size=4, seed=4, device="cpu",
                             bf16=False, out_npz=str(tmp_path / "x.npz"),
                             out_png=str(tmp_path / "x.png"))
    extracted = load_npz(tmp_path / "x.npz")
    assert out["images"] == 4 and extracted["images"].shape == (4, 28, 28)
    assert extracted["labels"].tolist() == [0, 0, 1, 1]
