from diffmem.stages.runner import logged
from diffmem.stages.trend import trend_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        trend_stage(
            runs=sm.params.runs,
            metrics=list(sm.input.metrics),
            membership=list(sm.input.membership),
            boundaries=list(sm.input.boundaries),
            reproductions=list(sm.input.reproductions),
            detectors=list(sm.input.detectors),
            alpha=sm.params.alpha,
            out_csv=sm.output.csv,
            out_md=sm.output.markdown,
            out_png=sm.output.figure,
        )
    )
