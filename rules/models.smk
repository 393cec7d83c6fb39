# Imported models (config "models"): a diffusers model you already have, audited on its own
# training and held-out images. These rules write the run folder results/models/{name}/ in
# the layout of a trained run, so sampling, SIDE, the memorization scores and membership
# inference (rules with a {run} wildcard) run on it unchanged.


rule import_model:
    """The model folder as the workflow's own files: safetensors weights, loaded strictly, and a
    JSON config with the scheduler mapped onto the noise process (nothing is unpickled). Every
    file it reads is an input: editing one re-runs the import and what follows.
    """
    input:
        files=lambda wc: MODELS[wc.name]["files"],
    output:
        weights="results/models/{name}/model/model.safetensors",
        config="results/models/{name}/model/model_config.json",
    log:
        "logs/models/{name}/import_model.log",
    conda:
        CONDA_ENV
    params:
        folder=lambda wc: config["models"][wc.name]["folder"],
        # a MONAI bundle's scale factor, intensity range, config and latent shape
        monai=lambda wc: MODELS[wc.name]["monai"],
        # the contents of those files: an older file copied over one (its modification time
        # older than the outputs) or a re-pointed folder link re-runs the import too
        digest=lambda wc: MODELS[wc.name]["files_digest"],
    script:
        "../workflow/scripts/import_model.py"


rule import_images:
    """The model's training and held-out images, preprocessed as it was trained."""
    output:
        train="results/models/{name}/data/train.npz",
        heldout="results/models/{name}/data/heldout.npz",
        unused="results/models/{name}/data/unused_train.npz",
        summary="results/models/{name}/data/images.json",
    log:
        "logs/models/{name}/import_images.log",
    conda:
        CONDA_ENV
    params:
        # the entry's images are the data: changing where they are, or any image there
        # (a digest of every file's path, size and modification time), re-reads them
        images=lambda wc: MODELS[wc.name]["images_digest"],
        train=lambda wc: config["models"][wc.name]["train"],
        heldout=lambda wc: config["models"][wc.name].get("heldout"),
        resize=lambda wc: config["models"][wc.name].get("resize", True),
        size=lambda wc: MODELS[wc.name]["size"],
        channels=lambda wc: MODELS[wc.name]["channels"],
    script:
        "../workflow/scripts/import_images.py"


rule model_duplicates:
    """Near-duplicate groups over the model's training and held-out images."""
    input:
        train="results/models/{name}/data/train.npz",
        heldout="results/models/{name}/data/heldout.npz",
    output:
        npz="results/models/{name}/near_duplicates.npz",
        summary="results/models/{name}/near_duplicates.json",
        figure=report(
            "results/models/{name}/near_duplicates.png",
            caption="../workflow/report/near_duplicates.rst",
            category="models/{name}",
            labels={"figure": "near-duplicates"},
        ),
    log:
        "logs/models/{name}/near_duplicates.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        duplicates=config["duplicates"],
        matching=matching_settings,
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/model_duplicates.py"


rule boundary_search_images:
    """The boundary search from chosen training images and unseen controls, no fingerprint."""
    input:
        weights="results/models/{name}/model/model.safetensors",
        config="results/models/{name}/model/model_config.json",
        train="results/models/{name}/data/train.npz",
        heldout="results/models/{name}/data/heldout.npz",
        samples="results/models/{name}/samples/samples.npz",
        duplicates="results/models/{name}/near_duplicates.npz",
    output:
        csv="results/models/{name}/audit/boundary.csv",
        summary="results/models/{name}/audit/boundary.json",
        figure=report(
            "results/models/{name}/audit/boundary.png",
            caption="../workflow/report/boundary.rst",
            category="models/{name}",
            labels={"figure": "boundary search"},
        ),
    log:
        "logs/models/{name}/boundary_search.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        boundary=config["boundary"],
        chosen=lambda wc: config["models"][wc.name].get("boundary_images", []),
        how_many=lambda wc: config["models"][wc.name].get("boundary_count", 1),
        mirror=lambda wc: config["models"][wc.name].get("random_flip", False),
        matching=matching_settings,
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
        seed=seeded(config["boundary"].get("seed", 2)),
    script:
        "../workflow/scripts/boundary_search_images.py"


rule autoencoder_audit:
    """A latent model's decoder-aware null (its held-out images through the autoencoder,
    D(E(x))) and whether the autoencoder itself reconstructs training images better than
    unseen ones."""
    input:
        weights="results/models/{name}/model/model.safetensors",
        config="results/models/{name}/model/model_config.json",
        train="results/models/{name}/data/train.npz",
        heldout="results/models/{name}/data/heldout.npz",
        unused="results/models/{name}/data/unused_train.npz",
        duplicates="results/models/{name}/near_duplicates.npz",
    output:
        heldout="results/models/{name}/data/heldout_decoded.npz",
        summary="results/models/{name}/audit/autoencoder.json",
    log:
        "logs/models/{name}/autoencoder_audit.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        scoring={k: config["scoring"].get(k) for k in ("null_max_images", "seed")},
        membership={
            k: v for k, v in config["membership"].items() if k in ("margin", "seed")
        },
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/autoencoder_audit.py"
