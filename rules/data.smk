rule prepare_data:
    output:
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
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
    script:
        "../workflow/scripts/prepare_data.py"
