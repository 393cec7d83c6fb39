"""MONAI's generative models from a bundle-like folder, read without evaluating any code.

A MONAI bundle describes its networks in ``configs/inference.json`` in MONAI's config syntax,
which evaluates Python: ``$`` strings are expressions, ``%`` strings macros, ``@`` strings
references, ``_target_`` a class to import. The audit reads only three definitions,
``autoencoder_def``, ``network_def`` and ``noise_scheduler``, plus ``latent_shape`` and
``scale_factor`` where present, and evaluates none of it (nor uses ``monai.bundle.ConfigParser``,
which imports torch when the DAG is built and evaluates expressions):

* an ``@key`` whose value is a JSON literal (``"@spatial_dims"``, ``"@latent_channels"``) is
  substituted; ``_requires_`` and ``_desc_`` are ignored; a ``$`` expression, a ``%`` macro or an
  ``@`` reference to an object in a key that is read is refused with one line naming the key;
* ``_target_`` must be one of :data:`TARGETS` (MONAI's networks and schedulers, and the older
  ``generative.networks…`` names of MONAI GenerativeModels, whose ``num_channels`` is mapped to
  ``channels``); each definition's arguments are checked against stated bounds;
* 3D networks (``spatial_dims: 3``) and conditional ones (``with_conditioning``,
  ``cross_attention_dim``, ``num_class_embeds``) are refused for now.

Weights: bundles ship ``models/model_autoencoder.pt`` and ``models/model.pt``, pickles. The audit
never unpickles; ``python -m diffmem.convert monai BUNDLE OUT`` (:mod:`diffmem.convert`), run
once where the user trusts the files, writes ``models/model_autoencoder.safetensors`` and
``models/model.safetensors`` beside a copy of the definitions, and the audit reads those.

The latent scale factor is not stored in bundles (training computes it): it is read from
``scale_factor`` in the JSON (a number, not an expression) or the entry's ``scale_factor``, and
refused when neither gives it. MONAI pipelines work on images in [0, 1]; the entry's
``intensity_range`` says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelFolderError

CONFIG = Path("configs") / "inference.json"
WEIGHTS = {"autoencoder": Path("models") / "model_autoencoder", "unet": Path("models") / "model"}
CONVERT = "python -m diffmem.convert monai BUNDLE OUT"
READ = ("autoencoder_def", "network_def", "noise_scheduler")
# _target_ → (role, class); the older MONAI GenerativeModels names map onto MONAI's
TARGETS = {
    **{f"{root}.nets.AutoencoderKL": ("autoencoder", "AutoencoderKL")
       for root in ("monai.networks", "generative.networks")},
    **{f"{root}.nets.VQVAE": ("autoencoder", "VQVAE")
       for root in ("monai.networks", "generative.networks")},
    **{f"{root}.nets.DiffusionModelUNet": ("unet", "DiffusionModelUNet")
       for root in ("monai.networks", "generative.networks")},
    **{f"{root}.schedulers.{cls}": ("scheduler", cls)
       for root in ("monai.networks", "generative.networks")
       for cls in ("DDPMScheduler", "DDIMScheduler")},
}
RENAMED = {"num_channels": "channels"}  # GenerativeModels' argument names → MONAI's
IGNORED = ("_requires_", "_desc_")
MONAI_SCHEDULES = {"linear_beta": "linear", "scaled_linear_beta": "scaled_linear"}
DEFAULT_INTENSITY = [0.0, 1.0]  # MONAI's generative tutorials and bundles scale images to [0, 1]

_INT = {"type": "integer"}
_CH = {"type": "integer", "minimum": 1, "maximum": 2048}
_LEVELS = {"type": "array", "items": _CH, "minItems": 1, "maxItems": 8}
_BLOCKS = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 16},
                     {"type": "array", "items": {"type": "integer", "minimum": 1,
                                                 "maximum": 16}}]}
_BOOLS = {"type": "array", "items": {"type": "boolean"}}
SCHEMAS = {
    "AutoencoderKL": {"type": "object", "required": ["spatial_dims"],
                      "additionalProperties": False, "properties": {
        "spatial_dims": {"enum": [2]}, "in_channels": {"enum": [1, 3]},
        "out_channels": {"enum": [1, 3]}, "channels": _LEVELS, "num_res_blocks": _BLOCKS,
        "attention_levels": _BOOLS, "latent_channels": {"type": "integer", "minimum": 1,
                                                        "maximum": 64},
        "norm_num_groups": _CH, "norm_eps": {"type": "number", "exclusiveMinimum": 0,
                                             "maximum": 1},
        "with_encoder_nonlocal_attn": {"type": "boolean"},
        "with_decoder_nonlocal_attn": {"type": "boolean"},
        "use_checkpoint": {"type": "boolean"}, "use_convtranspose": {"type": "boolean"},
        "include_fc": {"type": "boolean"}, "use_combined_linear": {"type": "boolean"},
        "use_flash_attention": {"type": "boolean"}}},
    "VQVAE": {"type": "object", "required": ["spatial_dims", "in_channels", "out_channels"],
              "additionalProperties": False,
              "properties": {
                  "spatial_dims": {"enum": [2]}, "in_channels": {"enum": [1, 3]},
                  "out_channels": {"enum": [1, 3]}, "channels": _LEVELS,
                  "num_res_layers": {"type": "integer", "minimum": 1, "maximum": 16},
                  "num_res_channels": {"oneOf": [_CH, _LEVELS]},
                  "num_embeddings": {"type": "integer", "minimum": 2, "maximum": 1_048_576},
                  "embedding_dim": {"type": "integer", "minimum": 1, "maximum": 64},
                  "downsample_parameters": {"type": "array"},
                  "upsample_parameters": {"type": "array"},
                  "embedding_init": {"enum": ["normal", "kaiming_uniform"]},
                  "commitment_cost": {"type": "number"}, "decay": {"type": "number"},
                  "epsilon": {"type": "number"}, "dropout": {"type": "number", "minimum": 0,
                                                             "maximum": 1},
                  "act": {"type": ["string", "null"]},
                  "output_act": {"type": ["string", "null"]},
                  "ddp_sync": {"type": "boolean"}, "use_checkpointing": {"type": "boolean"}}},
    "DiffusionModelUNet": {
        "type": "object", "required": ["spatial_dims", "in_channels", "out_channels"],
        "additionalProperties": False, "properties": {
            "spatial_dims": {"enum": [2]},
            "in_channels": {"type": "integer", "minimum": 1, "maximum": 64},
            "out_channels": {"type": "integer", "minimum": 1, "maximum": 64},
            "channels": _LEVELS, "num_res_blocks": _BLOCKS, "attention_levels": _BOOLS,
            "norm_num_groups": _CH,
            "norm_eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "resblock_updown": {"type": "boolean"},
            "num_head_channels": {"oneOf": [{"type": "integer", "minimum": 0},
                                            {"type": "array", "items": {"type": "integer",
                                                                        "minimum": 0}}]},
            # conditional U-Nets are refused until the class-conditional work lands
            "with_conditioning": {"enum": [False]}, "cross_attention_dim": {"type": "null"},
            "num_class_embeds": {"type": "null"},
            "transformer_num_layers": {"type": "integer", "minimum": 1, "maximum": 16},
            "upcast_attention": {"type": "boolean"}, "dropout_cattn": {"type": "number"},
            "include_fc": {"type": "boolean"}, "use_combined_linear": {"type": "boolean"},
            "use_flash_attention": {"type": "boolean"}}},
    "scheduler": {"type": "object", "additionalProperties": False, "properties": {
        "num_train_timesteps": {"type": "integer", "minimum": 2, "maximum": 100_000},
        "schedule": {"enum": list(MONAI_SCHEDULES)},
        "beta_start": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "beta_end": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "variance_type": {"enum": ["fixed_small"]},
        "clip_sample": {"type": "boolean"},
        "clip_sample_min": {"type": "number"}, "clip_sample_max": {"type": "number"},
        "prediction_type": {"enum": ["epsilon", "v_prediction"]},
        "set_alpha_to_one": {"type": "boolean"}, "steps_offset": {"type": "integer"}}},
}


def is_bundle(folder: Path, entry: dict | None = None) -> bool:
    """A folder MONAI-style: the entry names a config, or the folder has configs/inference.json
    and no diffusers model_index.json."""
    folder = Path(folder).expanduser()
    if (entry or {}).get("config"):
        return True
    return (folder / CONFIG).is_file() and not (folder / "model_index.json").exists()


MAX_NODES = 100_000  # JSON values resolved per definition: a bound on the work, not a limit
# any real bundle comes near (the Zoo's definitions have tens)


def resolve(value, config: dict, where: str, path: Path, depth: int = 0,
            seen: dict | None = None):
    """``value`` with every ``@key`` literal substituted; anything that would need code refused
    (see the module docstring). Each reference is resolved once (``seen``), and the values
    visited are counted, so a small file whose references fan out cannot make the DAG build
    run for ever."""
    seen = {"__nodes__": 0} if seen is None else seen
    seen["__nodes__"] += 1
    if seen["__nodes__"] > MAX_NODES:
        raise ModelFolderError(f"{path}: {where} expands to more than {MAX_NODES:,} values "
                               f"through its @ references; expected a network's settings")
    if depth > 20:
        raise ModelFolderError(f"{path}: {where} refers through more than 20 @ references")
    if isinstance(value, str):
        if value.startswith("$"):
            raise ModelFolderError(f"{path}: {where} is a Python expression ({value[:60]!r}); "
                                   f"diffmem evaluates no code from a config: write its value")
        if value.startswith("%"):
            raise ModelFolderError(f"{path}: {where} is a macro ({value[:60]!r}); diffmem "
                                   f"follows none: write its value")
        if value.startswith("@"):
            if value in seen:
                return seen[value]
            node = config
            for part in value[1:].split("::"):
                if not isinstance(node, dict) or part not in node:
                    raise ModelFolderError(f"{path}: {where} refers to {value}, which the "
                                           f"file does not define")
                node = node[part]
            if not _literal_shape(node):
                raise ModelFolderError(f"{path}: {where} refers to {value}, an object, not a "
                                       f"JSON literal; only literal references are followed")
            target = resolve(node, config, f"{where} (via {value})", path, depth + 1, seen)
            seen[value] = target
            return target
        return value
    if isinstance(value, list):
        return [resolve(v, config, f"{where}[{i}]", path, depth, seen)
                for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in IGNORED:
                continue
            if k.startswith("_") and k != "_target_":
                raise ModelFolderError(f"{path}: {where}.{k} is a bundle directive diffmem "
                                       f"does not follow; expected only _target_ and arguments")
            out[k] = resolve(v, config, f"{where}.{k}", path, depth, seen)
        return out
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelFolderError(f"{path}: {where} = {value} is invalid: expected a finite number")
    return value


def _literal_shape(node) -> bool:
    """A value a literal reference may point at: no object anywhere in it (its strings are
    resolved, and refused if they are code, by :func:`resolve`)."""
    if isinstance(node, dict):
        return False
    if isinstance(node, list):
        return all(_literal_shape(v) for v in node)
    return True


def definition(config: dict, key: str, role: str, path: Path) -> tuple[str, dict]:
    """(class, arguments) of one definition, resolved and checked."""
    from .pretrained import check_schema

    if key not in config:
        raise ModelFolderError(f"{path} has no {key}; expected the bundle's definitions "
                               f"{', '.join(READ)}")
    d = resolve(config[key], config, key, path)
    if not isinstance(d, dict):
        raise ModelFolderError(f"{path}: {key} is a JSON {type(d).__name__}; expected an "
                               f"object with _target_")
    target = d.pop("_target_", None)
    if target not in TARGETS or TARGETS[target][0] != role:
        allowed = sorted(t for t, (r, _) in TARGETS.items() if r == role)
        raise ModelFolderError(f"{path}: {key}._target_ = {target!r} is not supported; "
                               f"expected one of {allowed}")
    cls = TARGETS[target][1]
    args = {RENAMED.get(k, k): v for k, v in d.items()}
    if args.get("spatial_dims") == 3:
        raise ModelFolderError(f"{path}: {key}.spatial_dims = 3: 3D networks are not supported "
                               f"yet; expected 2")
    conditional = [k for k in ("with_conditioning", "cross_attention_dim", "num_class_embeds")
                   if args.get(k)]
    if conditional:
        raise ModelFolderError(f"{path}: {key}.{conditional[0]} = {args[conditional[0]]!r}: "
                               f"conditional U-Nets are not supported yet; expected an "
                               f"unconditional network")
    check_schema(args, SCHEMAS["scheduler" if role == "scheduler" else cls], f"{path}: {key}")
    levels = args.get("channels")
    for k in ("attention_levels", "num_res_blocks", "num_head_channels", "num_res_channels",
              "downsample_parameters", "upsample_parameters"):
        v = args.get(k)
        if levels and isinstance(v, list) and len(v) != len(levels) and not (
                k.endswith("_parameters") and v and not isinstance(v[0], list)):
            raise ModelFolderError(f"{path}: {key}.{k} has {len(v)} entries for "
                                   f"{len(levels)} channels; expected one per level")
    groups = args.get("norm_num_groups", 32)
    if levels and cls != "VQVAE" and any(c % groups for c in levels):
        raise ModelFolderError(f"{path}: {key}.norm_num_groups {groups} does not divide "
                               f"channels {levels}")
    return cls, args


def weights_of(folder: Path, role: str) -> Path:
    """The safetensors file of a network; refused, naming the convert command, when only the
    bundle's pickle is there."""
    from .pretrained import read_weights_header

    stem = folder / WEIGHTS[role]
    safe = stem.with_suffix(".safetensors")
    if safe.is_file():
        read_weights_header(safe)
        return safe
    pickled = [p for p in (stem.with_suffix(s) for s in (".pt", ".pth", ".ckpt")) if p.exists()]
    if pickled:
        raise ModelFolderError(f"{pickled[0]} is pickled and diffmem never unpickles a user's "
                               f"file: convert the bundle once where you trust it with "
                               f"`{CONVERT}` and audit OUT")
    raise ModelFolderError(f"no {safe.relative_to(folder)} in {folder}: expected the weights "
                           f"`{CONVERT}` writes")


