"""Latent diffusion models: the folders accepted and refused, the model object with its
autoencoder, every question asked in the model's own space, and the decoder-aware null (see
tests/latent_model.py for the fixture, trained on CPU)."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffmem.errors import ConfigError, ModelFolderError

from .conftest import TEST_CONFIG
from .test_external import refused as _refused

# a latent folder is refused reading its files or checking its entry
refused = partial(_refused, errors=(ModelFolderError, ConfigError))


def spoil_tensor(path: Path, key: str, how: str) -> None:
    """A safetensors file with tensor ``key`` deleted (``missing``) or given the wrong shape
    (``shaped``, three zeros), as an edited or truncated weights file would have it."""
    state = load_file(str(path))
    if how == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(3)
    save_file(state, str(path))


@pytest.fixture
def tiny_ldm(tmp_path) -> Path:
    """An untrained latent folder of the fixture's shapes (fast: for what the folder's files
    decide)."""
    from .latent_model import autoencoder, save_folder, unet

    save_folder(tmp_path / "ldm", autoencoder(), unet())
    return tmp_path / "ldm"


# --- the folders: read before any job, loaded strictly in it ---------------------------------

def test_a_latent_folder_is_read_with_its_quirks(tiny_ldm):
    """Old attention names renamed, a missing scaling_factor → diffusers' default (said so),
    clip_sample false accepted for latents, the images' size and channels the decoder's."""
    from diffmem.diffusion.pretrained import inspect_model_folder, load_pretrained

    info = inspect_model_folder(tiny_ldm)
    ae = info["autoencoder"]
    assert ae["class"] == "AutoencoderKL" and ae["factor"] == 2 and ae["latent_channels"] == 2
    assert ae["scale"] == 0.18215 and "default" in ae["scale_source"]
    assert str(tiny_ldm / "vae/diffusion_pytorch_model.safetensors") in info["files"]
    header = json.loads(Path(ae["weights"][0]).read_bytes()[8:8 + int.from_bytes(
        Path(ae["weights"][0]).read_bytes()[:8], "little")])
    assert any(".attentions.0.query." in k for k in header)  # the fixture keeps old names
    unet, extra, autoencoder = load_pretrained(tiny_ldm)
    assert extra["latent"] | {"scale_source": None} == {
        "kind": "AutoencoderKL", "scale": 0.18215, "scale_source": None, "shift": 0.0,
        "shape": [2, 8, 8], "image_size": 16, "channels": 1, "intensity_range": [-1.0, 1.0],
        "clip": False}
    # the renamed tensors are the file's: nothing left at its initial value
    state = load_file(str(ae["weights"][0]))
    q = [k for k in state if k.endswith(".attentions.0.query.weight")][0]
    torch.testing.assert_close(autoencoder.state_dict()[q.replace(".query.", ".to_q.")],
                               state[q])


def _config_with(folder: Path, tmp_path: Path, data_root: Path, **entry) -> dict:
    """The test config with one ``models`` entry ``l``: ``folder`` and the fixture's images
    (written as .npz under ``tmp_path``), plus ``entry``."""
    import yaml

    from .latent_model import images

    imgs = images(data_root)
    for key in ("train", "heldout"):
        np.savez(tmp_path / f"{key}.npz", images=imgs[key])
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["models"] = {"l": {"folder": str(folder), "train": str(tmp_path / "train.npz"),
                           "heldout": str(tmp_path / "heldout.npz"), **entry}}
    return cfg


def test_the_model_info_sizes_the_images_by_the_decoder(tiny_ldm, tmp_path, data_root):
    from diffmem.stages.config import model_info

    info = model_info(_config_with(tiny_ldm, tmp_path, data_root), "l")
    assert (info["size"], info["channels"], info["latent"]) == (16, 1, True)


def test_a_pixel_folder_still_refuses_clip_sample_false(tiny_ldm):
    from diffmem.diffusion.pretrained import diffusion_from_scheduler

    cfg = json.loads((tiny_ldm / "scheduler/scheduler_config.json").read_text())
    refused(diffusion_from_scheduler, cfg, "s", match="clip_sample: false")
    assert diffusion_from_scheduler(cfg, "s", latent=True)["process"] == "ddpm"


def _edit(path: Path, **changes):
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("case,match", [
    ("bin_only", "is pickled and diffmem never unpickles a user's file; convert it once where "
                 "you trust it: AutoencoderKL.from_pretrained"),
    ("latent_channels", "latent_channels = 0 is invalid: expected an integer from 1 to 64"),
    ("block_type", "= 'CrossAttnDownBlock2D' is invalid: expected one of ['DownEncoderBlock2D']"),
    ("latents_mean", "latents_mean = [0.1, 0.2] is invalid: expected null"),
    ("unet_conditional", "describes a UNet2DConditionModel; only the unconditional 2D "
                         "UNet2DModel is supported"),
    ("unet_3d", "describes a UNet3DConditionModel"),
    ("pipeline", "describes a StableDiffusionPipeline: diffmem audits unconditional 2D"),
    ("no_vae", "expected one autoencoder folder, vqvae/ (VQModel) or vae/ (AutoencoderKL)"),
    ("wrong_class", "describes a VQModel; expected AutoencoderKL in vae/"),
    ("channels", "a U-Net of 4 input and 4 output channels on the 2-channel latents"),
])
def test_latent_folders_are_refused_before_any_job(tiny_ldm, case, match):
    from diffmem.diffusion.pretrained import inspect_model_folder

    vae, unet = tiny_ldm / "vae", tiny_ldm / "unet"
    if case == "bin_only":
        weights = vae / "diffusion_pytorch_model.safetensors"
        weights.rename(vae / "diffusion_pytorch_model.bin")
    elif case == "latent_channels":
        _edit(vae / "config.json", latent_channels=0)
    elif case == "block_type":
        _edit(vae / "config.json", down_block_types=["CrossAttnDownBlock2D"] * 2)
    elif case == "latents_mean":
        _edit(vae / "config.json", latents_mean=[0.1, 0.2])
    elif case == "unet_conditional":
        _edit(unet / "config.json", _class_name="UNet2DConditionModel")
    elif case == "unet_3d":
        _edit(unet / "config.json", _class_name="UNet3DConditionModel")
    elif case == "pipeline":
        _edit(tiny_ldm / "model_index.json", _class_name="StableDiffusionPipeline")
    elif case == "no_vae":
        shutil.rmtree(vae)
    elif case == "wrong_class":
        _edit(vae / "config.json", _class_name="VQModel")
    elif case == "channels":
        _edit(unet / "config.json", in_channels=4, out_channels=4)
    refused(inspect_model_folder, tiny_ldm, match=match)


@pytest.mark.parametrize("case,match", [
    ("missing", "vae: the weights do not match the AutoencoderKL its config describes: tensors "
                "1 missing (decoder.conv_out.bias)"),
    ("shaped", "1 mis-shaped, file vs config (decoder.conv_out.bias (3,) vs (1,))"),
])
def test_a_missing_or_mis_shaped_autoencoder_tensor_fails_the_job(tiny_ldm, case, match):
    from diffmem.diffusion.pretrained import inspect_model_folder, load_pretrained

    spoil_tensor(tiny_ldm / "vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.bias",
                 case)
    inspect_model_folder(tiny_ldm)  # a valid file: the autoencoder built in the job decides
    refused(load_pretrained, tiny_ldm, match=match)


def test_a_vq_folder_encodes_before_quantizing_and_decodes_through_it(tmp_path):
    """diffusers' LDMPipeline layout (vqvae/ VQModel): the U-Net's latents are the
    pre-quantization ones (scaled), the decoder quantizes, as LDMPipeline decodes."""
    from diffusers import DDPMScheduler, UNet2DModel, VQModel

    from diffmem.diffusion.pretrained import load_pretrained
    from diffmem.diffusion.unet import load_model, save_model

    torch.manual_seed(0)
    vq = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                 latent_channels=3, num_vq_embeddings=16, norm_num_groups=8, sample_size=8,
                 scaling_factor=0.5)
    net = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                      norm_num_groups=8, layers_per_block=1,
                      down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    folder = tmp_path / "ldm"
    vq.save_pretrained(folder / "vqvae")
    net.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=50, beta_end=0.3, clip_sample=False).save_pretrained(
        folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline"}))
    u, extra, ae = load_pretrained(folder)
    assert extra["latent"]["scale"] == 0.5 and "vqvae/config.json" in \
        extra["latent"]["scale_source"]
    save_model(u, tmp_path / "m.safetensors", tmp_path / "m.json", extra=extra, autoencoder=ae)
    assert any(k.startswith("autoencoder.quantize.") for k in load_file(
        str(tmp_path / "m.safetensors")))
    model, meta = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), vq.encode(x).latents * 0.5)
        z = torch.randn(5, 3, 4, 4)
        torch.testing.assert_close(model.decode(z), vq.decode(z / 0.5).sample.clamp(-1, 1))
    assert meta["latent"]["shape"] == [3, 4, 4] and meta["latent"]["image_size"] == 8
    # without scaling_factor a VQModel's scale is 1, as the original LDM VQ models were trained
    # (diffusers' default 0.18215 decodes CompVis/ldm-celebahq-256 into noise)
    from diffmem.diffusion.pretrained import inspect_model_folder

    _edit(folder / "vqvae/config.json", scaling_factor=None)
    ae_info = inspect_model_folder(folder)["autoencoder"]
    assert ae_info["scale"] == 1.0 and "original LDM VQ" in ae_info["scale_source"]


# --- the model object: sampling through the decoder, unclipped ------------------------------

class _Zero(torch.nn.Module):
    """A 'U-Net' that predicts no noise: x̂₀ = x_t / m_t, far outside [-1, 1] early on."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"in_channels": 2, "sample_size": 8})()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return type("O", (), {"sample": x * self.w})()


