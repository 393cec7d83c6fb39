"""Models the workflow did not train: a diffusers model saved with ``save_pretrained``.

Accepted: a ``DDPMPipeline`` / ``DDIMPipeline`` folder (``model_index.json``, ``unet/``,
``scheduler/``), or a ``UNet2DModel`` folder with a scheduler config beside it
(``scheduler_config.json`` in it, or a ``scheduler/`` folder in it or next to it); and a latent
``LDMPipeline`` folder: ``unet/`` + ``scheduler/`` + an autoencoder, ``vqvae/`` (a ``VQModel``,
as diffusers' LDMPipeline saves it) or ``vae/`` (an ``AutoencoderKL``; diffusers has no
unconditional pipeline class for it, so such a folder's ``model_index.json`` carries
``"_class_name": "LDMPipeline"`` too). ``LDMPipeline`` itself is never imported (it lives in
``diffusers.pipelines.deprecated``): each module is built from its config and loaded strictly.
Older folders name attention tensors ``query``/``key``/``value``/``proj_attn``; they are renamed
as diffusers' loader renames them (:func:`rename_old_attention`, a plain key map).

What the audit loads is exactly what the folder holds, and nothing a user gives is unpickled:

* :func:`inspect_model_folder` runs when the DAG is built and reads only JSON and bytes: the U-Net
  and scheduler configs against the schemas below (types and stated bounds; no NaN or infinity
  anywhere), and every weights file's safetensors header (:func:`read_safetensors_header`: its
  length, dtypes, offsets against the file size, at least one tensor). A folder of pickled
  weights (``.bin``, ``.pt``, …), a shard index naming a file that is not safetensors, a
  corrupt or truncated file: one line naming the file and what is expected, before any job.
* :func:`load_pretrained` (the ``import_model`` job) reads the tensors with ``safetensors``
  itself (never through diffusers' loaders, which fall back to ``torch.load`` for ``.bin``
  shards) and loads them into the U-Net built from its config with ``strict=True``: a missing,
  unexpected or mis-shaped tensor, or a non-finite value, fails the job with one line naming
  the first few keys. A random model never passes for the user's.

The scheduler's β schedule (linear, scaled_linear, squaredcos_cap_v2 or trained_betas), T and
prediction type (ε or v) map onto :class:`diffmem.diffusion.process.NoiseProcess`, so sampling,
guidance, membership inference and the boundary search run unchanged on the imported model.

This module is read when the DAG is built (the config checks): nothing here imports torch or
diffusers at module level.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ModelFolderError

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# safetensors' dtypes and their sizes in bytes (the format's specification)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
# a model's weights are floating point: an integer, bool or float8 copy of the right names and
# shapes would be cast silently (or fail in the job) and audited as another model
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")
CONVERT = ("convert it once where you trust it: UNet2DModel.from_pretrained(dir)"
           ".save_pretrained(dir, safe_serialization=True)")
LATENT_PIPELINES = ("LDMPipeline",)
AUTOENCODERS = {"vqvae": "VQModel", "vae": "AutoencoderKL"}  # folder → the class it holds
# the latent scale when a config has none: an AutoencoderKL's is diffusers' default 0.18215
# (Stable Diffusion's, which KL latent models keep); a VQModel's is 1, the scale the original
# LDM VQ models (CompVis/ldm-celebahq-256 among them) were trained at: diffusers' LDMPipeline
# divides by VQModel's default 0.18215 and decodes such a model into noise (diffusers #6725)
DEFAULT_LATENT_SCALE = {"AutoencoderKL": 0.18215, "VQModel": 1.0}

# the blocks diffusers' UNet2DModel builds without a conditioning input (cross-attention and
# the latent encoder/decoder blocks need one, or are not a denoiser)
DOWN_BLOCKS = ["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D",
               "AttnSkipDownBlock2D", "KDownBlock2D"]
UP_BLOCKS = ["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D",
             "AttnSkipUpBlock2D", "KUpBlock2D"]
_INT = {"type": "integer"}
_CHANNELS = {"type": "integer", "minimum": 1, "maximum": 2048}
UNET_SCHEMA = {
    "type": "object",
    "properties": {
        "sample_size": {"oneOf": [
            {"type": "integer", "minimum": 2, "maximum": 1024},
            {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 1024},
             "minItems": 2, "maxItems": 2}]},
        # a latent U-Net takes as many channels as its autoencoder's latents (≤ 64)
        "in_channels": {"type": "integer", "minimum": 1, "maximum": 64},
        "out_channels": {"type": "integer", "minimum": 1, "maximum": 128},
        "block_out_channels": {"type": "array", "items": _CHANNELS, "minItems": 1,
                               "maxItems": 8},
        "layers_per_block": {"type": "integer", "minimum": 1, "maximum": 16},
        "down_block_types": {"type": "array", "items": {"enum": DOWN_BLOCKS}, "minItems": 1},
        "up_block_types": {"type": "array", "items": {"enum": UP_BLOCKS}, "minItems": 1},
        "mid_block_type": {"enum": ["UNetMidBlock2D", None]},
        "norm_num_groups": _CHANNELS,
        "attn_norm_num_groups": {"oneOf": [{"type": "null"}, _CHANNELS]},
        "attention_head_dim": {"oneOf": [{"type": "null"}, _CHANNELS]},
        "time_embedding_type": {"enum": ["positional", "fourier", "learned"]},
        "time_embedding_dim": {"oneOf": [{"type": "null"},
                                         {"type": "integer", "minimum": 1, "maximum": 8192}]},
        "resnet_time_scale_shift": {"enum": ["default", "scale_shift"]},
        "downsample_type": {"enum": ["conv", "resnet"]},
        "upsample_type": {"enum": ["conv", "resnet"]},
        "act_fn": {"enum": ["silu", "swish", "mish", "gelu", "relu"]},
        "dropout": {"type": "number", "minimum": 0, "maximum": 1},
        "norm_eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "freq_shift": {"type": "number", "minimum": -1000, "maximum": 1000},
        "mid_block_scale_factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "downsample_padding": {"type": "integer", "minimum": 0, "maximum": 8},
        "flip_sin_to_cos": {"type": "boolean"}, "center_input_sample": {"type": "boolean"},
        "add_attention": {"type": "boolean"},
        # a class-conditional U-Net is not an unconditional model
        "class_embed_type": {"type": "null"}, "num_class_embeds": {"type": "null"},
        "num_train_timesteps": {"oneOf": [{"type": "null"}, _INT]},
    },
}
_BETA = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
SCHEDULER_SCHEMA = {
    "type": "object",
    "properties": {
        "_class_name": {"type": "string"},
        "num_train_timesteps": {"type": "integer", "minimum": 2, "maximum": 100_000},
        "beta_start": _BETA, "beta_end": _BETA,
        "beta_schedule": {"type": "string"},
        "trained_betas": {"oneOf": [{"type": "null"},
                                    {"type": "array", "items": _BETA, "minItems": 2}]},
        "prediction_type": {"type": "string"},
        "variance_type": {"oneOf": [{"type": "null"}, {"type": "string"}]},
        "clip_sample": {"type": "boolean"},
        "clip_sample_range": {"type": "number"},
        "thresholding": {"type": "boolean"},
        "rescale_betas_zero_snr": {"type": "boolean"},
        "set_alpha_to_one": {"type": "boolean"},
        "steps_offset": {"type": "integer", "minimum": 0},
        "timestep_spacing": {"type": "string"},
    },
}


AE_SCHEMA = {
    "type": "object",
    "properties": {
        "in_channels": {"type": "integer", "minimum": 1, "maximum": 4},
        "out_channels": {"type": "integer", "minimum": 1, "maximum": 4},
        "block_out_channels": {"type": "array", "items": _CHANNELS, "minItems": 1,
                               "maxItems": 8},
        "layers_per_block": {"type": "integer", "minimum": 1, "maximum": 16},
        "down_block_types": {"type": "array", "items": {"enum": ["DownEncoderBlock2D"]},
                             "minItems": 1},
        "up_block_types": {"type": "array", "items": {"enum": ["UpDecoderBlock2D"]},
                           "minItems": 1},
        "act_fn": {"enum": ["silu", "swish", "mish", "gelu", "relu"]},
        "latent_channels": {"type": "integer", "minimum": 1, "maximum": 64},
        "norm_num_groups": _CHANNELS,
        "sample_size": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 4096},
                                  {"type": "array", "items": _INT}]},
        "scaling_factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "shift_factor": {"oneOf": [{"type": "null"},
                                   {"type": "number", "minimum": -1000, "maximum": 1000}]},
        # per-channel latent statistics (SDXL-style) are applied by pipelines, not the model
        "latents_mean": {"type": "null"}, "latents_std": {"type": "null"},
        "force_upcast": {"type": "boolean"}, "use_quant_conv": {"type": "boolean"},
        "use_post_quant_conv": {"type": "boolean"},
        "mid_block_add_attention": {"type": "boolean"},
        "num_vq_embeddings": {"type": "integer", "minimum": 2, "maximum": 1_048_576},
        "vq_embed_dim": {"oneOf": [{"type": "null"},
                                   {"type": "integer", "minimum": 1, "maximum": 64}]},
        "norm_type": {"enum": ["group"]},
        "lookup_from_codebook": {"type": "boolean"},
    },
}


def _json(path: Path, kind: str = "object"):
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"cannot read {path} as JSON ({err})") from None
    except RecursionError:  # json's decoder recurses per level: a file nested 200,000 deep
        raise ModelFolderError(f"cannot read {path} as JSON: it is nested deeper than Python's "
                               f"decoder goes; expected a flat object of settings") from None
    if kind == "object" and not isinstance(value, dict):
        raise ModelFolderError(f"{path} holds a JSON {type(value).__name__}; expected an object "
                               f"of settings")
    return value


def _finite(value, key: str = "") -> tuple[str, float] | None:
    """(key, value) of the first setting that is NaN or infinite (JSON allows both; no setting of
    a model may be one), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "<top level>", value
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        bad = _finite(v, f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}".lstrip("."))
        if bad:
            return bad
    return None


