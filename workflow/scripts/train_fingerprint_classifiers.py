from diffmem.stages.fingerprint import train_fingerprint_classifiers_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    train_fingerprint_classifiers_stage(
        train_npz=sm.input.train,
        target_npz=sm.input.target,
        target_json=sm.input.target_json,
        heldout_npz=sm.input.heldout,
        cfg=sm.params.classifiers,
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
        out_saf=sm.output.c_saf,
        out_id=sm.output.c_id,
        out_meta=sm.output.metrics,
    )
