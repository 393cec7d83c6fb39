from diffmem.stages.runner import logged
from diffmem.stages.verdict import verdict_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        verdict_stage(
            runs=sm.params.runs,
            metrics=list(sm.input.metrics),
            membership=list(sm.input.membership),
            boundaries=list(sm.input.boundaries),
            generated_names=sm.params.generated,
            generated=list(sm.input.generated),
            alpha=sm.params.alpha,
            out_csv=sm.output.csv,
            out_md=sm.output.markdown,
        )
    )
