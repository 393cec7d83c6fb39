from diffmem.stages.quality import sample_quality_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
inception = sm.input.inception  # one path, or an empty list when FID has no weights
with logged(sm.log[0]):
    print(
        sample_quality_stage(
            samples_npz=sm.input.samples,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            cfg=dict(sm.params.fid, inception_weights=str(inception) if inception else None),
            device=sm.params.device,
            out_json=sm.output.json,
        )
    )