def check_schema(cfg: dict, schema: dict, path: Path) -> None:
    """One line naming the file, the key, the value and what is expected."""
    import jsonschema

    bad = _finite(cfg)
    if bad:
        raise ModelFolderError(f"{path}: {bad[0]} = {bad[1]} is invalid: expected a finite number")
    best = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema)
                                            .iter_errors(cfg))
    if best is None:
        return
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in best.absolute_path)
    key = key.lstrip(".") or "<top level>"
    node = schema
    for p in best.absolute_path:  # the schema of the offending key, for a plain "expected"
        if isinstance(p, int) and "oneOf" in node:
            node = next((n for n in node["oneOf"] if n.get("type") == "array"), {})
        node = node.get("items", {}) if isinstance(p, int) else \
            node.get("properties", {}).get(p, {})
    raise ModelFolderError(f"{path}: {key} = {best.instance!r} is invalid: "
                           f"{_expected(node) or best.message}")


def _expected(node: dict) -> str:
    """What a schema node asks for, in words ("expected an integer from 1 to 2048")."""
    if not isinstance(node, dict) or not node:
        return ""
    if "enum" in node:
        return f"expected one of {node['enum']}"
    if "oneOf" in node:
        alts = [e.replace("expected ", "") for e in map(_expected, node["oneOf"]) if e]
        return "expected " + " or ".join(alts) if alts else ""
    kind = node.get("type")
    if kind == "null":
        return "expected null"
    out = "expected " + {"integer": "an integer", "number": "a number", "array": "a list",
                         "object": "an object"}.get(kind, f"a {kind}")
    lo = node.get("minimum", node.get("exclusiveMinimum"))
    hi = node.get("maximum", node.get("exclusiveMaximum"))
    if lo is not None:
        out += f" {'above' if 'exclusiveMinimum' in node else 'from'} {lo}"
    if hi is not None:
        out += f" {'and below' if 'exclusiveMaximum' in node else 'to'} {hi}"
    if kind == "array" and node.get("items"):
        out += f" of ({_expected(node['items']).replace('expected ', '')})"
    return out