def test_latents_are_sampled_unclipped_and_then_decoded(tiny_ldm):
    from diffmem.device import to_uint8
    from diffmem.diffusion.denoiser import LatentDenoiser
    from diffmem.diffusion.pretrained import load_pretrained
    from diffmem.diffusion.process import NoiseProcess
    from diffmem.diffusion.sampler import sample

    _, extra, ae = load_pretrained(tiny_ldm)
    process = NoiseProcess.from_config(extra["diffusion"])
    kept = {}
    for clip in (False, True):
        model = LatentDenoiser(_Zero(), process, ae, kind="AutoencoderKL", scale=0.18215,
                               clip=clip).eval()
        latents = []
        images = sample(model, process, 6, shape=(2, 8, 8), sampler="ddim", steps=10, seed=0,
                        progress=False, latents=latents)
        z = np.concatenate(latents)
        kept[clip] = z
        assert images.shape == (6, 16, 16) and images.dtype == np.uint8
        # the images are the decoder's, of the latents sampled
        np.testing.assert_array_equal(images, to_uint8(model.decode(torch.as_tensor(z))))
    assert np.abs(kept[False]).max() > 5  # unclipped: x̂₀ = x_t / m_t kept
    assert np.abs(kept[True]).max() <= 1  # the scheduler's clip_sample: true honoured


