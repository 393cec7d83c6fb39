"""MONAI's generative models from their bundles: definitions read without evaluating code, the
pickled weights converted once by the user's command, then audited as any latent model (see
tests/monai_model.py for the fixture, trained on CPU)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from .test_latent import _audit_in_process, refused, spoil_tensor


def test_monai_imports_under_the_pinned_torch():
    import monai
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet  # noqa: F401
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler  # noqa: F401

    assert monai.__version__ == "1.6.1" and torch.__version__.startswith("2.14.1")


@pytest.fixture
def converted(tmp_path) -> Path:
    """An untrained converted bundle of the fixture's shapes (fast: for what the files decide):
    the definitions' JSON and safetensors weights."""
    from .monai_model import INFERENCE, networks

    folder = tmp_path / "converted"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs/inference.json").write_text(json.dumps(INFERENCE))
    ae, unet = networks()
    save_file(ae.state_dict(), str(folder / "models/model_autoencoder.safetensors"))
    save_file(unet.state_dict(), str(folder / "models/model.safetensors"))
    return folder


def _set(folder: Path, edit) -> None:
    path = folder / "configs/inference.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("case,match", [
    ("expression", "autoencoder_def.latent_channels is a Python expression ('$2 * 1'); diffmem "
                   "evaluates no code from a config"),
    ("macro", "network_def.num_res_blocks is a macro"),
    ("object_ref", "autoencoder_def.spatial_dims refers to @network_def, an object, not a JSON "
                   "literal"),
    ("target", "autoencoder_def._target_ = 'scripts.my_nets.Autoencoder' is not supported"),
    ("three_d", "autoencoder_def.spatial_dims = 3: 3D networks are not supported yet"),
    ("conditional", "network_def.num_class_embeds = 2: conditional U-Nets are not supported"),
    ("pt_only", "is pickled and diffmem never unpickles a user's file: convert the bundle once "
                "where you trust it with `python -m diffmem.convert monai BUNDLE OUT`"),
    ("no_scale", "has no scale_factor and the entry gives none"),
    ("bounds", "network_def: channels[1] = 0 is invalid: expected an integer from 1 to 2048"),
    ("schedule", "noise_scheduler: schedule = 'sigmoid_beta' is invalid"),
])
def test_bundles_are_refused_before_any_job(converted, case, match):
    from diffmem.diffusion.monai_bundle import inspect_bundle

    entry = {"scale_factor": 0.3}
    if case == "expression":
        _set(converted, lambda c: c["autoencoder_def"].update(latent_channels="$2 * 1"))
    elif case == "macro":
        _set(converted, lambda c: c["network_def"].update(num_res_blocks="%train.json#x"))
    elif case == "object_ref":
        _set(converted, lambda c: c["autoencoder_def"].update(spatial_dims="@network_def"))
    elif case == "target":
        _set(converted, lambda c: c["autoencoder_def"].update(
            _target_="scripts.my_nets.Autoencoder"))
    elif case == "three_d":
        _set(converted, lambda c: c.update(spatial_dims=3))
    elif case == "conditional":
        _set(converted, lambda c: c["network_def"].update(num_class_embeds=2))
    elif case == "pt_only":
        (converted / "models/model.safetensors").rename(converted / "models/model.pt")
    elif case == "no_scale":
        entry = {}
    elif case == "bounds":
        _set(converted, lambda c: c["network_def"].update(num_channels=[32, 0]))
    elif case == "schedule":
        _set(converted, lambda c: c["noise_scheduler"].update(schedule="sigmoid_beta"))
    refused(inspect_bundle, converted, entry, match=match)


def test_what_the_audit_does_not_read_is_not_evaluated(converted):
    """The Zoo's shapes pass: $ expressions in keys the audit does not read, @ literals,
    _requires_, GenerativeModels' names; the scale factor from the JSON when it has one."""
    from diffmem.diffusion.monai_bundle import inspect_bundle

    info = inspect_bundle(converted, {"scale_factor": 0.3})
    assert info["autoencoder"]["config"]["channels"] == [16, 32]  # num_channels, renamed
    assert info["unet"]["in_channels"] == 2 and info["autoencoder"]["latent_size"] == 8
    assert info["autoencoder"]["intensity_range"] == [0.0, 1.0]
    _set(converted, lambda c: c.update(scale_factor=0.5))
    ae = inspect_bundle(converted, {})["autoencoder"]
    assert ae["scale"] == 0.5 and ae["scale_source"] == "inference.json scale_factor"