def inspect_bundle(folder: str | Path, entry: dict | None = None) -> dict:
    """The bundle's definitions and weights, checked as JSON and bytes before any job; the
    same keys as :func:`diffmem.diffusion.pretrained.inspect_model_folder` returns."""
    from .pretrained import _json

    entry = entry or {}
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    path = folder / (entry.get("config") or CONFIG)
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: expected a MONAI bundle's "
                               f"configs/inference.json (or the entry's config)")
    config = _json(path)
    ae_cls, ae = definition(config, "autoencoder_def", "autoencoder", path)
    unet_cls, unet = definition(config, "network_def", "unet", path)
    sched_cls, sched = definition(config, "noise_scheduler", "scheduler", path)
    latent = ae.get("latent_channels", 3) if ae_cls == "AutoencoderKL" else \
        ae.get("embedding_dim", 64)
    if unet["in_channels"] != latent or unet["out_channels"] != latent:
        raise ModelFolderError(f"{path}: network_def takes {unet['in_channels']} and gives "
                               f"{unet['out_channels']} channels on the autoencoder's {latent}-"
                               f"channel latents; expected {latent} of each")
    channels = ae.get("in_channels", 1)
    if ae.get("out_channels", 1) != channels:
        raise ModelFolderError(f"{path}: autoencoder_def has {channels} input and "
                               f"{ae.get('out_channels', 1)} output channels; expected as many")
    shape = entry.get("latent_shape") or (resolve(config["latent_shape"], config,
                                                  "latent_shape", path)
                                          if "latent_shape" in config else None)
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == latent and
            all(isinstance(s, int) and s >= 2 for s in shape) and shape[1] == shape[2]):
        raise ModelFolderError(f"{path}: latent_shape is {shape!r}; expected [{latent}, s, s] "
                               f"(in the JSON or the entry's latent_shape): the audit's "
                               f"images are square")
    scale = entry.get("scale_factor", config.get("scale_factor"))
    if scale is None:
        raise ModelFolderError(f"{path} has no scale_factor and the entry gives none: MONAI "
                               f"computes it when training (1/std of the latents); set "
                               f"scale_factor in the model's entry")
    scale = resolve(scale, config, "scale_factor", path)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
            not 0 < scale < 1000:
        raise ModelFolderError(f"{path}: scale_factor = {scale!r} is invalid: expected a "
                               f"number above 0 and below 1000")
    if ae_cls == "AutoencoderKL":  # a stride-2 downsampling between levels
        factor = 2 ** (len(ae.get("channels", [32, 64, 64, 64])) - 1)
    else:  # a VQVAE: one convolution per level, (stride, kernel, dilation, padding)
        factor = vqvae_factor(ae, int(shape[1]), path)
    rng = entry.get("intensity_range", DEFAULT_INTENSITY)
    if not (isinstance(rng, list) and len(rng) == 2 and rng[0] < rng[1]):
        raise ModelFolderError(f"intensity_range = {rng!r} is invalid: expected [low, high] "
                               f"with low below high (MONAI's [0, 1] by default)")
    weights = {role: weights_of(folder, role) for role in WEIGHTS}
    files = [path, weights["unet"], weights["autoencoder"]]
    return {"kind": "monai", "config_path": path, "unet": unet, "unet_class": unet_cls,
            "scheduler": sched, "scheduler_class": sched_cls, "scheduler_path": path,
            "weights": [weights["unet"]],
            "autoencoder": {"class": f"monai.{ae_cls}", "config": ae, "dir": folder,
                            "config_path": path, "weights": [weights["autoencoder"]],
                            "latent_channels": int(latent), "factor": int(factor),
                            "channels": int(channels), "scale": float(scale),
                            "scale_source": "the model's entry (scale_factor)"
                            if "scale_factor" in entry else f"{path.name} scale_factor",
                            "shift": 0.0, "intensity_range": [float(r) for r in rng],
                            "latent_size": int(shape[1])},
            "files": [str(f) for f in files]}