def read_safetensors_header(path: Path) -> dict:
    """The tensors a safetensors file declares, ``{name: {dtype, shape, data_offsets}}``, read as
    bytes and JSON (no torch, nothing unpickled), after checking everything the format fixes:
    an 8-byte little-endian header length of at most 100 MB, a JSON object of known dtypes and
    shapes, data offsets that tile the data exactly (each tensor's bytes = its shape × its dtype
    size) and end where the file ends, and at least one tensor."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else None
            if n is None:
                raise ModelFolderError(f"{path} is not a safetensors file: {size} bytes, shorter "
                                       f"than the 8-byte header length")
            if n > MAX_HEADER_BYTES:
                raise ModelFolderError(f"{path} is not a safetensors file: its header claims "
                                       f"{n} bytes; expected at most {MAX_HEADER_BYTES}")
            if 8 + n > size:
                raise ModelFolderError(f"{path} is truncated or not safetensors: its header "
                                       f"claims {n} bytes but the file has {size - 8} after it")
            raw = fh.read(n)
    except OSError as err:
        raise ModelFolderError(f"cannot read {path} ({err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelFolderError(f"{path} is not a safetensors file: its {n}-byte header is not "
                               f"JSON of one level of tensors") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path} is not a safetensors file: its header is a JSON "
                               f"{type(header).__name__}, expected an object")
    header.pop("__metadata__", None)
    if not header:
        raise ModelFolderError(f"{path} holds no tensor; expected the model's weights")
    spans = []
    for name, t in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= set(t):
            raise ModelFolderError(f"{where} is {t!r}; expected dtype, shape and data_offsets")
        if t["dtype"] not in DTYPE_BYTES:
            raise ModelFolderError(f"{where} has dtype {t['dtype']!r}; expected one of "
                                   f"{sorted(DTYPE_BYTES)}")
        shape, off = t["shape"], t["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelFolderError(f"{where} has shape {shape!r}; expected non-negative integers")
        if not (isinstance(off, list) and len(off) == 2 and
                all(isinstance(o, int) for o in off) and 0 <= off[0] <= off[1]):
            raise ModelFolderError(f"{where} has data_offsets {off!r}; expected [begin, end]")
        nbytes = math.prod(shape) * DTYPE_BYTES[t["dtype"]]
        if off[1] - off[0] != nbytes:
            raise ModelFolderError(f"{where} spans {off[1] - off[0]} bytes; its shape {shape} "
                                   f"of {t['dtype']} needs {nbytes}")
        spans.append((off[0], off[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ModelFolderError(f"{path}: tensor {name!r} starts at byte {begin}, expected "
                                   f"{end} (tensors must tile the data without gaps or overlap)")
        end = stop
    if 8 + n + end != size:
        raise ModelFolderError(f"{path} is truncated or padded: its tensors end at byte "
                               f"{8 + n + end} but the file has {size}")
    return header


def read_weights_header(path: Path) -> dict:
    """:func:`read_safetensors_header` of a weights file, every tensor of a floating-point dtype
    (:data:`WEIGHT_DTYPES`)."""
    header = read_safetensors_header(path)
    odd = [(k, t["dtype"]) for k, t in header.items() if t["dtype"] not in WEIGHT_DTYPES]
    if odd:
        raise ModelFolderError(f"{path}: tensor {odd[0][0]!r} has dtype {odd[0][1]} ({len(odd)} "
                               f"such); expected model weights of {', '.join(WEIGHT_DTYPES)}")
    return header


# the shard indexes diffusers reads for the model itself; a variant's (fp16, ema, …) index has
# the variant between the two, and variants are not read
INDEXES = ("diffusion_pytorch_model.safetensors.index.json",
           "diffusion_pytorch_model.bin.index.json")


def weight_files(unet_dir: Path, cls: str = "UNet2DModel") -> list[Path]:
    """The safetensors files holding the U-Net: the one file, or every shard its index names
    (each a safetensors file inside the folder). Anything that would be unpickled is refused;
    a variant's files (``diffusion_pytorch_model.fp16.safetensors``, its shard index) are not
    read."""
    single = unet_dir / WEIGHTS
    indexes = [unet_dir / name for name in INDEXES if (unet_dir / name).exists()]
    if indexes:
        maps = {}
        for index in indexes:
            weight_map = _json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or \
                    not all(isinstance(v, str) for v in weight_map.values()):
                raise ModelFolderError(f"{index}: weight_map is {weight_map!r}; expected an "
                                       f"object of tensor name → shard file")
            for shard in sorted(set(weight_map.values())):
                if not shard.endswith(".safetensors"):
                    raise ModelFolderError(f"{index} names the shard {shard}, which is not "
                                           f"safetensors; diffmem never unpickles a user's "
                                           f"file: {_convert(cls)}")
            maps[index] = weight_map
        if len(indexes) > 1 or single.exists():
            found = [p.name for p in indexes] + ([single.name] if single.exists() else [])
            raise ModelFolderError(f"{unet_dir} holds {', '.join(found)}: which weights are the "
                                   f"model's is ambiguous; keep one file or one shard index")
        weight_map = maps[indexes[0]]
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if Path(shard).name != shard:
                raise ModelFolderError(f"{indexes[0]} names the shard {shard!r}; expected a "
                                       f"file name inside {unet_dir}")
            if not (unet_dir / shard).is_file():
                raise ModelFolderError(f"{indexes[0]} names the shard {shard}, which is not in "
                                       f"{unet_dir}")
        for shard in shards:
            held = read_weights_header(unet_dir / shard)
            missing = [k for k, v in weight_map.items() if v == shard and k not in held]
            if missing:
                raise ModelFolderError(f"{unet_dir / shard} lacks {len(missing)} tensors its "
                                       f"index assigns to it ({', '.join(missing[:3])}, …)")
        return [unet_dir / s for s in shards]
    if single.exists():
        read_weights_header(single)
        return [single]
    pickled = sorted(p.name for p in unet_dir.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise ModelFolderError(f"{unet_dir / pickled[0]} is pickled and diffmem never unpickles "
                               f"a user's file; {_convert(cls)}")
    others = sorted(p.name for p in [*unet_dir.glob("*.safetensors"),
                                     *unet_dir.glob("diffusion_pytorch_model*.index.json")])
    raise ModelFolderError(f"no {WEIGHTS} in {unet_dir}"
                           + (f" (found {', '.join(others)}: variants are not read; keep the "
                              f"one to audit under that name)" if others else ""))


def _convert(cls: str) -> str:
    return CONVERT.replace("UNet2DModel", cls)


def check_blocks(cfg: dict, path: Path, default: list[int]) -> list[int]:
    """A diffusers config's ``block_out_channels`` (``default``, diffusers' own, when absent),
    checked against its down/up block lists and its ``norm_num_groups``."""
    blocks = cfg.get("block_out_channels", default)
    for key in ("down_block_types", "up_block_types"):
        if key in cfg and len(cfg[key]) != len(blocks):
            raise ModelFolderError(f"{path}: {key} has {len(cfg[key])} blocks for "
                                   f"{len(blocks)} block_out_channels; expected as many")
    groups = cfg.get("norm_num_groups", 32)
    odd = [c for c in blocks if c % groups]
    if odd:
        raise ModelFolderError(f"{path}: norm_num_groups {groups} does not divide "
                               f"block_out_channels {odd}")
    return blocks


def check_unet_config(unet: dict, path: Path) -> None:
    """The U-Net config against :data:`UNET_SCHEMA` and what diffusers needs of it together."""
    if unet.get("_class_name") != "UNet2DModel":
        raise ModelFolderError(f"{path} describes a {unet.get('_class_name')}; only the "
                               f"unconditional 2D UNet2DModel is supported (conditional and 3D "
                               f"U-Nets are not, yet)")
    check_schema(unet, UNET_SCHEMA, path)
    blocks = check_blocks(unet, path, [224, 448, 672, 896])
    size = unet.get("sample_size")
    sizes = size if isinstance(size, list) else [size] if size else []
    if len(set(sizes)) > 1:  # diffusers builds it; the audit's images and sampler are square
        raise ModelFolderError(f"{path}: sample_size {size} is not square; expected one size "
                               f"(or [s, s]): the audit compares square images")
    step = 2 ** (len(blocks) - 1)
    if any(s % step for s in sizes):
        raise ModelFolderError(f"{path}: sample_size {size} is not divisible by {step}, which "
                               f"{len(blocks)} resolution levels need")


def check_scheduler_config(cfg: dict, path: Path) -> None:
    """The scheduler config against :data:`SCHEDULER_SCHEMA` (types; T ≥ 2; every β in (0, 1);
    trained betas, one per step)."""
    check_schema(cfg, SCHEDULER_SCHEMA, path)
    betas = cfg.get("trained_betas")
    start, end = cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)
    if not betas and cfg.get("beta_schedule", "linear") in ("linear", "scaled_linear") and \
            start > end:
        raise ModelFolderError(f"{path}: beta_start {start} is above beta_end {end}; expected "
                               f"a noise schedule that rises from beta_start to beta_end")
    T = cfg.get("num_train_timesteps", 1000)
    if betas and len(betas) != T:
        raise ModelFolderError(f"{path}: trained_betas has {len(betas)} values for "
                               f"num_train_timesteps {T}; expected one per step")


def inspect_model_folder(folder: str | Path) -> dict:
    """Where the U-Net, its weights and the scheduler config are, every file checked as JSON and
    bytes; refuse what is unsupported. ``files`` lists every file the import reads (inputs of
    ``import_model``, so an edit re-runs it)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    index = folder / "model_index.json"
    files, autoencoder = [], None
    if index.exists():
        cls = _json(index).get("_class_name")
        if cls not in PIPELINES + LATENT_PIPELINES:
            raise ModelFolderError(
                f"{index} describes a {cls}: diffmem audits unconditional 2D diffusion models "
                f"({', '.join(PIPELINES + LATENT_PIPELINES)} or a UNet2DModel folder); "
                f"conditional and 3D pipelines are not supported yet")
        unet_dir, sched = folder / "unet", folder / "scheduler" / "scheduler_config.json"
        files.append(index)
        if cls in LATENT_PIPELINES:
            autoencoder = inspect_autoencoder(folder, index)
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
    check_unet_config(unet, cfg_path)
    weights = weight_files(unet_dir)
    if not sched.exists():
        raise ModelFolderError(f"no scheduler config for {folder}: expected {sched}")
    scheduler = _json(sched)
    check_scheduler_config(scheduler, sched)
    files += [cfg_path, *weights, sched]
    if autoencoder:
        check_latent_unet(unet, cfg_path, autoencoder)
        files += [autoencoder["config_path"], *autoencoder["weights"]]
    return {"unet_dir": unet_dir, "weights": weights, "unet": unet, "scheduler": scheduler,
            "scheduler_path": sched, "autoencoder": autoencoder,
            "files": [str(f) for f in files]}


