from diffmem.stages.fingerprint import fingerprint_tables_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    fingerprint_tables_stage(
        runs=sm.params.runs,
        classifiers=sm.input.classifiers,
        detections=sm.input.detections,
        boundaries=sm.input.boundaries,
        fids=sm.input.fids,
        detectors=sm.input.detectors,
        out_table1_csv=sm.output.table1_csv,
        out_table1_md=sm.output.table1_md,
        out_table2_csv=sm.output.table2_csv,
        out_table2_md=sm.output.table2_md,
        out_png=sm.output.figure,
    )
