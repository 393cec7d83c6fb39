from diffmem.runner import logged
from diffmem.side import metrics_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        metrics_stage(
            train_npz=sm.input.train,
            baseline_npz=sm.input.baseline,
            side_npzs=list(sm.input.side),
            scales=[float(s) for s in sm.params.scales],
            cfg={"thresholds": sm.params.thresholds, "carlini": sm.params.carlini},
            device=sm.params.device,
            out_csv=sm.output.csv,
            out_json=sm.output.summary,
            out_pairs_png=sm.output.pairs,
            out_hist_png=sm.output.hist,
            out_scale_png=sm.output.scales,
        )
    )
