# Membership inference: can training images be told from unseen ones? And which training
# images are most exposed, by membership and by copying together?


rule membership:
    """The loss attack, SimA and PIA: chosen on one half, scored on the other."""
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
        scores="results/{run}/audit/membership_scores.npz",
    log:
        "logs/{run}/membership.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        # all but exposure_q, which only the exposure reads (so it re-runs nothing upstream)
        membership={k: v for k, v in config["membership"].items() if k != "exposure_q"},
        # the null's composition (its size cap and seed) comes from the scoring section
        scoring={k: config["scoring"].get(k) for k in ("null_max_images", "seed")},
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/membership.py"


rule exposure:
    """Every training image: its membership p-value, the samples that copy it, its walk-back."""
    input:
        train="results/{run}/data/train.npz",
        scores="results/{run}/audit/membership_scores.npz",
        membership="results/{run}/audit/membership.json",
        nearest="results/{run}/side/nearest.csv",
        samples="results/{run}/samples/samples.npz",
        boundary="results/{run}/audit/boundary.json",
        target=target_of,
    output:
        csv="results/{run}/audit/exposure.csv",
        summary="results/{run}/audit/exposure.json",
        figure=report(
            "results/{run}/audit/exposure.png",
            caption="../workflow/report/exposure.rst",
            category="{run}",
            labels={"figure": "most exposed training images"},
        ),
    log:
        "logs/{run}/exposure.log",
    conda:
        CONDA_ENV
    params:
        q=config["membership"].get("exposure_q", 0.1),
    script:
        "../workflow/scripts/exposure.py"
