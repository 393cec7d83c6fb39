import os
from pathlib import Path

from snakemake.utils import min_version

from diffmem.errors import ConfigError
from diffmem.stages.config import (
    all_runs,
    check_config,
    copies_settings,
    copy_key,
    dataset_entry,
    dataset_images,
    dataset_names,
    generated_info,
    model_info,
    run_dir,
    run_parts,
    run_seed,
    runs,
)

min_version("9.0")


configfile: "config.yaml"


try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RUNS = runs(config)  # (dataset, N, seed): models the workflow trains
# imported models, each checked once here (folder, scheduler, images) before any job
MODELS = {name: model_info(config, name) for name in config.get("models") or {}}
# generated image sets, audited without a model (checked once here too)
GENERATED = {
    name: generated_info(config, name) for name in config.get("generated") or {}
}
# the copy embedding of every set of training images (the learned copy eye), by key: a trained
# run's own, and one per distinct training images of the entries (entries that share them share
# it); the key's training images and their near-duplicate groups
COPIES = copies_settings(config)
COPY_KEYS = {
    **{f"results/{d}/n{n}/seed{s}": f"{d}-n{n}-seed{s}" for d, n, s in RUNS},
    **{
        f"results/models/{name}": copy_key(config, "models", name, info)
        for name, info in MODELS.items()
    },
    **{
        f"results/generated/{name}": copy_key(config, "generated", name, info)
        for name, info in GENERATED.items()
    },
}
COPY_OWNERS = {}
for _folder, _key in COPY_KEYS.items():
    _dups = (
        f"results/{_folder.split('/')[1]}/near_duplicates.npz"
        if _folder.count("/") == 3
        else f"{_folder}/near_duplicates.npz"
    )
    COPY_OWNERS.setdefault(_key, (f"{_folder}/data/train.npz", _dups))
# the known-truth study of the copy verdict, on one dataset's images
STUDY = [config["study"]["dataset"]] if config.get("study") else []
RUN_DIRS = [run_dir(r) for r in all_runs(config)]  # every run, trained or imported
DATASETS = dataset_names(config)
# the fingerprint audit's summary tables exist when the workflow trains a model
FINGERPRINT_TABLES = (
    [
        "results/fingerprint/table1_reproductions.md",
        "results/fingerprint/table2_datasets.md",
        "results/fingerprint/reproductions_rho_vs_n.png",
    ]
    if RUNS
    else []
)
# every question against N, when the config trains more than one size of a dataset
TREND = (
    ["results/trend/trend.md", "results/trend/trend.png"]
    if any(len({n for d2, n, _ in RUNS if d2 == d}) > 1 for d, _, _ in RUNS)
    else []
)
# guidance scales as path wildcards ("1", "3", "2.5"): one side_extract job per scale
SIDE_SCALES = [f"{float(s):g}" for s in config["side"]["scales"]]
# Rule scripts import the diffmem library from src/: put it on PYTHONPATH for every job, so
# jobs find it in a conda environment (--use-conda) or on a cluster node without an install.
_paths = [str(Path(workflow.basedir) / "src"), os.getenv("PYTHONPATH")]
os.putenv("PYTHONPATH", os.pathsep.join(p for p in _paths if p))
CONDA_ENV = "../workflow/envs/diffmem.yaml"


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9_-]*",
    name="[A-Za-z][A-Za-z0-9_-]*",
    # a run's folder: a trained model of a dataset, or an imported model
    run=r"[A-Za-z][A-Za-z0-9_-]*/n\d+/seed\d+|models/[A-Za-z][A-Za-z0-9_-]*",
    size=r"\d+",
    seed=r"\d+",
    scale=r"[0-9]+(\.[0-9]+)?",
    key=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def expand_runs(pattern):
    """``pattern`` (with {dataset}, {size}, {seed}) for every run of the config."""
    return [pattern.format(dataset=d, size=n, seed=s) for d, n, s in RUNS]


def expand_all(pattern):
    """``pattern`` (with {run}) for every run, trained and imported."""
    return [pattern.format(run=r) for r in RUN_DIRS]