def vqvae_factor(ae: dict, latent: int, path: Path) -> int:
    """A MONAI VQVAE's image-to-latent size ratio: its encoder runs one convolution per level
    with that level's (stride, kernel, dilation, padding); the image size s·latent must map
    back onto ``latent`` (else the images cannot be read at a size that gives these latents)."""
    levels = len(ae.get("channels", [96, 96, 192]))
    down = ae.get("downsample_parameters", [2, 4, 1, 1])
    if isinstance(down, list) and down and not isinstance(down[0], list):
        down = [down] * levels  # one tuple for every level, as MONAI takes it
    if not (isinstance(down, list) and len(down) == levels and all(
            isinstance(d, list) and len(d) == 4 and all(isinstance(v, int) for v in d) and
            d[0] >= 1 and d[1] >= 1 and d[2] >= 1 and d[3] >= 0 for d in down)):
        raise ModelFolderError(f"{path}: autoencoder_def.downsample_parameters = {down!r} is "
                               f"invalid: expected [stride, kernel, dilation, padding] for each "
                               f"of its {levels} levels")
    factor = math.prod(d[0] for d in down)
    size = latent * factor
    for stride, kernel, dilation, pad in down:
        size = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if size != latent:
        raise ModelFolderError(f"{path}: autoencoder_def's downsampling maps {latent * factor}-px "
                               f"images onto {size}-px latents, not the latent_shape's {latent}; "
                               f"expected strided convolutions that divide the size exactly")
    return factor


