from diffmem.stages.fingerprint import detector_check_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        detector_check_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            target_npz=sm.input.target,
            target_json=sm.input.target_json,
            heldout_npz=sm.input.heldout,
            samples_npz=sm.input.samples,
            c_saf=sm.input.c_saf,
            c_id=sm.input.c_id,
            classifiers_json=sm.input.metrics,
            threshold=sm.params.threshold,
            boundary=sm.params.boundary,
            cfg=sm.params.detectors,
            seed=sm.params.seed,
            device=sm.params.device,
            bf16=sm.params.bf16,
            out_json=sm.output.summary,
        )
    )
