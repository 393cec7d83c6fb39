# Sample quality: FID of a trained run's samples against its training and held-out images.


rule sample_quality:
    input:
        samples="results/{dataset}/n{size}/seed{seed}/samples/samples.npz",
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
        inception=inception_weights,
    output:
        json="results/{dataset}/n{size}/seed{seed}/audit/fid.json",
    log:
        "logs/{dataset}/n{size}/seed{seed}/sample_quality.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        fid=config.get("fid") or {},
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/sample_quality.py"
