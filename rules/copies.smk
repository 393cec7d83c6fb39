# The learned copy eye: an embedding trained self-supervised on one set of training images (and
# nothing else), one per distinct training images (results/copies/{key}/).


rule train_copy_embedding:
    """NT-Xent on the training images' random views (rotation, zoom, translation, flip, crop,
    intensity, blur, resampling, noise, drawn per image); its twin threshold from their own
    views. Only the training images reach it."""
    input:
        train=lambda wc: COPY_OWNERS[wc.key][0],
        duplicates=lambda wc: COPY_OWNERS[wc.key][1],
    output:
        weights="results/copies/{key}/embedding.safetensors",
        summary="results/copies/{key}/embedding.json",
    log:
        "logs/copies/{key}/train_copy_embedding.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        copies=COPIES,
        seed=COPIES["seed"],
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/train_copy_embedding.py"
