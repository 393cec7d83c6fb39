from diffmem.stages.models import boundary_search_images_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        boundary_search_images_stage(
            weights=sm.input.weights,
            model_config=sm.input.config,
            train_npz=sm.input.train,
            heldout_npz=sm.input.heldout,
            samples_npz=sm.input.samples,
            duplicates_npz=sm.input.duplicates,
            cfg=sm.params.boundary,
            chosen=list(sm.params.chosen),
            count=int(sm.params.how_many),
            mirror=bool(sm.params.mirror),
            matching=sm.params.matching,
            seed=sm.params.seed,
            device=sm.params.device,
            bf16=sm.params.bf16,
            graphs=sm.config.get("cuda_graphs", True),
            out_csv=sm.output.csv,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
