rule report:
    input:
        targets=expand_runs("results/{dataset}/n{size}/seed{seed}/data/target.json"),
        target_pngs=expand_runs("results/{dataset}/n{size}/seed{seed}/data/target.png"),
        models=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/model/model_config.json"
        ),
        loss_pngs=expand_runs("results/{dataset}/n{size}/seed{seed}/model/loss.png"),
        samples=expand_runs("results/{dataset}/n{size}/seed{seed}/samples/samples.json"),
        grids=expand_runs("results/{dataset}/n{size}/seed{seed}/samples/grid.png"),
        classifiers=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json"
        ),
        detections=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/reproductions.json"
        ),
        detection_pngs=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/reproductions.png"
        ),
        boundaries=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/boundary.json"
        ),
        boundary_pngs=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/boundary.png"
        ),
        tables=FINGERPRINT_TABLES,
        side=expand_all("results/{run}/side/metrics.json"),
        membership=expand_all("results/{run}/audit/membership.json"),
        exposure=expand_all("results/{run}/audit/exposure.json"),
        model_images=expand("results/models/{name}/data/images.json", name=MODELS),
        model_samples=expand("results/models/{name}/samples/samples.json", name=MODELS),
        model_grids=expand("results/models/{name}/samples/grid.png", name=MODELS),
        model_configs=expand(
            "results/models/{name}/model/model_config.json", name=MODELS
        ),
        model_boundaries=expand(
            "results/models/{name}/audit/boundary.json", name=MODELS
        ),
        duplicates=[
            *expand("results/{dataset}/near_duplicates.json", dataset=DATASETS),
            *expand("results/models/{name}/near_duplicates.json", name=MODELS),
            *expand("results/generated/{name}/near_duplicates.json", name=GENERATED),
        ],
        generated=[
            *expand("results/generated/{name}/scores/metrics.json", name=GENERATED),
            *expand("results/generated/{name}/data/images.json", name=GENERATED),
            *expand("results/generated/{name}/near_duplicates.json", name=GENERATED),
        ],
        studies=expand("results/study/{dataset}/table.md", dataset=STUDY),
        verdict="results/verdict.md",
        trend=TREND,
    output:
        markdown="results/report.md",
    log:
        "logs/report.log",
    conda:
        CONDA_ENV
    params:
        runs=all_runs(config),
        run_dirs=expand_all("results/{run}"),
        generated={name: f"results/generated/{name}" for name in GENERATED},
        title=config.get("report", {}).get("title", "diffmem memorization audit"),
        settings={
            k: config.get(k) or {}
            for k in (
                "model",
                "diffusion",
                "train",
                "sample",
                "saf",
                "classifiers",
                "boundary",
                "fid",
                "side",
                "scoring",
                "duplicates",
                "membership",
                "matching",
                "study",
            )
        },
    script:
        "../workflow/scripts/report.py"