# --- the memorizer and its barely trained twin, in process ----------------------------------

def _audit_in_process(folder: str, latent_model: dict, tmp_path: Path, scoring: dict,
                      monai: dict | None = None) -> dict:
    """Import, sample, the decoder-aware null, the copy and membership questions."""
    from diffmem.stages.dpm import sample_stage
    from diffmem.stages.membership import membership_stage
    from diffmem.stages.models import (
        autoencoder_audit_stage,
        import_images_stage,
        import_model_stage,
    )
    from diffmem.stages.scores import extraction_metrics_stage

    d = tmp_path
    import_model_stage(folder=folder, out_weights=str(d / "m.safetensors"),
                       out_config=str(d / "m.json"), monai=monai)
    import_images_stage(train=latent_model["train"], heldout=latent_model["heldout"], size=16,
                        channels=1, resize=True, out_train=str(d / "train.npz"),
                        out_heldout=str(d / "heldout.npz"), out_unused=str(d / "unused.npz"),
                        out_json=str(d / "images.json"))
    sample_stage(weights=str(d / "m.safetensors"), model_config=str(d / "m.json"),
                 num_samples=24, batch_size=24, sampler="ddpm", steps=100, seed=1,
                 device="cpu", bf16=False, out_samples=str(d / "samples.npz"),
                 out_grid=str(d / "grid.png"), progress=False)
    files = dict(weights=str(d / "m.safetensors"), model_config=str(d / "m.json"),
                 train_npz=str(d / "train.npz"), heldout_npz=str(d / "heldout.npz"),
                 unused_npz=str(d / "unused.npz"), duplicates_npz=None, device="cpu")
    ae = autoencoder_audit_stage(**files, scoring=scoring, membership={"margin": 0.05},
                                 out_heldout=str(d / "heldout_decoded.npz"),
                                 out_json=str(d / "autoencoder.json"))
    mem = membership_stage(**files, cfg={"draws": 2, "t_grid": [0.02, 0.1],
                                         "t_fractions": [0.02, 0.1]}, scoring=scoring,
                           bf16=False, out_json=str(d / "membership.json"),
                           out_png=str(d / "membership.png"), out_scores=str(d / "mem.npz"))
    scores = extraction_metrics_stage(
        train_npz=str(d / "train.npz"), plain_npz=str(d / "samples.npz"), side_npzs=[],
        scales=[], heldout_npz=str(d / "heldout_decoded.npz"), unused_npz=str(d / "unused.npz"),
        duplicates_npz=None, cfg=scoring, device="cpu", out_csv=str(d / "m.csv"),
        out_json=str(d / "metrics.json"), out_pairs_png=str(d / "pairs.png"),
        out_hist_png=str(d / "hist.png"), out_scale_png=str(d / "scales.png"),
        out_nearest_csv=str(d / "nearest.csv"), raw_heldout_npz=str(d / "heldout.npz"),
        autoencoder_json=str(d / "autoencoder.json"))
    return {"scores": scores, "membership": mem, "autoencoder": ae}


