rule prepare_data:
    output:
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
        unused="results/{dataset}/n{size}/seed{seed}/data/unused_train.npz",
        figure=report(
            "results/{dataset}/n{size}/seed{seed}/data/target.png",
            caption="../workflow/report/target.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "fingerprinted target"},
        ),
    log:
        "logs/{dataset}/n{size}/seed{seed}/prepare_data.log",
    conda:
        CONDA_ENV
    params:
        # data_root and download are read from the config inside the script on purpose: they
        # say where the file is, not what it holds, so moving the data re-runs nothing.
        image_size=config["image_size"],
        to_rgb=config.get("to_rgb", False),
        saf=config["saf"],
        # the target's uniqueness filter matches as the scores do (recorded in target.json)
        matching=config.get("matching") or {},
        # your own images: the entry (folders or .npz) and what they hold (a digest of every
        # file's path, size and modification time) are the data, so changing either re-runs
        entry=lambda wc: dataset_entry(config, wc.dataset),
        images=lambda wc: dataset_images(config, wc.dataset),
    script:
        "../workflow/scripts/prepare_data.py"


rule near_duplicates:
    """Groups of near-identical images over a dataset's train and held-out splits (clean
    images), once per dataset: quadratic in the number of images, hence GPU-tagged."""
    output:
        npz="results/{dataset}/near_duplicates.npz",
        summary="results/{dataset}/near_duplicates.json",
        figure=report(
            "results/{dataset}/near_duplicates.png",
            caption="../workflow/report/near_duplicates.rst",
            category="{dataset}",
            labels={"figure": "near-duplicates"},
        ),
    log:
        "logs/{dataset}/near_duplicates.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        image_size=config["image_size"],
        duplicates=config["duplicates"],
        matching=config.get("matching") or {},
        entry=lambda wc: dataset_entry(config, wc.dataset),
        images=lambda wc: dataset_images(config, wc.dataset),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/near_duplicates.py"
