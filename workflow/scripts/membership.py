from diffmem.stages.membership import membership_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        membership_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            unused_npz=sm.input.unused,
            duplicates_npz=sm.input.duplicates,
            cfg=sm.params.membership,
            scoring=sm.params.scoring,
            device=sm.params.device,
            bf16=sm.params.bf16,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
            out_scores=sm.output.scores,
        )
    )
