"""Models the workflow did not train: diffusers save_pretrained folders, read without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

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
        torch.testing.assert_close(model.net.state_dict()[k], v)


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


# ----------------------------------------------------------------------------- read strictly
def refused(fn, *args, match: str, errors=ModelFolderError):
    """fn(*args) raises one line containing ``match``, of ``errors``."""
    with pytest.raises(errors) as err:
        fn(*args)
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_a_shard_index_naming_a_pickle_is_refused_before_anything_is_read(pipeline_dir):
    """The attack that worked: a valid safetensors file plus an index whose shard is a
    torch.save'd .bin (diffusers followed the index and unpickled it)."""
    unet = pipeline_dir / "unet"
    torch.save({"conv_in.weight": torch.zeros(1)}, unet / "w.bin")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"conv_in.weight": "w.bin"}}))
    refused(inspect_model_folder, pipeline_dir,
            match="names the shard w.bin, which is not safetensors; diffmem never unpickles")
    (unet / "w.bin").unlink()
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv_in.weight": "w.safetensors"}}))
    save_file({"conv_in.weight": torch.zeros(1)}, str(unet / "w.safetensors"))
    refused(inspect_model_folder, pipeline_dir, match="which weights are the model's is ambiguous")


def test_sharded_safetensors_are_all_read_and_give_the_same_model(pipeline_dir, tmp_path):
    from diffmem.diffusion.pretrained import load_pretrained

    unet = pipeline_dir / "unet"
    state = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(unet / name))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    info = inspect_model_folder(pipeline_dir)
    assert [p.name for p in info["weights"]] == ["a.safetensors", "b.safetensors"]
    model, _, _ = load_pretrained(pipeline_dir)
    for k, v in state.items():
        torch.testing.assert_close(model.state_dict()[k], v)


@pytest.mark.parametrize("keep,match", [
    ("none", "holds no tensor"),  # save_file({}, ...): diffusers made a random model of it
    ("half", "tensors "),
])
def test_empty_and_half_empty_weights_are_refused(pipeline_dir, keep, match):
    from diffmem.diffusion.pretrained import load_pretrained

    path = pipeline_dir / "unet/diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    kept = {} if keep == "none" else dict(sorted(state.items())[: len(state) // 2])
    save_file(kept, str(path))
    if keep == "none":  # visible in the header: before any job
        refused(inspect_model_folder, pipeline_dir, match=match)
        return
    inspect_model_folder(pipeline_dir)  # the header is a valid file; the U-Net decides
    msg = refused(load_pretrained, pipeline_dir, match="the weights do not match the U-Net")
    assert f"{len(state) - len(kept)} missing (" in msg


def test_unexpected_mis_shaped_and_non_finite_tensors_are_refused(pipeline_dir):
    from diffmem.diffusion.pretrained import load_pretrained

    path = pipeline_dir / "unet/diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({**state, "extra.weight": torch.zeros(2)}, str(path))
    refused(load_pretrained, pipeline_dir, match="1 unexpected (extra.weight)")
    save_file({**state, "conv_in.weight": torch.zeros(3, 3)}, str(path))
    refused(load_pretrained, pipeline_dir, match="1 mis-shaped, file vs config (conv_in.weight")
    nan = state["conv_in.weight"].clone()
    nan[0] = float("nan")
    save_file({**state, "conv_in.weight": nan}, str(path))
    refused(load_pretrained, pipeline_dir, match="hold NaN or infinite values (conv_in.weight)")


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float8_e4m3fn, torch.int64])
def test_weights_of_a_dtype_no_model_has_are_refused_before_any_job(pipeline_dir, dtype):
    """An int8, bool or float8 copy of the weights, with the right names and shapes, would be
    cast silently (float8: a traceback in the job) and audited as another model."""
    path = pipeline_dir / "unet/diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({k: (v.to(dtype) if k == "conv_in.weight" else v) for k, v in state.items()},
              str(path))
    name = {torch.int8: "I8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
            torch.int64: "I64"}[dtype]
    refused(inspect_model_folder, pipeline_dir,
            match=f"tensor 'conv_in.weight' has dtype {name} (1 such); expected model weights "
                  f"of F16, BF16, F32, F64")
    save_file({k: v.half() for k, v in state.items()}, str(path))  # half weights are weights
    inspect_model_folder(pipeline_dir)