def inspect_autoencoder(folder: Path, index: Path) -> dict:
    """The autoencoder of a latent folder (``vqvae/`` or ``vae/``, exactly one): its config
    against :data:`AE_SCHEMA` and its weights' headers, checked as JSON and bytes."""
    present = [d for d in AUTOENCODERS if (folder / d).is_dir()]
    if len(present) != 1:
        raise ModelFolderError(f"{index} describes a latent pipeline; expected one autoencoder "
                               f"folder, vqvae/ (VQModel) or vae/ (AutoencoderKL), in {folder}, "
                               f"found {present or 'none'}")
    ae_dir = folder / present[0]
    cfg_path = ae_dir / "config.json"
    if not cfg_path.exists():
        raise ModelFolderError(f"no {cfg_path.name} in {ae_dir}: expected the autoencoder's "
                               f"save_pretrained folder")
    cfg = _json(cfg_path)
    cls = cfg.get("_class_name")
    if cls != AUTOENCODERS[present[0]]:
        raise ModelFolderError(f"{cfg_path} describes a {cls}; expected "
                               f"{AUTOENCODERS[present[0]]} in {present[0]}/")
    check_schema(cfg, AE_SCHEMA, cfg_path)
    blocks = check_blocks(cfg, cfg_path, [64])
    channels = cfg.get("in_channels", 3)
    if channels not in (1, 3) or cfg.get("out_channels", 3) != channels:
        raise ModelFolderError(f"{cfg_path}: an autoencoder of {channels} input and "
                               f"{cfg.get('out_channels', 3)} output channels; expected 1 or 3 "
                               f"of each (grey or RGB images)")
    latent = cfg.get("latent_channels", 3 if cls == "VQModel" else 4)
    if cls == "VQModel" and cfg.get("vq_embed_dim") is not None:
        latent = cfg["vq_embed_dim"]  # the U-Net works on the quantizer's input
    scale = cfg.get("scaling_factor")
    default = DEFAULT_LATENT_SCALE[cls]
    return {"dir": ae_dir, "config_path": cfg_path, "config": cfg, "class": cls,
            "weights": weight_files(ae_dir, cls), "latent_channels": int(latent),
            "factor": 2 ** (len(blocks) - 1), "channels": int(channels),
            "scale": float(scale) if scale is not None else default,
            "scale_source": f"{present[0]}/config.json scaling_factor" if scale is not None
            else (f"diffusers' default {default} ({present[0]}/config.json has no "
                  f"scaling_factor)" if cls == "AutoencoderKL" else
                  f"1, the original LDM VQ models' ({present[0]}/config.json has no "
                  f"scaling_factor; diffusers' default 0.18215 decodes them into noise)"),
            "shift": float(cfg.get("shift_factor") or 0.0)}