def test_the_barely_trained_latent_unet_is_not_called_a_copier_nor_a_memorizer(
        latent_model, tmp_path, test_config):
    """Same autoencoder, the U-Net trained 20 steps: neither its copy row (against the
    decoder-aware null) nor its membership row says yes."""
    from diffmem.stages.verdict import answer

    out = _audit_in_process(latent_model["barely"], latent_model, tmp_path,
                            test_config["scoring"])
    copies = out["scores"]["tests"]["plain_copies"]
    assert answer(copies, 0.05) != "yes", copies
    assert answer(out["membership"], 0.05) != "yes", out["membership"]
    assert out["membership"]["space"].startswith("latents z = 0.18215·E(x)")
    # the raw null's answer is reported beside, never in place of it
    assert "raw null" in out["scores"]["tests"]["plain_copies_raw_null"]["question"]


def test_the_decoder_aware_null_keeps_every_reconstruction_in_its_source_s_place(
        latent_model, tmp_path, test_config):
    """D(E(x)) of each held-out image, row for row: the same near-duplicate groups (held-out
    images in a group with a training image left out), the same halves of the null, and the
    copy eye's twins decided on the raw images; other pixels. The autoencoder's own row is
    asked of training vs unseen images."""
    from diffmem.diffusion.denoiser import reconstruct
    from diffmem.diffusion.unet import load_model
    from diffmem.io import load_npz
    from diffmem.stages.models import autoencoder_audit_stage, import_model_stage
    from diffmem.stages.scores import load_with_null

    d = tmp_path
    import_model_stage(folder=latent_model["folder"], out_weights=str(d / "m.safetensors"),
                       out_config=str(d / "m.json"))
    held = load_npz(latent_model["heldout"])["images"]
    np.savez(d / "train.npz", images=load_npz(latent_model["train"])["images"],
             indices=np.arange(6))
    np.savez(d / "heldout.npz", images=held)
    np.savez(d / "unused.npz", images=held[:0], indices=np.zeros(0, np.int64))
    # groups: held-out 0 and 1 share training image 2's group (left out of the null); 10-13
    # are one group of their own (kept together in one half)
    h_group = 6 + np.arange(40)
    h_group[[0, 1]] = 2
    h_group[10:14] = 100
    np.savez(d / "dup.npz", train_group=np.arange(6), heldout_group=h_group)
    ae = autoencoder_audit_stage(
        weights=str(d / "m.safetensors"), model_config=str(d / "m.json"),
        train_npz=str(d / "train.npz"), heldout_npz=str(d / "heldout.npz"),
        unused_npz=str(d / "unused.npz"), duplicates_npz=str(d / "dup.npz"), device="cpu",
        scoring=test_config["scoring"], membership={"margin": 0.05},
        out_heldout=str(d / "decoded.npz"), out_json=str(d / "ae.json"))
    decoded = load_npz(d / "decoded.npz")["images"]
    model, _ = load_model(d / "m.safetensors", d / "m.json")
    np.testing.assert_array_equal(decoded, reconstruct(model, held, "cpu"))
    assert decoded.shape == held.shape and (decoded != held).mean() > 0.5

    class Eye:  # calls held-out image 5 a twin of a training image, but only in its raw form
        def twins_of(self, train, matching):
            return lambda images: np.array([i == 5 and np.array_equal(images[i], held[5])
                                            for i in range(len(images))], dtype=bool)

    def pool_of(heldout, **kw):
        return load_with_null(str(d / "train.npz"), str(heldout), str(d / "unused.npz"),
                              str(d / "dup.npz"), test_config["scoring"], Eye(), **kw)[2]

    raw, dec = pool_of(d / "heldout.npz"), pool_of(d / "decoded.npz", twin_heldout=held)
    for key in ("groups", "calibrate", "score"):
        np.testing.assert_array_equal(raw[key], dec[key])
    assert raw["counts"] == dec["counts"] and len(raw["groups"]) == 40 - 3  # 0, 1 and 5 out
    # without the raw images deciding, the eye would keep image 5's reconstruction
    assert len(pool_of(d / "decoded.npz")["groups"]) == 40 - 2
    t = ae["test"]
    assert (t["n"], t["null_n"]) == (6, 38) and t["question"].startswith("does the autoencoder")
    assert t["mean_error_train"] > 0 and t["mean_error_unseen"] > 0


