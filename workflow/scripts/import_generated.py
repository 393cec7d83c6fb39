from diffmem.stages.generated import import_generated_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        import_generated_stage(
            images=sm.params.generated,
            train=sm.params.train,
            heldout=sm.params.heldout,
            size=sm.params.size,
            channels=sm.params.channels,
            resize=sm.params.resize,
            out_generated=sm.output.generated,
            out_train=sm.output.train,
            out_heldout=sm.output.heldout,
            out_unused=sm.output.unused,
            out_json=sm.output.summary,
        )
    )