def diffusion_of(sched: dict, cls: str, where: str) -> dict:
    """The NoiseProcess settings of a MONAI DDPM/DDIM scheduler definition."""
    pred = sched.get("prediction_type", "epsilon")
    start, end = sched.get("beta_start", 1e-4), sched.get("beta_end", 2e-2)
    if start > end:
        raise ModelFolderError(f"{where}: beta_start {start} is above beta_end {end}; expected a "
                               f"noise schedule that rises")
    if sched.get("clip_sample", True) and (sched.get("clip_sample_min", -1.0) != -1.0 or
                                           sched.get("clip_sample_max", 1.0) != 1.0):
        raise ModelFolderError(f"{where}: clip_sample between other bounds than [-1, 1] is not "
                               f"supported")
    return {"process": "ddpm", "num_train_timesteps": int(sched.get("num_train_timesteps", 1000)),
            "beta_schedule": MONAI_SCHEDULES[sched.get("schedule", "linear_beta")],
            "beta_start": float(start), "beta_end": float(end), "trained_betas": None,
            "prediction_type": pred}


def build(cls: str, args: dict):
    """A MONAI network from its checked arguments."""
    from monai.networks import nets

    return getattr(nets, cls)(**args)


def load_bundle(folder: str | Path, entry: dict | None = None):
    """(U-Net, settings, autoencoder) of a converted bundle, each loaded strictly from
    safetensors, as :func:`diffmem.diffusion.pretrained.load_pretrained` returns them."""
    from .pretrained import load_state, strict_load
    from .process import NoiseProcess

    info = inspect_bundle(folder, entry)
    diffusion = diffusion_of(info["scheduler"], info["scheduler_class"], str(info["config_path"]))
    NoiseProcess.from_config(diffusion)
    unet = build(info["unet_class"], info["unet"])
    strict_load(unet, load_state(info["weights"]), str(info["weights"][0]), info["unet_class"])
    ae = info["autoencoder"]
    autoencoder = build(ae["class"].split(".", 1)[1], ae["config"])
    strict_load(autoencoder, load_state(ae["weights"]), str(ae["weights"][0]),
                ae["class"].split(".", 1)[1])
    size = ae["latent_size"]
    extra = {
        "diffusion": diffusion,
        # the U-Net's arguments (a MONAI network has no diffusers config to save)
        "unet": info["unet"], "unet_class": f"monai.{info['unet_class']}",
        "source": {"folder": str(Path(folder).resolve()), "scheduler":
                   f"monai.{info['scheduler_class']}", "config": str(info["config_path"]),
                   "autoencoder": "models/model_autoencoder.safetensors",
                   "inference_settings_not_used": {}},
        "autoencoder": {"_class_name": ae["class"], **ae["config"]},
        "latent": {"kind": ae["class"], "scale": ae["scale"], "scale_source": ae["scale_source"],
                   "shift": 0.0, "shape": [ae["latent_channels"], size, size],
                   "image_size": size * ae["factor"], "channels": ae["channels"],
                   "intensity_range": ae["intensity_range"],
                   "clip": info["scheduler"].get("clip_sample", True) is not False}}
    return unet.eval(), extra, autoencoder.eval()

