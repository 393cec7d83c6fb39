rule train_dpm:
    input:
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
    output:
        weights="results/{dataset}/n{size}/seed{seed}/model/model.safetensors",
        config="results/{dataset}/n{size}/seed{seed}/model/model_config.json",
        loss_csv="results/{dataset}/n{size}/seed{seed}/model/loss.csv",
        loss_png=report(
            "results/{dataset}/n{size}/seed{seed}/model/loss.png",
            caption="../workflow/report/loss.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "training loss"},
        ),
    log:
        "logs/{dataset}/n{size}/seed{seed}/train_dpm.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        model=config["model"],
        diffusion=config["diffusion"],
        train=config["train"],
        device=config.get("device", "auto"),
        # checkpoints live outside the declared outputs so a failed job keeps them
        checkpoint_dir="results/{dataset}/n{size}/seed{seed}/checkpoints",
    script:
        "../workflow/scripts/train_dpm.py"


rule sample:
    input:
        weights="results/{run}/model/model.safetensors",
        config="results/{run}/model/model_config.json",
    output:
        samples="results/{run}/samples/samples.npz",
        info="results/{run}/samples/samples.json",
        grid=report(
            "results/{run}/samples/grid.png",
            caption="../workflow/report/samples.rst",
            category="{run}",
            labels={"figure": "samples"},
        ),
    log:
        "logs/{run}/sample.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        sample=sample_settings,
        device=config.get("device", "auto"),
        seed=seeded(lambda wc: sample_settings(wc).get("seed", 1)),
    script:
        "../workflow/scripts/sample.py"
