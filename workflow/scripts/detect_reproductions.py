from diffmem.stages.fingerprint import detect_reproductions_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        detect_reproductions_stage(
            samples_npz=sm.input.samples,
            target_npz=sm.input.target,
            target_json=sm.input.target_json,
            heldout_npz=sm.input.heldout,
            c_saf=sm.input.c_saf,
            c_id=sm.input.c_id,
            classifiers_json=sm.input.metrics,
            threshold=sm.params.threshold,
            device=sm.params.device,
            out_csv=sm.output.csv,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