def all_run_outputs():
    return [
        *expand_runs("results/{dataset}/n{size}/seed{seed}/audit/reproductions.json"),
        *expand_runs("results/{dataset}/n{size}/seed{seed}/audit/detectors.json"),
        *expand_all("results/{run}/audit/boundary.json"),
        *expand_all("results/{run}/side/metrics.json"),
        *expand_all("results/{run}/audit/membership.json"),
        *expand_all("results/{run}/audit/exposure.json"),
        *expand("results/generated/{name}/scores/metrics.json", name=GENERATED),
        *expand("results/study/{dataset}/table.md", dataset=STUDY),
        "results/verdict.csv",
    ]


def model_name(wildcards):
    return run_parts(wildcards.run)[1]


def copy_embedding_of(folder):
    """The copy embedding (weights, JSON) of a run or entry folder (``results/...``)."""
    key = COPY_KEYS[folder]
    return {
        "embedding": f"results/copies/{key}/embedding.safetensors",
        "embedding_json": f"results/copies/{key}/embedding.json",
    }


def run_copy_embedding(wildcards):
    return copy_embedding_of(f"results/{wildcards.run}")


def generated_copy_embedding(wildcards):
    return copy_embedding_of(f"results/generated/{wildcards.name}")


def duplicates_of(wildcards):
    """The near-duplicate groups a run's null is built with: its dataset's, or an imported
    model's own (over its training and held-out images)."""
    dataset, name = run_parts(wildcards.run)
    if name is not None:
        return f"results/models/{name}/near_duplicates.npz"
    return f"results/{dataset}/near_duplicates.npz"


def latent_model(wildcards) -> bool:
    """Whether the run is an imported latent model."""
    name = run_parts(wildcards.run)[1]
    return name is not None and MODELS[name]["latent"]


def null_images_of(wildcards):
    """The held-out images the copy question's null is made of: a latent model's through its
    autoencoder (D(E(x)), the decoder-aware null), else the raw ones."""
    if latent_model(wildcards):
        return f"results/{wildcards.run}/data/heldout_decoded.npz"
    return f"results/{wildcards.run}/data/heldout.npz"


def latent_null_extras(wildcards):
    """A latent model's raw held-out images (the raw null, reported beside) and autoencoder
    test; nothing for a pixel model."""
    if not latent_model(wildcards):
        return {}
    return {
        "raw_heldout": f"results/{wildcards.run}/data/heldout.npz",
        "autoencoder": f"results/{wildcards.run}/audit/autoencoder.json",
    }


def target_of(wildcards):
    """A trained run's target.json (the fingerprinted image's position), none for an imported
    model."""
    dataset, name = run_parts(wildcards.run)
    return [] if name is not None else f"results/{wildcards.run}/data/target.json"


def sample_settings(wildcards):
    """The sample section, with an imported model's own overrides."""
    name = model_name(wildcards)
    return MODELS[name]["sample"] if name is not None else config["sample"]


def matching_settings(wildcards):
    """The matching section; an imported model trained with random flips always matches
    mirrored training images."""
    name = (
        model_name(wildcards)
        if hasattr(wildcards, "run")
        else getattr(wildcards, "name", None)
    )
    flip = name is not None and config["models"][name].get("random_flip", False)
    matching = dict(config.get("matching") or {})
    return {**matching, "mirror": bool(matching.get("mirror", True) or flip)}


def scoring_settings(wildcards):
    """The scoring section with the run's matching."""
    return {**config["scoring"], "matching": matching_settings(wildcards)}


def inception_weights(wildcards):
    """The FID Inception file is an input when configured, so replacing it re-runs FID."""
    path = (config.get("fid") or {}).get("inception_weights")
    return os.path.expanduser(path) if path else []


def seeded(offset):
    """A job's seed: its run's seed (an imported model's ``seed``) x 1000 + the stage's offset,
    a function of the wildcards or a number. A param, so a new seed re-runs the job."""
    return lambda wc: run_seed(wc, config) * 1000 + int(
        offset(wc) if callable(offset) else offset
    )


def gpu_resources():
    res = config.get("resources", {})
    return dict(
        gpu=1,
        runtime=res.get("gpu_runtime_min", 120),
        mem_mb=res.get("gpu_mem_mb", 32000),
    )
