from diffmem.stages.runner import logged
from diffmem.stages.study import known_truth_study_stage

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        known_truth_study_stage(
            dataset=sm.wildcards.dataset,
            entry=sm.params.entry,
            image_size=sm.params.image_size,
            # location only (as in prepare_data): moving the data re-runs nothing
            root=sm.config["data_root"],
            download=sm.config.get("download", True),
            study=sm.params.study,
            scoring=sm.params.scoring,
            duplicates=sm.params.duplicates,
            copies=sm.params.copies,
            device=sm.params.device,
            out_runs=sm.output.runs,
            out_table_csv=sm.output.table,
            out_table_md=sm.output.markdown,
            out_json=sm.output.summary,
        )
    )
