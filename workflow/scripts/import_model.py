from diffmem.stages.models import import_model_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        import_model_stage(
            folder=sm.params.folder,
            out_weights=sm.output.weights,
            out_config=sm.output.config,
            monai=sm.params.monai,
        )
    )
