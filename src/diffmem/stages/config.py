"""Configuration checks that run before any job: the JSON schema, then cross-field rules, then
what the config points at (a user's model folders and images, read as JSON, bytes and image
headers: nothing here imports torch or diffusers).

Every problem becomes one :class:`ConfigError` line that names the key, the bad value and what
is expected.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from ..data.images import (
    check_images,
    count_images,
    image_size,
    list_image_files,
    same_images,
)
from ..data.medmnist import max_train_size, medmnist_info
from ..diffusion.monai_bundle import diffusion_of, inspect_bundle, is_bundle
from ..diffusion.pretrained import (
    diffusion_from_scheduler,
    files_digest,
    inspect_model_folder,
    latent_size,
)
from ..diffusion.schedule import MAX_SIGNAL, first_step, signal_at_start
from ..errors import ConfigError, DataError, ModelFolderError


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


_SCALARS = {"boolean": (bool,), "integer": (int,), "number": (int, float)}


def _types(schema: dict, root: dict) -> set[str]:
    schema = _resolve(schema, root)
    t = schema.get("type")
    out = set(t if isinstance(t, list) else [t] if t else [])
    for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
        out |= _types(alt, root)
    return out


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local ``$ref`` ("#/definitions/x")."""
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def coerce_cli_strings(config, schema: dict, root: dict | None = None):
    """Turn strings such as ``'false'`` or ``'30'`` into the boolean/number the schema expects.

    ``snakemake --config download=false`` and ``--config sample='{num_samples: 30}'`` hand such
    values over as strings; everything else is left for the schema to judge.
    """
    root = root or schema
    schema = _resolve(schema, root)
    if isinstance(config, (dict, list)):  # pick the oneOf/anyOf branch of the right kind
        kind = "object" if isinstance(config, dict) else "array"
        for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
            if _resolve(alt, root).get("type") == kind:
                schema = _resolve(alt, root)
                break
    if isinstance(config, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in config.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                config[k] = coerce_cli_strings(v, sub, root)
        return config
    if isinstance(config, list) and isinstance(schema.get("items"), dict):
        return [coerce_cli_strings(v, schema["items"], root) for v in config]
    types = _types(schema, root) & set(_SCALARS)
    if isinstance(config, str) and types:
        try:
            value = yaml.safe_load(config)
        except yaml.YAMLError:
            return config
        wanted = tuple(t for name in types for t in _SCALARS[name])
        if isinstance(value, wanted) and (bool in wanted or not isinstance(value, bool)):
            return value
    return config


def check_config(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` (filling schema defaults); raise one :class:`ConfigError` line."""
    import jsonschema
    from snakemake.utils import validate

    _IMAGES.clear()  # images may have changed since the last check
    coerce_cli_strings(config, yaml.safe_load(Path(schema_path).read_text()))
    try:
        validate(config, str(schema_path))
    except Exception as err:
        schema = yaml.safe_load(Path(schema_path).read_text())
        best = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(config))
        if best is None:
            raise ConfigError(f"config error: {str(err).splitlines()[-1]}") from None
        where = _key(best.absolute_path)
        if best.validator == "additionalProperties":
            allowed = sorted(best.schema.get("properties", {}))
            raise ConfigError(f"config error at {where}: {best.message}; allowed keys: "
                              f"{', '.join(allowed)}") from None
        if best.validator == "required":
            raise ConfigError(f"config error at {where}: {best.message}") from None
        raise ConfigError(f"config error at {where}: value {best.instance!r} is invalid: "
                          f"{best.message}") from None
    _cross_checks(config)
    return config


_IMAGES: dict = {}  # check_images per source, once per DAG build (check_config empties it)


def images_of(source: str, size: int, resize: bool) -> dict:
    """:func:`~diffmem.data.images.check_images` of a source, once per DAG build."""
    key = (str(source), int(size), bool(resize))
    if key not in _IMAGES:
        _IMAGES[key] = check_images(source, size=size, resize=resize)
    return _IMAGES[key]


def dataset_images(config: dict, name: str) -> dict | None:
    """The digests of a dataset entry's training and held-out images (a param of the jobs that
    read them, so replacing an image re-runs them); None for a MedMNIST flag."""
    entry = dataset_entry(config, name)
    if entry is None:
        return None
    return {key: images_of(entry[key], config["image_size"], entry.get("resize", True))["digest"]
            for key in ("train", "heldout")}


def _cross_checks(config: dict) -> None:

    augment = (config.get("copies") or {}).get("augment") or {}
    for key in ("zoom", "downup"):
        if key in augment and augment[key][0] > augment[key][1]:
            raise ConfigError(f"config error at copies.augment.{key}: {augment[key]}; expected "
                              f"[low, high] with low <= high")
    names = dataset_names(config)
    if not names and not any(config.get(k) for k in ("models", "generated", "study")):
        raise ConfigError("config error at datasets: no dataset, model, generated set or study; "
                          "expected a MedMNIST flag or an image dataset in datasets, or an entry "
                          "in models or generated, or a study")
    for i, entry in enumerate(config["datasets"]):
        try:
            if isinstance(entry, str):
                medmnist_info(entry)
            else:
                if entry["name"] in RESERVED:
                    raise DataError(f"dataset name {entry['name']!r} is reserved (results/"
                                    f"{entry['name']}/ holds other outputs); choose another")
                for key in ("train", "heldout"):
                    if images_of(entry[key], config["image_size"],
                                 entry.get("resize", True))["count"] < 2:
                        raise DataError(f"{entry[key]}: expected at least 2 images")
                if same_images(entry["train"], entry["heldout"]):
                    raise DataError(f"heldout {entry['heldout']} holds the same images as train "
                                    f"{entry['train']}; held-out images must be images the "
                                    f"model never saw")
        except DataError as err:
            raise ConfigError(f"config error at datasets[{i}]: {err}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"config error at datasets: names must be unique; got {names}")
    sizes = config["train_sizes"]
    if isinstance(sizes, dict):
        extra = sorted(set(sizes) - set(names))
        missing = sorted(set(names) - set(sizes))
        if extra or missing:
            raise ConfigError(f"config error at train_sizes: keys must be the datasets "
                              f"{names}; extra {extra}, missing {missing}")
    for name in names:
        limit = dataset_size(config, name)
        for n in train_sizes_for(config, name):
            if n > limit:
                raise ConfigError(f"config error at train_sizes: {n} for {name} exceeds its "
                                  f"{limit} training images; the maximum is {limit}")
    for name in config.get("models") or {}:
        model_info(config, name)
    for name in config.get("generated") or {}:
        generated_info(config, name)
    study = config.get("study")
    if study:
        if study["dataset"] not in names and dataset_entry(config, study["dataset"]) is None:
            try:
                medmnist_info(study["dataset"])
            except DataError as err:
                raise ConfigError(f"config error at study.dataset: {err}") from None
        limit = dataset_size(config, study["dataset"])
        n_train = study.get("n_train", STUDY_DEFAULTS["n_train"])
        if n_train >= limit:
            raise ConfigError(f"config error at study.n_train: {n_train} leaves none of the "
                              f"{limit} training images of {study['dataset']} unused; expected "
                              f"fewer (the unused ones enlarge the null)")
    radius = config["saf"]["radius"]
    if 2 * math.ceil(radius) >= config["image_size"]:
        raise ConfigError(f"config error at saf.radius: a disc of radius {radius} does not fit "
                          f"wholly inside a {config['image_size']}x{config['image_size']} image; "
                          f"expected a radius below {config['image_size'] // 2}")
    model = config["model"]
    levels = len(model["block_out_channels"])
    bad = [a for a in model.get("attention_levels", []) if a >= levels]
    if bad:
        raise ConfigError(f"config error at model.attention_levels: {bad} out of range; the "
                          f"model has levels 0..{levels - 1}")
    if config["image_size"] % 2 ** (levels - 1):
        raise ConfigError(f"config error at model.block_out_channels: {levels} levels need the "
                          f"image size divisible by {2 ** (levels - 1)}; image_size is "
                          f"{config['image_size']}")
    groups = model.get("norm_num_groups", 32)
    odd = [c for c in model["block_out_channels"] if c % groups]
    if odd:
        raise ConfigError(f"config error at model.norm_num_groups: {groups} does not divide "
                          f"block_out_channels {odd}")
    diff = config["diffusion"]
    if diff.get("beta_min", 0.1) >= diff.get("beta_max", 20.0):
        raise ConfigError(f"config error at diffusion.beta_min: {diff.get('beta_min')} must "
                          f"be below beta_max {diff.get('beta_max')}")
    if config["sample"]["sampler"] == "euler_maruyama" and diff.get("process") != "subvp":
        raise ConfigError("config error at sample.sampler: 'euler_maruyama' integrates the "
                          "sub-VP SDE and needs diffusion.process: subvp; a DDPM model samples "
                          "with ddpm or ddim")
    if config["boundary"].get("sampler") == "euler_maruyama" and diff.get("process") != "subvp":
        raise ConfigError("config error at boundary.sampler: 'euler_maruyama' integrates the "
                          "sub-VP SDE and needs diffusion.process: subvp; use auto, ddpm or ddim")
    if diff.get("beta_start", 1e-4) >= diff.get("beta_end", 0.02):
        raise ConfigError(f"config error at diffusion.beta_start: {diff.get('beta_start')} must "
                          f"be below beta_end {diff.get('beta_end')}")
    side = config.get("side")
    if side and config["sample"]["num_samples"] < side["clusters"] * side["per_cluster"]:
        raise ConfigError(f"config error at sample.num_samples: {config['sample']['num_samples']}"
                          f" is below side.clusters x side.per_cluster = "
                          f"{side['clusters'] * side['per_cluster']}, the plain-sampling "
                          f"baseline SIDE is compared with")
    fixed = (config.get("scoring") or {}).get("fixed_bands")
    if fixed and not fixed[0] < fixed[1] < fixed[2]:
        raise ConfigError(f"config error at scoring.fixed_bands: {fixed} must be increasing "
                          f"[low, mid, high] similarity edges")
    q = (config.get("scoring") or {}).get("band_quantiles")
    if q and not q[0] < q[1] < q[2]:
        raise ConfigError(f"config error at scoring.band_quantiles: {q} must be increasing "
                          f"quantiles in (0, 1)")
    dup = config.get("duplicates") or {}
    if dup.get("metric", "rms") == "rms" and not 0 <= dup.get("threshold", 5.0) <= 255:
        raise ConfigError(f"config error at duplicates.threshold: {dup.get('threshold')} is not "
                          f"an RMS difference in grey levels (0..255)")
    if dup.get("metric") == "cosine" and not -1 <= dup.get("threshold", 0.98) <= 1:
        raise ConfigError(f"config error at duplicates.threshold: {dup.get('threshold')} is not "
                          f"a cosine similarity in [-1, 1]")
    weights = (config.get("fid") or {}).get("inception_weights")
    if weights:
        path = Path(weights).expanduser()
        if path.suffix != ".safetensors":
            raise ConfigError(f"config error at fid.inception_weights: {weights!r} is not a "
                              f".safetensors file; write one with python -m diffmem.metrics.fid "
                              f"export-inception FILE.safetensors")
        if not path.is_file():
            raise ConfigError(f"config error at fid.inception_weights: file not found: {path}; "
                              f"write it with python -m diffmem.metrics.fid export-inception "
                              f"{path}, or set null to skip FID")
    if config["sample"]["steps"] > diff["num_train_timesteps"]:
        raise ConfigError(f"config error at sample.steps: {config['sample']['steps']} exceeds "
                          f"diffusion.num_train_timesteps {diff['num_train_timesteps']}")
    if names:  # models to train: their process must reach noise where sampling starts
        m = signal_at_start(diff, config["sample"]["sampler"], config["sample"]["steps"])
        if m > MAX_SIGNAL:
            raise ConfigError(f"config error at diffusion: {_process_words(diff)} keeps "
                              f"{m:.2f} of the image where sampling starts "
                              f"({_start_words(diff, config['sample'])}); expected at most "
                              f"{MAX_SIGNAL}, else samples drawn from noise are noise, not data; "
                              f"raise num_train_timesteps or beta_end, or choose another "
                              f"beta_schedule")


RESERVED = ("models", "fingerprint", "generated", "study", "copies")
# the copy embedding (config ``copies``; README, "The learned copy eye"): the settings the
# known-truth study measured on BreastMNIST
COPIES_DEFAULTS = {"encoder": "small", "width": 16, "dim": 128, "steps": 600, "batch_size": 128,
                   "learning_rate": 0.003, "weight_decay": 0.0001, "temperature": 0.07,
                   "twin_quantile": 0.5, "twin_pixel_cosine": 0.95, "check_images": 64,
                   "seed": 7, "augment": {}}


def copies_settings(config: dict) -> dict:
    """The ``copies`` section over its defaults (``augment`` over the augmentation's own)."""
    cfg = COPIES_DEFAULTS | dict(config.get("copies") or {})
    return cfg | {"augment": dict(cfg.get("augment") or {})}


def copy_key(config: dict, kind: str, name: str, info: dict) -> str:
    """The key of a ``models``/``generated`` entry's copy embedding: a digest of everything its
    training is made of, so entries share one embedding only when it would be the same one.
    That is the training images (every file's path, size and modification time, and how they
    are read) and their near-duplicate groups (twins are not each other's negatives), which
    are made over the training and held-out images together (a held-out image can join two
    training images into one group) under the pixel match's mirror (on for a model trained
    with ``random_flip``): so the held-out images' digest and the mirror are in it too."""
    import hashlib
    import json

    entry = config[kind][name]
    mirror = bool((config.get("matching") or {}).get("mirror", True)
                  or (kind == "models" and entry.get("random_flip", False)))
    digests = info["images_digest"]
    blob = json.dumps([digests["train"], digests.get("heldout"), info["size"], info["channels"],
                       bool(entry.get("resize", True)), mirror], sort_keys=True)
    return "images-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


# the known-truth study's settings when the config's study section leaves them out
STUDY_DEFAULTS = {"n_train": 200, "seeds": 20, "generated": 126, "shifts": [1, 2, 3, 4],
                  "mixture_rates": [0.05, 0.1, 0.2, 0.3, 0.5], "rotated_mixture_rates": [0.1, 0.2],
                  "noise_std": 2.0, "seed": 0}


def dataset_names(config: dict) -> list[str]:
    """The wildcard name of every dataset: its MedMNIST flag, or the entry's ``name``."""
    return [d if isinstance(d, str) else d["name"] for d in config["datasets"]]


def dataset_entry(config: dict, name: str) -> dict | None:
    """The entry of an image dataset (your own images), or None for a MedMNIST flag."""
    for d in config["datasets"]:
        if isinstance(d, dict) and d["name"] == name:
            return d
    return None


def dataset_size(config: dict, name: str) -> int:
    """How many training images a dataset offers (what a subset may at most take)."""
    entry = dataset_entry(config, name)
    return max_train_size(name) if entry is None else count_images(entry["train"])


def train_sizes_for(config: dict, flag: str) -> list[int]:
    """The training sizes N of one dataset, with ``all`` resolved to its train split size."""
    sizes = config["train_sizes"]
    sizes = sizes[flag] if isinstance(sizes, dict) else sizes
    out = [dataset_size(config, flag) if s == "all" else int(s) for s in sizes]
    return sorted(dict.fromkeys(out))


def runs(config: dict) -> list[tuple[str, int, int]]:
    """Every (dataset, N, seed) the config asks for: models the workflow trains."""
    return [(flag, n, seed) for flag in dataset_names(config)
            for n in train_sizes_for(config, flag) for seed in config["seeds"]]


def run_dir(run) -> str:
    """A run's folder under results/: ``{dataset}/n{N}/seed{seed}`` or ``models/{name}``."""
    return f"models/{run}" if isinstance(run, str) else "{}/n{}/seed{}".format(*run)


def all_runs(config: dict) -> list:
    """Trained runs as (dataset, N, seed) tuples, then imported models by name."""
    return [*runs(config), *(config.get("models") or {})]


def run_parts(run: str) -> tuple[str | None, str | None]:
    """(dataset, imported model name) of a run folder: one of them is None."""
    head, _, rest = run.partition("/")
    return (None, rest) if head == "models" else (head, None)


def run_seed(wildcards, config: dict) -> int:
    """The seed a job's random draws derive from: the run's seed, or an imported model's
    ``seed`` (default 0). Takes a rule's wildcards (``seed``, or ``run``)."""
    seed = getattr(wildcards, "seed", None)
    if seed is not None:
        return int(seed)
    name = getattr(wildcards, "name", None)
    if name is None:
        _, name = run_parts(str(wildcards.run))
    if name is not None:
        return int(config["models"][name].get("seed", 0))
    return int(str(wildcards.run).rsplit("seed", 1)[1])


def _process_words(diff: dict) -> str:
    if diff.get("process") == "subvp":
        return f"the sub-VP SDE with beta from {diff.get('beta_min')} to {diff.get('beta_max')}"
    schedule = diff.get("beta_schedule", "linear")
    schedule = "trained betas" if diff.get("trained_betas") else \
        "the squaredcos_cap_v2 (cosine) schedule" if schedule == "squaredcos_cap_v2" else \
        f"{schedule} beta from {diff.get('beta_start')} to {diff.get('beta_end')}"
    return f"a DDPM chain with T = {diff['num_train_timesteps']} and {schedule}"


def _start_words(diff: dict, sample: dict) -> str:
    t0 = first_step(int(diff["num_train_timesteps"]), sample["sampler"], sample["steps"])
    return f"step {t0} with {sample['sampler']}, {sample['steps']} steps"


def entry_images(config: dict, entry: dict, where: str, size: int, keys) -> tuple[dict, dict]:
    """The image sources of a ``models`` or ``generated`` entry, checked before any job (every
    header; at least 2 training images; a held-out set that is not the training set and can
    set the bands, or none and enough training images for the reference bands). Returns
    (counts, digests) by key."""
    counts, digests = {}, {}
    for key in keys:
        if entry.get(key):
            try:
                got = images_of(entry[key], size, entry.get("resize", True))
            except DataError as err:
                raise ConfigError(f"config error at {where}.{key}: {err}") from None
            counts[key], digests[key] = got["count"], got["digest"]
    if "heldout" in counts and same_images(entry["train"], entry["heldout"]):
        raise ConfigError(f"config error at {where}.heldout: {entry['heldout']} holds the same "
                          f"images as train {entry['train']}; held-out images must be images "
                          f"the model never saw (or leave heldout out to audit without a null)")
    for key in keys:
        if key != "heldout" and counts[key] < 2:
            raise ConfigError(f"config error at {where}.{key}: {counts[key]} image; expected "
                              f"at least 2")
    scoring = config.get("scoring") or {}
    need = 2 * int(scoring.get("min_tail", 5))
    if "heldout" in counts and counts["heldout"] < need and not scoring.get("fixed_bands"):
        raise ConfigError(f"config error at {where}.heldout: {counts['heldout']} images cannot "
                          f"calibrate the similarity bands; expected at least {need} (2 x "
                          f"scoring.min_tail), or set scoring.fixed_bands, or leave heldout out "
                          f"to audit without a null")
    if "heldout" not in counts and counts["train"] < need:
        raise ConfigError(f"config error at {where}.heldout: none given, so the similarity bands "
                          f"come from the {counts['train']} training images themselves; expected "
                          f"at least {need} of them (2 x scoring.min_tail), or held-out images")
    return counts, digests


def generated_info(config: dict, name: str) -> dict:
    """Check one ``generated`` entry before any job: its generated, training and held-out
    images, brought to one size (``size``, default the generated images' own) and channel
    count (``channels``, default 1). Returns what the rules need."""
    entry = config["generated"][name]
    where = f"generated.{name}"
    try:
        size = int(entry.get("size") or image_size(entry["images"]))
    except DataError as err:
        raise ConfigError(f"config error at {where}.images: {err}") from None
    if not 4 <= size <= 1024:  # the schema's bounds for an explicit size
        raise ConfigError(f"config error at {where}.images: its images are {size} px on the "
                          f"shorter side; expected 4 to 1024 (or set {where}.size)")
    counts, digests = entry_images(config, entry, where, size, ("images", "train", "heldout"))
    return {"size": size, "channels": int(entry.get("channels", 1)), "images": counts,
            "images_digest": digests}


MONAI_KEYS = ("config", "scale_factor", "intensity_range", "latent_shape")


def monai_entry(entry: dict) -> dict:
    """The keys of a ``models`` entry that describe a MONAI bundle (params of the import)."""
    return {k: entry[k] for k in MONAI_KEYS if k in entry}


def model_info(config: dict, name: str) -> dict:
    """Check one ``models`` entry before any job: the folder (JSON only, never unpickling),
    the scheduler, the images and the boundary-search choices. Returns what the rules need."""
    entry = config["models"][name]
    where = f"models.{name}"
    monai = is_bundle(entry["folder"], entry)
    try:
        if monai:  # a MONAI bundle-like folder: definitions read without evaluating code
            info = inspect_bundle(entry["folder"], monai_entry(entry))
            diffusion = diffusion_of(info["scheduler"], info["scheduler_class"],
                                     str(info["config_path"]))
        else:
            info = inspect_model_folder(entry["folder"])
            diffusion = diffusion_from_scheduler(info["scheduler"], str(info["scheduler_path"]),
                                                 latent=info["autoencoder"] is not None)
    except ModelFolderError as err:
        raise ConfigError(f"config error at {where}.folder: {err}") from None
    stray = [k for k in MONAI_KEYS if k in entry and not monai]
    if stray:
        raise ConfigError(f"config error at {where}.{stray[0]}: set for a diffusers folder; "
                          f"expected only with a MONAI bundle folder")
    ae, unet = info["autoencoder"], info["unet"]
    size = ae["latent_size"] if monai else latent_size(unet)
    channels = int(unet.get("in_channels", 3))
    if ae is not None:  # the images are the decoder's: its size and channels
        size, channels = size * ae["factor"], ae["channels"]
    elif channels not in (1, 3) or unet.get("out_channels", channels) != channels:
        raise ConfigError(f"config error at {where}.folder: a U-Net with {channels} input and "
                          f"{unet.get('out_channels')} output channels; expected 1 or 3 of each "
                          f"(grey or RGB images, ε or v prediction)")
    counts, digests = entry_images(config, entry, where, size, ("train", "heldout"))
    chosen = entry.get("boundary_images") or []
    if any(isinstance(c, str) for c in chosen) and not entry["train"].endswith(".npz"):
        root = Path(entry["train"]).expanduser()
        known = {p.relative_to(root).as_posix() for p in list_image_files(root)}
        missing = [c for c in chosen if isinstance(c, str) and c not in known]
        if missing:
            raise ConfigError(f"config error at {where}.boundary_images: {missing} not found "
                              f"among the {len(known)} images of {root} (names are paths "
                              f"relative to that folder)")
    bad = [c for c in chosen if isinstance(c, int) and c >= counts["train"]]
    if bad or (chosen and entry["train"].endswith(".npz") and
               any(isinstance(c, str) for c in chosen)):
        raise ConfigError(f"config error at {where}.boundary_images: {chosen}; expected indices "
                          f"below {counts['train']} (or file names of an image folder)")
    sample = {**config["sample"], **(entry.get("sample") or {})}
    if sample["steps"] > diffusion["num_train_timesteps"]:
        raise ConfigError(f"config error at {where}.sample.steps: {sample['steps']} exceeds the "
                          f"model's {diffusion['num_train_timesteps']} diffusion steps")
    side = config.get("side")
    if side and sample["num_samples"] < side["clusters"] * side["per_cluster"]:
        raise ConfigError(f"config error at {where}.sample.num_samples: {sample['num_samples']} "
                          f"is below side.clusters x side.per_cluster = "
                          f"{side['clusters'] * side['per_cluster']}")
    if sample["sampler"] == "euler_maruyama":
        raise ConfigError(f"config error at {where}.sample.sampler: euler_maruyama needs a "
                          f"sub-VP model; an imported DDPM model samples with ddpm or ddim")
    m = signal_at_start(diffusion, sample["sampler"], sample["steps"])
    if m > MAX_SIGNAL and not entry.get("allow_signal_at_start"):
        raise ConfigError(f"config error at {where}.folder: {info['scheduler_path']}: "
                          f"{_process_words(diffusion)} keeps {m:.2f} of the image where "
                          f"sampling starts ({_start_words(diffusion, sample)}); expected at "
                          f"most {MAX_SIGNAL}, else samples drawn from noise are noise, not "
                          f"data; set allow_signal_at_start: true to sample it anyway (the "
                          f"report says so)")
    return {"size": int(size), "channels": channels, "diffusion": diffusion,
            "latent": ae is not None, "kind": "monai" if monai else "diffusers",
            "monai": monai_entry(entry) if monai else {},
            "images": counts, "images_digest": digests, "sample": sample,
            # every file the import reads: inputs of import_model, so an edit re-runs it, and
            # their contents' digest, a param of it, so an older file put in their place does
            "files": info["files"], "files_digest": files_digest(info["files"])}
