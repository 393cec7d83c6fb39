from diffmem.stages.generated import generated_duplicates_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        generated_duplicates_stage(
            name=sm.wildcards.name,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            cfg=sm.params.duplicates,
            matching=sm.params.matching,
            device=sm.params.device,
            out_npz=sm.output.npz,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
