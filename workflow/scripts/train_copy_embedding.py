from diffmem.stages.copies import train_copy_embedding_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    meta = train_copy_embedding_stage(
        train_npz=sm.input.train,
        duplicates_npz=sm.input.duplicates or None,
        cfg=sm.params.copies,
        seed=sm.params.seed,
        device=sm.params.device,
        out_weights=sm.output.weights,
        out_json=sm.output.summary,
    )
    print({k: meta[k] for k in ("train_images", "twin_threshold")}, meta["training"]["final_loss"])
