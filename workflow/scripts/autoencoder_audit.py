from diffmem.stages.models import autoencoder_audit_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        autoencoder_audit_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            unused_npz=sm.input.unused,
            duplicates_npz=sm.input.duplicates,
            scoring=sm.params.scoring,
            membership=sm.params.membership,
            device=sm.params.device,
            out_heldout=sm.output.heldout,
            out_json=sm.output.summary,
        )
    )