def test_a_variants_shard_index_is_not_read(pipeline_dir):
    """diffusers' fp16 variant, sharded, beside the model's own file: only the model's own file
    is read (the README: variants are not read); with the variant alone, one line says so."""
    unet = pipeline_dir / "unet"
    state = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.half() for k, v in state.items()},
              str(unet / "diffusion_pytorch_model.fp16-00001-of-00001.safetensors"))
    (unet / "diffusion_pytorch_model.fp16.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "diffusion_pytorch_model.fp16-00001-of-00001.safetensors"
                        for k in state}}))
    assert [p.name for p in inspect_model_folder(pipeline_dir)["weights"]] == [
        "diffusion_pytorch_model.safetensors"]
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    refused(inspect_model_folder, pipeline_dir,
            match="(found diffusion_pytorch_model.fp16-00001-of-00001.safetensors, "
                  "diffusion_pytorch_model.fp16.safetensors.index.json: variants are not read")


def test_json_nested_deeper_than_the_decoder_goes_names_its_file(pipeline_dir):
    path = pipeline_dir / "scheduler/scheduler_config.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    refused(inspect_model_folder, pipeline_dir,
            match=f"cannot read {path} as JSON: it is nested deeper than Python's decoder goes")


@pytest.mark.parametrize("corrupt,match", [
    (lambda b: np.random.default_rng(0).bytes(5000), "header claims"),
    (lambda b: b[: len(b) // 2], "is truncated or padded"),
    (lambda b: (2**62).to_bytes(8, "little") + b[8:], "header claims 4611686018427387904 bytes"),
    (lambda b: b[:5], "shorter than the 8-byte header length"),
    (lambda b: (10).to_bytes(8, "little") + b"not json!!" + b[18:], "header is not JSON"),
])
def test_corrupt_weights_get_one_line_before_any_job(pipeline_dir, corrupt, match):
    path = pipeline_dir / "unet/diffusion_pytorch_model.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    refused(inspect_model_folder, pipeline_dir, match=match)


@pytest.mark.parametrize("where,change,match", [
    ("scheduler", {"beta_end": 2.0}, "beta_end = 2.0 is invalid: expected a number above 0"),
    ("scheduler", {"beta_start": -1e-4}, "beta_start = -0.0001 is invalid"),
    ("scheduler", {"beta_end": float("inf")}, "beta_end = inf is invalid: expected a finite"),
    ("scheduler", {"beta_end": float("nan")}, "beta_end = nan is invalid: expected a finite"),
    ("scheduler", {"num_train_timesteps": "many"},
     "num_train_timesteps = 'many' is invalid: expected an integer from 2"),
    ("scheduler", {"beta_start": "abc"}, "beta_start = 'abc' is invalid"),
    ("scheduler", {"trained_betas": [0.1, 0.2]}, "trained_betas has 2 values for"),
    ("unet", {"sample_size": 100000}, "sample_size = 100000 is invalid"),
    ("unet", {"block_out_channels": [8, 40000]},
     "block_out_channels[1] = 40000 is invalid: expected an integer from 1 to 2048"),
    ("unet", {"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]},
     "down_block_types[0] = 'CrossAttnDownBlock2D' is invalid: expected one of"),
    ("unet", {"class_embed_type": "timestep"}, "class_embed_type = 'timestep' is invalid"),
    ("unet", {"norm_num_groups": 3}, "norm_num_groups 3 does not divide"),
    # diffusers builds these and the job would fail (sampling) or audit a rising noise as data
    ("unet", {"sample_size": [8, 16]}, "sample_size [8, 16] is not square; expected one size"),
    ("scheduler", {"beta_schedule": "linear", "beta_start": 0.02, "beta_end": 0.001},
     "beta_start 0.02 is above beta_end 0.001; expected a noise schedule that rises"),
])
def test_numbers_in_the_users_json_are_checked(pipeline_dir, where, change, match):
    path = pipeline_dir / ("scheduler/scheduler_config.json" if where == "scheduler" else
                           "unet/config.json")
    cfg = json.loads(path.read_text()) | change
    path.write_text(json.dumps(cfg))  # json writes NaN and Infinity, as a user's tool may
    msg = refused(inspect_model_folder, pipeline_dir, match=match)
    assert str(path) in msg


def test_a_json_list_instead_of_an_object_names_the_file(pipeline_dir):
    path = pipeline_dir / "scheduler/scheduler_config.json"
    path.write_text("[1, 2]")
    refused(inspect_model_folder, pipeline_dir,
            match=f"{path} holds a JSON list; expected an object")


def test_every_file_the_import_reads_is_listed(pipeline_dir):
    files = {Path(f).relative_to(pipeline_dir).as_posix()
             for f in inspect_model_folder(pipeline_dir)["files"]}
    assert files == {"model_index.json", "unet/config.json", "scheduler/scheduler_config.json",
                     "unet/diffusion_pytorch_model.safetensors"}
