rule surrogate_labels:
    input:
        samples=RUN + "/samples/samples.npz",
    output:
        labels=RUN + "/side/labels.npz",
        summary=RUN + "/side/labels.json",
        grid=report(
            RUN + "/side/clusters.png",
            caption="../workflow/report/side_clusters.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "SIDE clusters"},
        ),
    log:
        LOG + "/surrogate_labels.log",
    params:
        clusters=config["side"]["clusters"],
        pca_dims=config["side"].get("pca_dims", 32),
    script:
        "../workflow/scripts/surrogate_labels.py"


rule train_surrogate_classifier:
    input:
        samples=RUN + "/samples/samples.npz",
        labels=RUN + "/side/labels.npz",
        config=RUN + "/model/model_config.json",
    output:
        weights=RUN + "/side/classifier.safetensors",
        metrics=RUN + "/side/classifier.json",
    log:
        LOG + "/train_surrogate_classifier.log",
    params:
        classifier=config["side"]["classifier"],
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/train_surrogate_classifier.py"


rule side_extract:
    input:
        weights=RUN + "/model/model.safetensors",
        config=RUN + "/model/model_config.json",
        clf=RUN + "/side/classifier.safetensors",
        clf_json=RUN + "/side/classifier.json",
    output:
        samples=RUN + "/side/extract_s{scale}.npz",
        grid=RUN + "/side/extract_s{scale}.png",
    log:
        LOG + "/side_extract_s{scale}.log",
    params:
        per_cluster=config["side"]["per_cluster"],
        batch_size=config["side"].get("batch_size", 500),
        seed=config["side"].get("seed", 3),
        sampler=config["sample"]["sampler"],
        steps=config["sample"]["steps"],
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/side_extract.py"


rule extraction_metrics:
    input:
        train=RUN + "/data/train.npz",
        baseline=RUN + "/samples/samples.npz",
        side=expand(RUN + "/side/extract_s{scale}.npz", scale=SIDE_SCALES, allow_missing=True),
    output:
        csv=RUN + "/side/metrics.csv",
        summary=RUN + "/side/metrics.json",
        pairs=report(
            RUN + "/side/pairs.png",
            caption="../workflow/report/side_pairs.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "SIDE extracted pairs"},
        ),
        hist=report(
            RUN + "/side/nn_similarity.png",
            caption="../workflow/report/side_hist.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "nearest-neighbour similarity"},
        ),
        scales=report(
            RUN + "/side/ams_ums_vs_scale.png",
            caption="../workflow/report/side_scales.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "AMS/UMS vs guidance scale"},
        ),
    log:
        LOG + "/extraction_metrics.log",
    params:
        scales=SIDE_SCALES,
        thresholds=config["side"]["thresholds"],
        carlini=config["side"].get("carlini", {"alpha": 0.5, "n": 50, "delta": 0.333}),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/extraction_metrics.py"
