from diffmem.stages.runner import logged
from diffmem.stages.scores import extraction_metrics_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    summary = extraction_metrics_stage(
        train_npz=sm.input.train,
        plain_npz=sm.input.baseline,
        side_npzs=list(sm.input.side),
        scales=[float(s) for s in sm.params.scales],
        heldout_npz=sm.input.heldout,
        unused_npz=sm.input.unused,
        duplicates_npz=sm.input.duplicates,
        cfg=sm.params.scoring,
        device=sm.params.device,
        out_csv=sm.output.csv,
        out_json=sm.output.summary,
        out_pairs_png=sm.output.pairs,
        out_hist_png=sm.output.hist,
        out_scale_png=sm.output.scales,
        out_nearest_csv=sm.output.nearest,
        embedding=sm.input.embedding,
        embedding_json=sm.input.embedding_json,
        raw_heldout_npz=sm.input.get("raw_heldout"),
        autoencoder_json=sm.input.get("autoencoder"),
    )
    print(summary["tests"])