def check_latent_unet(unet: dict, path: Path, ae: dict) -> None:
    """The U-Net works on the autoencoder's latents: as many channels in and out."""
    cin, cout = unet.get("in_channels", 3), unet.get("out_channels", 3)
    if cin != ae["latent_channels"] or cout != cin:
        raise ModelFolderError(f"{path}: a U-Net of {cin} input and {cout} output channels on "
                               f"the {ae['latent_channels']}-channel latents of "
                               f"{ae['config_path']}; expected {ae['latent_channels']} of each")


def rename_old_attention(state: dict) -> dict:
    """Attention tensors under their pre-0.15 names (``…attentions.N.query/key/value/
    proj_attn.{weight,bias}``) renamed to ``to_q/to_k/to_v/to_out.0``, as diffusers' loader
    (``ModelMixin._fix_state_dict_keys_on_load``) renames them for U-Nets and autoencoders: a
    plain key map, no code from the folder run."""
    import re

    names = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    pattern = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[f"{m[1]}.{names[m[2]]}.{m[3]}" if m else k] = v
    return out


def files_digest(files: list[str]) -> str:
    """A digest of the contents of every file the import reads (each file's
    :func:`~diffmem.io.file_digest`, in order): a param of ``import_model``, so that a weights
    file replaced by an older one (``cp -p``, ``rsync -a``, ``mv``: its modification time gives
    Snakemake no reason) or a folder link re-pointed to another model re-runs the import. Read
    once when the DAG is built (about a second per GB)."""
    import hashlib

    from ..io import file_digest

    return hashlib.sha256(";".join(f"{Path(f).name}:{file_digest(f)}" for f in files)
                          .encode()).hexdigest()[:16]


