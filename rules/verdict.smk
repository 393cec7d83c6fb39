rule membership:
    """Loss-attack membership inference: training images vs the run's unseen images."""
    input:
        weights="results/{run}/model/model.safetensors",
        config="results/{run}/model/model_config.json",
        train="results/{run}/data/train.npz",
        heldout="results/{run}/data/heldout.npz",
        unused="results/{run}/data/unused_train.npz",
        duplicates=duplicates_of,
    output:
        summary="results/{run}/audit/membership.json",
        figure=report(
            "results/{run}/audit/membership.png",
            caption="../workflow/report/membership.rst",
            category="{run}",
            labels={"figure": "membership inference"},
        ),
    log:
        "logs/{run}/membership.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        membership=config["membership"],
        # the null's composition (its size cap and seed) comes from the scoring section
        scoring={k: config["scoring"].get(k) for k in ("null_max_images", "seed")},
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/membership.py"


rule verdict:
    """One row per run and question, answered yes / no / inconclusive from its primary
    statistic (see README, The verdict and its nulls)."""
    input:
        metrics=expand_all("results/{run}/side/metrics.json"),
        membership=expand_all("results/{run}/audit/membership.json"),
        boundaries=expand_all("results/{run}/audit/boundary.json"),
    output:
        csv=report(
            "results/verdict.csv",
            caption="../workflow/report/verdict.rst",
            category="summary",
            labels={"table": "Verdict"},
        ),
        markdown="results/verdict.md",
    log:
        "logs/verdict.log",
    conda:
        CONDA_ENV
    params:
        runs=all_runs(config),
        alpha=config["scoring"].get("alpha", 0.05),
    script:
        "../workflow/scripts/verdict.py"
