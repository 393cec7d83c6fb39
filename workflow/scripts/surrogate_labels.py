from diffmem.config import run_seed
from diffmem.runner import logged
from diffmem.side import labels_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    labels_stage(
        samples_npz=sm.input.samples,
        k=sm.params.clusters,
        pca_dims=sm.params.pca_dims,
        seed=run_seed(sm.wildcards, sm.config),
        out_npz=sm.output.labels,
        out_json=sm.output.summary,
        out_png=sm.output.grid,
    )
