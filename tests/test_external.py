"""Models the workflow did not train: diffusers save_pretrained folders, read without pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffmem.diffusion.pretrained import diffusion_from_scheduler, inspect_model_folder
from diffmem.diffusion.process import NoiseProcess
from diffmem.diffusion.sampler import sample
from diffmem.diffusion.unet import load_model
from diffmem.errors import ModelFolderError
from diffmem.stages.models import import_model_stage


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.fixture
def pipeline_dir(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2",
                        prediction_type="v_prediction")
    DDPMPipeline(unet=tiny_unet(), scheduler=sch).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_a_ddpm_pipeline_folder_imports_and_samples(pipeline_dir, tmp_path):
    meta = import_model_stage(folder=pipeline_dir, out_weights=str(tmp_path / "m.safetensors"),
                              out_config=str(tmp_path / "m.json"))
    assert meta["diffusion"]["prediction_type"] == "v_prediction"
    assert meta["diffusion"]["beta_schedule"] == "squaredcos_cap_v2"
    model, saved = load_model(tmp_path / "m.safetensors", tmp_path / "m.json")
    process = NoiseProcess.from_config(saved["diffusion"])
    assert process.T == 50 and process.prediction_type == "v_prediction"
    out = sample(model, process, 3, shape=(1, 8, 8), sampler="ddpm", steps=10, batch_size=3,
                 progress=False)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    # the same weights as the folder's
    from diffusers import UNet2DModel

    ref = UNet2DModel.from_pretrained(pipeline_dir / "unet", use_safetensors=True)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_a_unet_folder_with_a_scheduler_beside_it(pipeline_dir):
    info = inspect_model_folder(pipeline_dir / "unet")  # ../scheduler/scheduler_config.json
    assert info["scheduler"]["_class_name"] == "DDPMScheduler"


def test_only_pickled_weights_are_refused_with_one_line(pipeline_dir):
    unet = pipeline_dir / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFolderError) as err:
        inspect_model_folder(pipeline_dir)
    msg = str(err.value)
    assert "diffusion_pytorch_model.bin is pickled" in msg and "safe_serialization=True" in msg
    assert "\n" not in msg


def test_conditional_pipelines_are_refused_before_diffusers_sees_them(tmp_path):
    d = tmp_path / "sd"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelFolderError, match="describes a StableDiffusionPipeline"):
        inspect_model_folder(d)


@pytest.mark.parametrize("change,match", [
    ({"prediction_type": "sample"}, "prediction_type 'sample' is not supported"),
    ({"variance_type": "learned_range"}, "variance_type 'learned_range'"),
    ({"thresholding": True}, "thresholding: true is not supported"),
    ({"_class_name": "ScoreSdeVeScheduler"}, "ScoreSdeVeScheduler is not supported"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported"),
    ({"clip_sample": False}, "clip_sample: false"),
])
def test_unsupported_scheduler_settings_are_named(change, match):
    cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
           "beta_schedule": "linear"} | change
    with pytest.raises(ModelFolderError, match=match):
        diffusion_from_scheduler(cfg)


def test_trained_betas_map_onto_the_process():
    betas = list(np.linspace(1e-4, 0.03, 20))
    d = diffusion_from_scheduler({"_class_name": "DDIMScheduler", "num_train_timesteps": 20,
                                  "trained_betas": betas})
    process = NoiseProcess.from_config(d)
    acp = np.cumprod(1 - np.array(betas))
    np.testing.assert_allclose(process.alphas_cumprod().numpy(), acp, rtol=1e-5)
