rule surrogate_labels:
    input:
        samples="results/{run}/samples/samples.npz",
    output:
        labels="results/{run}/side/labels.npz",
        summary="results/{run}/side/labels.json",
        grid=report(
            "results/{run}/side/clusters.png",
            caption="../workflow/report/side_clusters.rst",
            category="{run}",
            labels={"figure": "SIDE clusters"},
        ),
    log:
        "logs/{run}/surrogate_labels.log",
    conda:
        CONDA_ENV
    params:
        clusters=config["side"]["clusters"],
        pca_dims=config["side"].get("pca_dims", 32),
        seed=lambda wc: run_seed(wc, config),
    script:
        "../workflow/scripts/surrogate_labels.py"


rule train_surrogate_classifier:
    input:
        samples="results/{run}/samples/samples.npz",
        labels="results/{run}/side/labels.npz",
        config="results/{run}/model/model_config.json",
    output:
        weights="results/{run}/side/classifier.safetensors",
        metrics="results/{run}/side/classifier.json",
    log:
        "logs/{run}/train_surrogate_classifier.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        classifier=config["side"]["classifier"],
        device=config.get("device", "auto"),
        seed=lambda wc: run_seed(wc, config),
    script:
        "../workflow/scripts/train_surrogate_classifier.py"


rule side_extract:
    input:
        weights="results/{run}/model/model.safetensors",
        config="results/{run}/model/model_config.json",
        clf="results/{run}/side/classifier.safetensors",
        clf_json="results/{run}/side/classifier.json",
    output:
        samples="results/{run}/side/extract_s{scale}.npz",
        grid=report(
            "results/{run}/side/extract_s{scale}.png",
            caption="../workflow/report/side_extract.rst",
            category="{run}",
            labels={"figure": "SIDE samples, scale {scale}"},
        ),
    log:
        "logs/{run}/side_extract_s{scale}.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        per_cluster=config["side"]["per_cluster"],
        batch_size=config["side"].get("batch_size", 500),
        seed=seeded(config["side"].get("seed", 3)),
        sampler=lambda wc: sample_settings(wc)["sampler"],
        steps=lambda wc: sample_settings(wc)["steps"],
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/side_extract.py"
