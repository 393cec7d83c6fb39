from diffmem.stages.runner import logged
from diffmem.stages.side import side_extract_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        side_extract_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            clf_weights=sm.input.clf,
            clf_json=sm.input.clf_json,
            scale=float(sm.wildcards.scale),
            per_cluster=sm.params.per_cluster,
            sampler=sm.params.sampler,
            steps=sm.params.steps,
            batch_size=sm.params.batch_size,
            seed=sm.params.seed,
            device=sm.params.device,
            bf16=sm.params.bf16,
            graphs=sm.config.get("cuda_graphs", True),
            out_npz=sm.output.samples,
            out_png=sm.output.grid,
        )
    )