@pytest.mark.parametrize("case,match", [
    ("missing", "model.safetensors: the weights do not match the DiffusionModelUNet its config "
                "describes: tensors 1 missing (out.2.conv.bias)"),
    ("shaped", "1 mis-shaped, file vs config (out.2.conv.bias (3,) vs (2,))"),
])
def test_a_missing_or_mis_shaped_tensor_fails_the_job(converted, case, match):
    from diffmem.diffusion.monai_bundle import inspect_bundle, load_bundle

    spoil_tensor(converted / "models/model.safetensors", "out.2.conv.bias", case)
    inspect_bundle(converted, {"scale_factor": 0.3})
    refused(load_bundle, converted, {"scale_factor": 0.3}, match=match)


def test_the_convert_command_reads_old_layouts_and_writes_safetensors(tmp_path):
    """The bundle's .pt (the autoencoder's in GenerativeModels' key layout) through
    torch.load(weights_only=True) and load_old_state_dict, written as safetensors: the same
    tensors; the definitions copied; an existing OUT refused."""
    from .monai_model import networks, save_bundle

    ae, unet = networks(3)
    save_bundle(tmp_path / "bundle", ae, unet)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffmem.convert", "monai", str(tmp_path / "bundle"), str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    got = load_file(str(out / "models/model_autoencoder.safetensors"))
    assert got.keys() == ae.state_dict().keys()
    for k, v in ae.state_dict().items():
        torch.testing.assert_close(got[k], v)
    assert (out / "configs/inference.json").read_text() == \
        (tmp_path / "bundle/configs/inference.json").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "exists and is not empty" in again.stderr


def test_monai_intensities_and_stages_are_mapped(converted):
    """The audit's [-1, 1] images enter MONAI's autoencoder in [0, 1]; z = scale·z_mu; decoded
    through decode_stage_2_outputs and back to [-1, 1]."""
    from diffmem.diffusion.monai_bundle import load_bundle
    from diffmem.diffusion.unet import load_model, save_model

    unet, extra, ae = load_bundle(converted, {"scale_factor": 0.3})
    folder = converted.parent
    save_model(unet, folder / "m.safetensors", folder / "m.json", extra=extra, autoencoder=ae)
    model, meta = load_model(folder / "m.safetensors", folder / "m.json")
    assert meta["unet_class"] == "monai.DiffusionModelUNet"
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), ae.encode((x + 1) / 2)[0] * 0.3)
        z = torch.randn(3, 2, 8, 8)
        want = (ae.decode_stage_2_outputs(z / 0.3) * 2 - 1).clamp(-1, 1)
        torch.testing.assert_close(model.decode(z), want)
        t = torch.tensor([5, 6, 7])
        torch.testing.assert_close(model.output(z, t), unet(z, t))


def test_a_monai_entry_is_checked_like_any_other(tmp_path, monai_model):
    import yaml

    from diffmem.errors import ConfigError
    from diffmem.stages.config import model_info

    from .conftest import TEST_CONFIG

    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    entry = {"folder": monai_model["bundle_converted"], "train": monai_model["train"],
             "heldout": monai_model["heldout"], "scale_factor": monai_model["scale_factor"]}
    cfg["models"] = {"m": entry}
    info = model_info(cfg, "m")
    assert (info["size"], info["channels"], info["kind"]) == (16, 1, "monai")
    assert info["monai"] == {"scale_factor": monai_model["scale_factor"]}
    # the bundle as shipped (only .pt weights): one line naming the command
    bad = copy.deepcopy(cfg)
    bad["models"]["m"]["folder"] = monai_model["bundle"]
    with pytest.raises(ConfigError, match="python -m diffmem.convert monai BUNDLE OUT"):
        model_info(bad, "m")


