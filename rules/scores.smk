# The memorization scores of every generated set of a run beside the null of unseen real
# images, and the tests behind the verdict's copy and SIDE questions.


rule extraction_metrics:
    input:
        unpack(run_copy_embedding),
        # a latent model's: its raw held-out images and autoencoder test beside the null
        unpack(latent_null_extras),
        train="results/{run}/data/train.npz",
        # the null's images: a latent model's decoder-aware ones, D(E(x))
        heldout=null_images_of,
        unused="results/{run}/data/unused_train.npz",
        duplicates=duplicates_of,
        baseline="results/{run}/samples/samples.npz",
        side=expand(
            "results/{run}/side/extract_s{scale}.npz",
            scale=SIDE_SCALES,
            allow_missing=True,
        ),
    output:
        csv=report(
            "results/{run}/side/metrics.csv",
            caption="../workflow/report/side_metrics.rst",
            category="{run}",
            labels={"table": "memorization scores vs their null"},
        ),
        summary="results/{run}/side/metrics.json",
        # every generated image: its nearest training image, similarity, transform, copy?
        nearest="results/{run}/side/nearest.csv",
        pairs=report(
            "results/{run}/side/pairs.png",
            caption="../workflow/report/side_pairs.rst",
            category="{run}",
            labels={"figure": "SIDE extracted pairs"},
        ),
        hist=report(
            "results/{run}/side/nn_similarity.png",
            caption="../workflow/report/side_hist.rst",
            category="{run}",
            labels={"figure": "nearest-neighbour similarity"},
        ),
        scales=report(
            "results/{run}/side/ams_ums_vs_scale.png",
            caption="../workflow/report/side_scales.rst",
            category="{run}",
            labels={"figure": "AMS/UMS vs guidance scale"},
        ),
    log:
        "logs/{run}/extraction_metrics.log",
    conda:
        CONDA_ENV
    params:
        scales=SIDE_SCALES,
        scoring=scoring_settings,
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/extraction_metrics.py"