def test_known_truth_rows_through_the_decoder(latent_model, tmp_path, test_config, data_root):
    """D(E(training images)) as a generated set → yes; D(E(unseen images kept out of the null))
    → not yes, against the decoder-aware null; both beside their raw-null answers."""
    from diffmem.diffusion.denoiser import reconstruct
    from diffmem.diffusion.unet import load_model
    from diffmem.io import load_npz
    from diffmem.metrics.null import null_pool
    from diffmem.metrics.scores import score_run
    from diffmem.stages.models import import_model_stage
    from diffmem.stages.verdict import answer

    from .latent_model import small

    d = tmp_path
    import_model_stage(folder=latent_model["folder"], out_weights=str(d / "m.safetensors"),
                       out_config=str(d / "m.json"))
    model, _ = load_model(d / "m.safetensors", d / "m.json")
    train = load_npz(latent_model["train"])["images"]
    # unseen images: every validation image, in two seeded random halves (the first 16
    # held-out images happen to lie closer to these 6 training images than the rest do, raw
    # as decoded: a split by position compares two different populations)
    with np.load(data_root / "breastmnist.npz") as f:
        val = small(f["val_images"])
    order = np.random.default_rng(0).permutation(len(val))
    kept_out, null_raw = val[order[:len(val) // 2]], val[order[len(val) // 2:]]
    cfg = test_config["scoring"]

    def copy_answer(generated, null_images):
        pool = null_pool(heldout=null_images, heldout_groups=-1 - np.arange(len(null_images)),
                         unused=null_images[:0], unused_groups=np.zeros(0, np.int64),
                         train_groups=np.arange(len(train)), max_images=10_000,
                         seed=int(cfg["seed"]))
        res = score_run(train=train, groups=np.arange(len(train)), plain=generated,
                        side_sets={}, pool=pool, heldout=null_images, cfg=cfg, device="cpu")
        return answer(res["tests"]["plain_copies"], 0.05), res["tests"]["plain_copies"]

    null_decoded = reconstruct(model, null_raw, "cpu")
    copies = np.tile(reconstruct(model, train, "cpu"), (4, 1, 1))  # 24 reconstructions
    unseen = reconstruct(model, kept_out, "cpu")
    rows = {name: {"decoder-aware": copy_answer(gen, null_decoded)[0],
                   "raw": copy_answer(gen, null_raw)[0]}
            for name, gen in (("D(E(train))", copies), ("D(E(unseen))", unseen))}
    print(rows)  # the raw-null answers, reported beside (pytest -s shows them)
    assert rows["D(E(train))"]["decoder-aware"] == "yes", rows
    assert rows["D(E(unseen))"]["decoder-aware"] != "yes", rows


def test_the_latent_memorizer_is_audited_end_to_end(finished):
    """One models: entry (the LDMPipeline folder with vae/): the verdict's copy and membership
    rows yes, with the autoencoder's and the raw null's rows; exposure and report; the
    samples' latents, the surrogate classifier and the walk-back in the model's space."""
    from diffmem.io import load_json, load_npz

    run = finished / "results/models/latent"
    verdict = pd.read_csv(finished / "results/verdict.csv")
    rows = verdict[verdict["run"] == "model latent"].set_index("question")["answer"]
    copy_q = "does plain sampling copy training images?"
    assert rows[copy_q] == "yes", rows
    assert rows["can training images be told from unseen ones?"] == "yes", rows
    assert "does the autoencoder reconstruct its training images better than unseen ones?" \
        in rows.index
    assert any(q.startswith("against a raw null") for q in rows.index), rows
    metrics = load_json(run / "side/metrics.json")
    assert metrics["null_kind"].startswith("decoder-aware")
    samples = load_npz(run / "samples/samples.npz")
    assert samples["images"].shape[1:] == (16, 16) and samples["latents"].shape[1:] == (2, 8, 8)
    config = load_json(run / "model/model_config.json")
    assert config["latent"]["kind"] == "AutoencoderKL" and config["latent"]["clip"] is False
    assert any(k.startswith("autoencoder.") for k in load_file(
        str(run / "model/model.safetensors")))
    clf = [p for p in run.glob("side/*.json") if "config" in load_json(p)]
    assert clf and all(load_json(p)["config"]["channels"] == 2 and
                       load_json(p)["config"]["image_size"] == 8 for p in clf)
    assert load_json(run / "audit/boundary.json")["references"].startswith("decoded")
    assert load_json(run / "audit/membership.json")["space"].startswith("latents")
    assert (run / "audit/exposure.json").exists()
    report = (finished / "results/report.md").read_text()
    assert "latent: autoencoder AutoencoderKL (`vae/`)" in report
    assert "does the autoencoder reconstruct its training images better" in report
    # its similarity figure's caption names the null it is drawn beside
    assert "beside unseen images through the autoencoder, D(E(x)) (the null)" in report
    assert report.count("generated images beside unseen real images (the null)") >= 1


def test_monai_keys_on_a_diffusers_folder_are_refused(tiny_ldm, tmp_path, data_root):
    from diffmem.stages.config import model_info

    cfg = _config_with(tiny_ldm, tmp_path, data_root, scale_factor=0.2)
    with pytest.raises(ConfigError, match="models.l.scale_factor: set for a diffusers folder"):
        model_info(cfg, "l")


class _Oracle(torch.nn.Module):
    """A latent 'U-Net' that has memorized one latent: from any x_t it predicts the noise that
    makes x̂₀ = z exactly."""

    def __init__(self, z: torch.Tensor, process):
        super().__init__()
        self.z = z
        self.m, self.s = process.coefficients("cpu")

    def forward(self, x, t):
        m, s = self.m[t].view(-1, 1, 1, 1), self.s[t].view(-1, 1, 1, 1)
        return (x - m * self.z) / s


def test_the_walk_back_is_judged_against_decoded_references(tiny_ldm, tmp_path, test_config,
                                                            data_root, monkeypatch):
    """A latent model that returns the target's latent from any noise walks back to it at every
    t: its decoded output is exactly the target's reconstruction D(E(x)). Against the raw
    images it would not be (this untrained autoencoder's reconstructions look like nothing),
    so the stage must compare with the decoded references; the controls never come back."""
    from diffmem.diffusion.denoiser import LatentDenoiser, reconstruct
    from diffmem.diffusion.pretrained import load_pretrained
    from diffmem.diffusion.process import NoiseProcess
    from diffmem.stages import models as stage

    from .latent_model import images

    imgs = images(data_root)
    train, held = imgs["train"], imgs["heldout"][:10]
    _, extra, ae = load_pretrained(tiny_ldm)
    process = NoiseProcess.from_config(extra["diffusion"])
    probe = LatentDenoiser(torch.nn.Identity(), process, ae, kind="AutoencoderKL", scale=0.18215,
                           latent_shape=(2, 8, 8)).eval()
    from diffmem.device import to_tensor

    z = probe.encode(to_tensor(train[:1]))
    model = LatentDenoiser(_Oracle(z, process), process, ae, kind="AutoencoderKL",
                           scale=0.18215, latent_shape=(2, 8, 8)).eval()
    # the premise: the reconstruction is far from the raw image (raw references would fail)
    rec = reconstruct(model, train[:1], "cpu")
    assert np.abs(rec.astype(float) - train[:1]).mean() > 20
    monkeypatch.setattr(stage, "load_model", lambda w, c, d: (model, extra))
    d = tmp_path
    np.savez(d / "train.npz", images=train, names=np.array([f"t{i}" for i in range(6)]))
    np.savez(d / "heldout.npz", images=held)
    np.savez(d / "samples.npz", images=train[:2])
    np.savez(d / "dup.npz", train_group=np.arange(6), heldout_group=6 + np.arange(10))
    out = stage.boundary_search_images_stage(
        weights="-", model_config="-", train_npz=str(d / "train.npz"),
        heldout_npz=str(d / "heldout.npz"), samples_npz=str(d / "samples.npz"),
        duplicates_npz=str(d / "dup.npz"), cfg=test_config["boundary"], chosen=[0], count=1,
        mirror=False, matching={}, seed=2, device="cpu", bf16=False,
        out_csv=str(d / "b.csv"), out_json=str(d / "b.json"), out_png=str(d / "b.png"),
        graphs=False)
    assert out["references"].startswith("decoded")
    frame = pd.read_csv(d / "b.csv")
    target = frame[frame["query"] == "target"]
    assert (target["accepted"] == target["m"]).all(), target  # back from every t
    controls = frame[frame["query"] != "target"]
    assert controls["accepted"].sum() == 0, controls


def test_a_kl_autoencoder_encodes_its_posterior_mean_scaled(tiny_ldm, tmp_path):
    """z = scale·mode(E(x)), the same every call (membership and the walk-back start there),
    and decode(z) = D(z / scale), through the model saved in the workflow's own files."""
    from diffmem.diffusion.pretrained import load_pretrained
    from diffmem.diffusion.unet import load_model, save_model

    unet, extra, ae = load_pretrained(tiny_ldm)
    save_model(unet, tmp_path / "m.safetensors", tmp_path / "m.json", extra=extra,
               autoencoder=ae)
    model, _ = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        want = ae.encode(x).latent_dist.mode() * 0.18215
        torch.testing.assert_close(model.encode(x), want)
        torch.testing.assert_close(model.encode(x), model.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(model.decode(want),
                                   ae.decode(want / 0.18215).sample.clamp(-1, 1))
