from diffmem.stages.fingerprint import boundary_search_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        boundary_search_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            target_npz=sm.input.target,
            target_json=sm.input.target_json,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            unused_npz=sm.input.unused,
            c_saf=sm.input.c_saf,
            c_id=sm.input.c_id,
            classifiers_json=sm.input.metrics,
            threshold=sm.params.threshold,
            cfg=sm.params.boundary,
            seed=sm.params.seed,
            device=sm.params.device,
            bf16=sm.params.bf16,
            graphs=sm.config.get("cuda_graphs", True),
            out_csv=sm.output.csv,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