def test_the_barely_trained_monai_unet_is_not_yes(monai_model, tmp_path, test_config):
    from diffmem.stages.verdict import answer

    out = _audit_in_process(monai_model["barely_converted"], monai_model, tmp_path,
                            test_config["scoring"],
                            monai={"scale_factor": monai_model["scale_factor"]})
    assert answer(out["scores"]["tests"]["plain_copies"], 0.05) != "yes"
    assert answer(out["membership"], 0.05) != "yes"


def test_the_monai_memorizer_is_audited_end_to_end(monai_finished):
    """Converted by the command, audited from one models: entry: copy and membership rows yes;
    the report names the kind and where the scale factor came from; no job unpickled anything
    (the same guard as the shared run's)."""
    import re

    wf = monai_finished
    verdict = pd.read_csv(wf / "results/verdict.csv")
    rows = verdict[verdict["run"] == "model monai"].set_index("question")["answer"]
    assert rows["does plain sampling copy training images?"] == "yes", rows
    assert rows["can training images be told from unseen ones?"] == "yes", rows
    assert len(rows) == 6 and len(verdict) == 6
    report = (wf / "results/report.md").read_text()
    assert "latent: autoencoder monai.AutoencoderKL" in report
    assert "scale: the model's entry (scale_factor)" in report
    assert (wf / "results/models/monai/audit/exposure.json").exists()
    log = (wf / "guard.log").read_text().splitlines()
    jobs = re.findall(r"(\d+) of \1 steps \(100%\) done", (wf / "run.log").read_text())
    scripts = [line for line in log if line.startswith("active") and ".snakemake/scripts/" in line]
    assert jobs and len(scripts) >= int(jobs[-1]) - 1, (len(scripts), jobs)
    assert not [line for line in log if line.startswith("ATTEMPT")], log


def test_a_monai_vqvae_is_read_and_coded_as_its_inferer_codes(converted):
    """A VQVAE bundle: the latents are its quantized encoding (encode_stage_2_inputs, what
    LatentDiffusionInferer trains on), scaled; decoding goes through decode_stage_2_outputs;
    the image size follows its convolutions (stride, kernel, dilation, padding per level)."""
    from monai.networks.nets import VQVAE

    from diffmem.diffusion.denoiser import LatentDenoiser
    from diffmem.diffusion.monai_bundle import inspect_bundle, load_bundle
    from diffmem.diffusion.process import NoiseProcess

    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16],
            "num_res_channels": [8, 16], "num_res_layers": 1, "num_embeddings": 16,
            "embedding_dim": 2, "downsample_parameters": [[2, 4, 1, 1], [2, 4, 1, 1]],
            "upsample_parameters": [[2, 4, 1, 1, 0], [2, 4, 1, 1, 0]]}
    _set(converted, lambda c: c.update(
        autoencoder_def={"_target_": "monai.networks.nets.VQVAE", **args},
        latent_shape=[2, 4, 4]))
    torch.manual_seed(0)
    vq = VQVAE(**args).eval()
    save_file(vq.state_dict(), str(converted / "models/model_autoencoder.safetensors"))
    info = inspect_bundle(converted, {"scale_factor": 0.5})
    assert info["autoencoder"]["factor"] == 4 and info["autoencoder"]["latent_channels"] == 2
    assert vq.encode(torch.zeros(1, 1, 16, 16)).shape[-1] == 4  # the factor is the network's
    _, extra, ae = load_bundle(converted, {"scale_factor": 0.5})
    assert extra["latent"]["image_size"] == 16 and extra["latent"]["kind"] == "monai.VQVAE"
    model = LatentDenoiser(torch.nn.Identity(), NoiseProcess.from_config(extra["diffusion"]), ae,
                           kind="monai.VQVAE", scale=0.5, intensity=(0.0, 1.0),
                           latent_shape=(2, 4, 4)).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), vq.encode_stage_2_inputs((x + 1) / 2) * 0.5)
        z = torch.randn(2, 2, 4, 4)
        torch.testing.assert_close(model.decode(z), (vq.decode_stage_2_outputs(z / 0.5) * 2 - 1)
                                   .clamp(-1, 1))
    # one (stride, kernel, dilation, padding) per level, mapping the size exactly
    _set(converted, lambda c: c["autoencoder_def"].update(
        downsample_parameters=[[2, 3, 1, 0], [2, 4, 1, 1]]))
    refused(inspect_bundle, converted, {"scale_factor": 0.5},
            match="downsampling maps 16-px images onto 3-px latents, not the latent_shape's 4")
    _set(converted, lambda c: c["autoencoder_def"].update(
        downsample_parameters=[[2, 4, 1, 1]] * 3))
    refused(inspect_bundle, converted, {"scale_factor": 0.5},
            match="downsample_parameters has 3 entries for 2 channels; expected one per level")