def diffusion_from_scheduler(cfg: dict, where: str = "scheduler", latent: bool = False) -> dict:
    """The NoiseProcess settings of a diffusers DDPM/DDIM scheduler config, or one line naming
    the first setting the workflow does not support. A ``latent`` model's scheduler may leave
    its samples unclipped (``clip_sample: false``, as latent pipelines' schedulers do)."""
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
    clips = cfg.get("clip_sample", True) is not False
    if (not clips and not latent) or (clips and float(cfg.get("clip_sample_range", 1.0)) != 1.0):
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


def load_state(files: list[Path]) -> dict:
    """Every tensor of the safetensors files, read with safetensors itself (no pickle); a tensor
    name in two files, or a non-finite value, is refused."""
    from safetensors import safe_open

    state = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for k in fh.keys():
                if k in state:
                    raise ModelFolderError(f"{f}: tensor {k!r} is in two weight files")
                state[k] = fh.get_tensor(k)
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ModelFolderError(f"{files[0].parent}: {len(bad)} tensors hold NaN or infinite "
                               f"values ({', '.join(bad[:3])}); a model with them samples noise")
    return state


def strict_load(model, state: dict, where: str, what: str = "U-Net") -> None:
    """``load_state_dict(strict=True)``, with one line naming the first few keys that do not
    match instead of torch's multi-line report."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{len(items)} {kind} ({', '.join(items[:3])}{', …' if len(items) > 3 else ''})"
                for kind, items in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped, file vs config", shaped)) if items]
    if problems:
        raise ModelFolderError(f"{where}: the weights do not match the {what} its config "
                               f"describes: tensors {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def load_pretrained(folder: str | Path):
    """The folder's U-Net (and a latent folder's autoencoder), each built from its config and
    loaded strictly from safetensors, and the settings that go with them: the mapped noise
    process, where it came from and, for a latent model, the ``latent`` block (the
    autoencoder's kind, latent scale and its source, latent shape, intensity range, whether the
    scheduler clips). Returns (U-Net, settings, autoencoder or None)."""
    from diffusers import UNet2DModel

    from .process import NoiseProcess  # torch: not at module level (see the module docstring)

    info = inspect_model_folder(folder)
    ae = info["autoencoder"]
    diffusion = diffusion_from_scheduler(info["scheduler"], str(info["scheduler_path"]),
                                         latent=ae is not None)
    NoiseProcess.from_config(diffusion)  # every setting it cannot hold fails here
    config = {k: v for k, v in info["unet"].items() if not k.startswith("_")}
    model = UNet2DModel.from_config(config)
    strict_load(model, rename_old_attention(load_state(info["weights"])), str(info["unet_dir"]))
    ignored = {k: info["scheduler"][k] for k in ("timestep_spacing", "steps_offset",
                                                  "set_alpha_to_one") if k in info["scheduler"]}
    extra = {"diffusion": diffusion, "source": {"folder": str(Path(folder).resolve()),
                                                "scheduler": info["scheduler"].get("_class_name"),
                                                "inference_settings_not_used": ignored}}
    autoencoder = None
    if ae is not None:
        import diffusers

        cls = getattr(diffusers, ae["class"])
        ae_config = {k: v for k, v in ae["config"].items() if not k.startswith("_")}
        autoencoder = cls.from_config(ae_config)
        strict_load(autoencoder, rename_old_attention(load_state(ae["weights"])), str(ae["dir"]),
                    ae["class"])
        size = latent_size(info["unet"])
        extra["autoencoder"] = {"_class_name": ae["class"], **ae_config}
        extra["latent"] = {
            "kind": ae["class"], "scale": ae["scale"], "scale_source": ae["scale_source"],
            "shift": ae["shift"], "shape": [ae["latent_channels"], size, size],
            "image_size": size * ae["factor"], "channels": ae["channels"],
            # diffusers' autoencoders read and write images in [-1, 1]
            "intensity_range": [-1.0, 1.0],
            "clip": info["scheduler"].get("clip_sample", True) is not False}
        extra["source"]["autoencoder"] = ae["dir"].name
    return model.eval(), extra, autoencoder


def latent_size(unet: dict) -> int:
    """The U-Net's square sample size (diffusers' default 32 when absent)."""
    size = unet.get("sample_size", 32)
    return int(size[0] if isinstance(size, list) else size)
