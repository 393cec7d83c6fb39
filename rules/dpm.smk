rule train_dpm:
    input:
        train=RUN + "/data/train.npz",
    output:
        weights=RUN + "/model/model.safetensors",
        config=RUN + "/model/model_config.json",
        loss_csv=RUN + "/model/loss.csv",
        loss_png=report(
            RUN + "/model/loss.png",
            caption="../workflow/report/loss.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "training loss"},
        ),
    log:
        LOG + "/train_dpm.log",
    params:
        model=config["model"],
        diffusion=config["diffusion"],
        train=config["train"],
        device=config.get("device", "auto"),
        # checkpoints live outside the declared outputs so a failed job keeps them
        checkpoint_dir=RUN + "/checkpoints",
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/train_dpm.py"


rule sample:
    input:
        weights=RUN + "/model/model.safetensors",
        config=RUN + "/model/model_config.json",
    output:
        samples=RUN + "/samples/samples.npz",
        info=RUN + "/samples/samples.json",
        grid=report(
            RUN + "/samples/grid.png",
            caption="../workflow/report/samples.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "samples"},
        ),
    log:
        LOG + "/sample.log",
    params:
        sample=config["sample"],
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/sample.py"
