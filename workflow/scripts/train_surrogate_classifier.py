from diffmem.config import run_seed
from diffmem.runner import logged
from diffmem.side import classifier_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        classifier_stage(
            samples_npz=sm.input.samples,
            labels_npz=sm.input.labels,
            model_config=sm.input.config,
            cfg=sm.params.classifier,
            seed=run_seed(sm.wildcards, sm.config),
            device=sm.params.device,
            out_weights=sm.output.weights,
            out_json=sm.output.metrics,
        )
    )
