from diffmem.stages.runner import logged
from diffmem.stages.side import surrogate_labels_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    surrogate_labels_stage(
        samples_npz=sm.input.samples,
        k=sm.params.clusters,
        pca_dims=sm.params.pca_dims,
        seed=sm.params.seed,
        out_npz=sm.output.labels,
        out_json=sm.output.summary,
        out_png=sm.output.grid,
    )
