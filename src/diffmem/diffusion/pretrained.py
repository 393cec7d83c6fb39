"""Models the workflow did not train: a pixel-space diffusers model saved with ``save_pretrained``.

Accepted: a ``DDPMPipeline`` / ``DDIMPipeline`` folder (``model_index.json``, ``unet/``,
``scheduler/``), or a ``UNet2DModel`` folder with a scheduler config beside it
(``scheduler_config.json`` in it, or a ``scheduler/`` folder in it or next to it). Everything is
read as plain JSON first, so an unsupported model gets one line naming what is unsupported, not
a diffusers traceback; weights are read only from safetensors (diffusers' default would silently
unpickle a ``.bin``).

The scheduler's β schedule (linear, scaled_linear, squaredcos_cap_v2 or trained_betas), T and
prediction type (ε or v) map onto :class:`diffmem.diffusion.process.NoiseProcess`, so sampling,
guidance, membership inference and the boundary search run unchanged on the imported model.

This module is read when the DAG is built (the config checks): nothing here imports torch or
diffusers at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelFolderError

PIPELINES = ("DDPMPipeline", "DDIMPipeline")


SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")


SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


WEIGHTS = "diffusion_pytorch_model.safetensors"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"cannot read {path} as JSON ({err})") from None


def inspect_model_folder(folder: str | Path) -> dict:
    """Where the U-Net, its weights and the scheduler config are; refuse what is unsupported."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    index = folder / "model_index.json"
    if index.exists():
        cls = _json(index).get("_class_name")
        if cls not in PIPELINES:
            raise ModelFolderError(
                f"{index} describes a {cls}: diffmem audits unconditional pixel-space diffusion "
                f"models ({', '.join(PIPELINES)} or a UNet2DModel folder); conditional and "
                f"latent pipelines are not supported")
        unet_dir, sched = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    else:
        unet_dir = folder
        candidates = [folder / "scheduler_config.json", folder / "scheduler" /
                      "scheduler_config.json", folder.parent / "scheduler" /
                      "scheduler_config.json"]
        sched = next((c for c in candidates if c.exists()), candidates[0])
    cfg_path = unet_dir / "config.json"
    if not cfg_path.exists():
        raise ModelFolderError(f"{folder} holds no model_index.json and no {cfg_path.name}: "
                               f"expected a diffusers save_pretrained folder")
    unet = _json(cfg_path)
    if unet.get("_class_name") != "UNet2DModel":
        raise ModelFolderError(f"{cfg_path} describes a {unet.get('_class_name')}; only the "
                               f"unconditional UNet2DModel is supported")
    weights = unet_dir / WEIGHTS
    if not weights.exists():
        pickled = sorted(p.name for p in unet_dir.iterdir() if p.suffix in PICKLED)
        if pickled:
            raise ModelFolderError(
                f"{unet_dir / pickled[0]} is pickled and diffmem never unpickles a user's file; "
                f"convert it once where you trust it: UNet2DModel.from_pretrained(dir)"
                f".save_pretrained(dir, safe_serialization=True)")
        raise ModelFolderError(f"no {WEIGHTS} in {unet_dir}")
    if not sched.exists():
        raise ModelFolderError(f"no scheduler config for {folder}: expected {sched}")
    return {"unet_dir": unet_dir, "weights": weights, "unet": unet,
            "scheduler": _json(sched), "scheduler_path": sched}


def diffusion_from_scheduler(cfg: dict, where: str = "scheduler") -> dict:
    """The NoiseProcess settings of a diffusers DDPM/DDIM scheduler config, or one line naming
    the first setting the workflow does not support."""
    cls = cfg.get("_class_name")
    if cls not in SCHEDULERS:
        raise ModelFolderError(f"{where}: {cls} is not supported; expected one of {SCHEDULERS} "
                               f"(a discrete DDPM chain; VE/score-SDE models are not)")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ModelFolderError(f"{where}: prediction_type {pred!r} is not supported; expected "
                               f"epsilon or v_prediction")
    variance = cfg.get("variance_type", "fixed_small")
    if variance not in (None, "fixed_small", "fixed_small_log"):
        raise ModelFolderError(f"{where}: variance_type {variance!r} (learned or fixed_large) "
                               f"is not supported; expected fixed_small")
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if cfg.get(key):
            raise ModelFolderError(f"{where}: {key}: true is not supported")
    # the workflow's reverse steps clip x̂_0 to [-1, 1], as diffusers' default clip_sample does
    if cfg.get("clip_sample", True) is False or float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise ModelFolderError(f"{where}: clip_sample: false / clip_sample_range ≠ 1 is not "
                               f"supported; the workflow's sampler clips x0 to [-1, 1]")
    betas = cfg.get("trained_betas")
    schedule = cfg.get("beta_schedule", "linear")
    if not betas and schedule not in SCHEDULES:
        raise ModelFolderError(f"{where}: beta_schedule {schedule!r} is not supported; expected "
                               f"one of {SCHEDULES} or trained_betas")
    # timestep_spacing, steps_offset, set_alpha_to_one only shape an inference grid: the
    # workflow samples on its own grid (sample.steps), so they are recorded, not used
    return {"process": "ddpm", "num_train_timesteps": int(cfg.get("num_train_timesteps", 1000)),
            "beta_schedule": schedule if not betas else "linear",
            "beta_start": float(cfg.get("beta_start", 1e-4)),
            "beta_end": float(cfg.get("beta_end", 0.02)),
            "trained_betas": [float(b) for b in betas] if betas else None,
            "prediction_type": pred}


def load_pretrained(folder: str | Path):
    """The folder's U-Net (read from safetensors) and the settings that go with it: the mapped
    noise process and where it came from."""
    from diffusers import UNet2DModel

    from .process import NoiseProcess  # torch: not at module level (see the module docstring)

    info = inspect_model_folder(folder)
    diffusion = diffusion_from_scheduler(info["scheduler"], str(info["scheduler_path"]))
    NoiseProcess.from_config(diffusion)  # every setting it cannot hold fails here
    model = UNet2DModel.from_pretrained(str(info["unet_dir"]), use_safetensors=True,
                                        local_files_only=True)
    ignored = {k: info["scheduler"][k] for k in ("timestep_spacing", "steps_offset",
                                                  "set_alpha_to_one") if k in info["scheduler"]}
    extra = {"diffusion": diffusion, "source": {"folder": str(Path(folder).resolve()),
                                                "scheduler": info["scheduler"].get("_class_name"),
                                                "inference_settings_not_used": ignored}}
    return model, extra
