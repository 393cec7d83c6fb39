from diffmem.stages.report import report_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    report_stage(
        out_markdown=sm.output.markdown,
        runs=sm.params.runs,
        run_dirs=sm.params.run_dirs,
        title=sm.params.title,
        settings=sm.params.settings,
        # tables 1 and 2 and their figure, when the workflow trained models
        fingerprint_tables=list(sm.input.tables)[:2] or None,
        fingerprint_figure=list(sm.input.tables)[2] if sm.input.tables else None,
        verdict=sm.input.verdict,
        # every question against N, when the config trains more than one size
        trend=list(sm.input.trend) or None,
        duplicates=list(sm.input.duplicates),
        generated=sm.params.generated,
        studies=list(sm.input.studies),
    )
