rule prepare_data:
    output:
        train=RUN + "/data/train.npz",
        target=RUN + "/data/target.npz",
        target_json=RUN + "/data/target.json",
        heldout=RUN + "/data/heldout.npz",
        figure=report(
            RUN + "/data/target.png",
            caption="../workflow/report/target.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "fingerprinted target"},
        ),
    log:
        LOG + "/prepare_data.log",
    params:
        # data_root and download are read from the config inside the script on purpose: they
        # say where the file is, not what it holds, so moving the data re-runs nothing.
        image_size=config["image_size"],
        to_rgb=config.get("to_rgb", False),
        saf=config["saf"],
    script:
        "../workflow/scripts/prepare_data.py"