@pytest.mark.parametrize("case,match", [
    ("nested_expression", "network_def.num_channels[1] is a Python expression"),
    ("path_to_object", "refers to @network_def::channels_def, an object, not a JSON literal"),
    ("literal_path", None),
    ("cycle", "refers through more than 20 @ references"),
    ("unknown_argument", "is invalid"),
    ("intensity", "intensity_range = [1.0, 0.0] is invalid: expected [low, high] with low below"),
])
def test_what_the_reader_follows_and_refuses(converted, case, match):
    from diffmem.diffusion.monai_bundle import inspect_bundle

    entry = {"scale_factor": 0.3}
    if case == "nested_expression":
        _set(converted, lambda c: c["network_def"].update(num_channels=[32, "$64"]))
    elif case == "path_to_object":
        _set(converted, lambda c: c["network_def"].update(
            channels_def={"a": 1}, num_channels="@network_def::channels_def"))
    elif case == "literal_path":  # @a::b to a literal list is followed
        _set(converted, lambda c: c.update(sizes={"unet": [32, 64]}) or c["network_def"].update(
            num_channels="@sizes::unet"))
    elif case == "cycle":
        _set(converted, lambda c: c.update(a="@b", b="@a") or c.update(latent_channels="@a"))
    elif case == "unknown_argument":
        _set(converted, lambda c: c["network_def"].update(resblock_count=3))
    elif case == "intensity":
        entry["intensity_range"] = [1.0, 0.0]
    if match is None:
        assert inspect_bundle(converted, entry)["unet"]["channels"] == [32, 64]
    else:
        refused(inspect_bundle, converted, entry, match=match)


def test_references_that_fan_out_are_resolved_once(converted):
    """A few hundred bytes whose references fan out 4 ways over 18 levels (4^18 paths) are read
    in well under a second: each reference is resolved once."""
    import time

    from diffmem.diffusion.monai_bundle import resolve

    cfg = {f"a{i}": [f"@a{i + 1}"] * 4 for i in range(18)} | {"a18": 1}
    t0 = time.perf_counter()
    out = resolve("@a0", cfg, "x", converted)
    assert len(out) == 4 and time.perf_counter() - t0 < 1


def test_a_pt_that_leaves_tensors_unset_is_refused_by_the_convert_command(tmp_path):
    """MONAI's load_old_state_dict fills a missing output projection with an identity and keeps
    initial values for keys it does not find: the command refuses such a file in one line."""
    from diffmem.convert import convert_monai
    from diffmem.errors import ModelFolderError

    from .monai_model import networks, old_layout, save_bundle

    ae, unet = networks(4)
    save_bundle(tmp_path / "bundle", ae, unet)
    state = old_layout(ae.state_dict())
    dropped = {k: v for k, v in state.items() if ".proj_attn." not in k}
    assert len(dropped) < len(state)
    torch.save(dropped, tmp_path / "bundle/models/model_autoencoder.pt")
    with pytest.raises(ModelFolderError, match="tensors of the network are not in the file"):
        convert_monai(tmp_path / "bundle", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written looks finished
    del dropped[next(k for k in dropped if k.endswith(".to_q.weight"))]
    torch.save(dropped, tmp_path / "bundle/models/model_autoencoder.pt")
    with pytest.raises(ModelFolderError, match="its tensors do not match AutoencoderKL"):
        convert_monai(tmp_path / "bundle", tmp_path / "out")
