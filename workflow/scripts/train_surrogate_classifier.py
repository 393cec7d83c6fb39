from diffmem.stages.runner import logged
from diffmem.stages.side import train_surrogate_classifier_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        train_surrogate_classifier_stage(
            samples_npz=sm.input.samples,
            labels_npz=sm.input.labels,
            model_config=sm.input.config,
            cfg=sm.params.classifier,
            seed=sm.params.seed,
            device=sm.params.device,
            out_weights=sm.output.weights,
            out_json=sm.output.metrics,
        )
    )
