# Membership inference: can training images be told from unseen ones?


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
