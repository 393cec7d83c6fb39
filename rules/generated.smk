# A generator's images audited without its model (config "generated"): the copy question beside
# the null of unseen images, from the images alone. results/generated/{name}/.


rule import_generated:
    """The generated, training and held-out images, brought to one size and channel count."""
    output:
        generated="results/generated/{name}/data/generated.npz",
        train="results/generated/{name}/data/train.npz",
        heldout="results/generated/{name}/data/heldout.npz",
        unused="results/generated/{name}/data/unused_train.npz",
        summary="results/generated/{name}/data/images.json",
    log:
        "logs/generated/{name}/import_generated.log",
    conda:
        CONDA_ENV
    params:
        # the images and what they hold (a digest of every file's path, size and mtime)
        images=lambda wc: GENERATED[wc.name]["images_digest"],
        generated=lambda wc: config["generated"][wc.name]["images"],
        train=lambda wc: config["generated"][wc.name]["train"],
        heldout=lambda wc: config["generated"][wc.name].get("heldout"),
        resize=lambda wc: config["generated"][wc.name].get("resize", True),
        size=lambda wc: GENERATED[wc.name]["size"],
        channels=lambda wc: GENERATED[wc.name]["channels"],
    script:
        "../workflow/scripts/import_generated.py"


rule generated_duplicates:
    """Near-duplicate groups over the generator's training and held-out images."""
    input:
        train="results/generated/{name}/data/train.npz",
        heldout="results/generated/{name}/data/heldout.npz",
    output:
        npz="results/generated/{name}/near_duplicates.npz",
        summary="results/generated/{name}/near_duplicates.json",
        figure=report(
            "results/generated/{name}/near_duplicates.png",
            caption="../workflow/report/near_duplicates.rst",
            category="generated/{name}",
            labels={"figure": "near-duplicates"},
        ),
    log:
        "logs/generated/{name}/near_duplicates.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        duplicates=config["duplicates"],
        matching=config.get("matching") or {},
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/generated_duplicates.py"


rule generated_scores:
    """Do these images copy training images? Beside the null, with the detectable rate."""
    input:
        unpack(generated_copy_embedding),
        generated="results/generated/{name}/data/generated.npz",
        train="results/generated/{name}/data/train.npz",
        heldout="results/generated/{name}/data/heldout.npz",
        unused="results/generated/{name}/data/unused_train.npz",
        duplicates="results/generated/{name}/near_duplicates.npz",
    output:
        csv=report(
            "results/generated/{name}/scores/metrics.csv",
            caption="../workflow/report/side_metrics.rst",
            category="generated/{name}",
            labels={"table": "memorization scores vs their null"},
        ),
        summary="results/generated/{name}/scores/metrics.json",
        nearest="results/generated/{name}/scores/nearest.csv",
        pairs=report(
            "results/generated/{name}/scores/pairs.png",
            caption="../workflow/report/side_pairs.rst",
            category="generated/{name}",
            labels={"figure": "top pairs"},
        ),
        hist=report(
            "results/generated/{name}/scores/nn_similarity.png",
            caption="../workflow/report/side_hist.rst",
            category="generated/{name}",
            labels={"figure": "nearest-neighbour similarity"},
        ),
    log:
        "logs/generated/{name}/generated_scores.log",
    conda:
        CONDA_ENV
    params:
        scoring={**config["scoring"], "matching": config.get("matching") or {}},
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/generated_scores.py"
