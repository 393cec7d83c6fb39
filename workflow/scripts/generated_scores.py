from diffmem.stages.generated import generated_scores_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    summary = generated_scores_stage(
        generated_npz=sm.input.generated,
        train_npz=sm.input.train,
        heldout_npz=sm.input.heldout,
        unused_npz=sm.input.unused,
        duplicates_npz=sm.input.duplicates,
        cfg=sm.params.scoring,
        device=sm.params.device,
        out_csv=sm.output.csv,
        out_json=sm.output.summary,
        out_nearest_csv=sm.output.nearest,
        out_pairs_png=sm.output.pairs,
        out_hist_png=sm.output.hist,
        embedding=sm.input.embedding,
        embedding_json=sm.input.embedding_json,
    )
    print(summary["tests"])
