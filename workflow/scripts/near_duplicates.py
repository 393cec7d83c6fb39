from diffmem.stages.data import near_duplicates_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        near_duplicates_stage(
            dataset=sm.wildcards.dataset,
            entry=sm.params.entry,
            image_size=sm.params.image_size,
            # data_root/download say where the file is, not what it holds (as in prepare_data)
            root=sm.config["data_root"],
            download=sm.config.get("download", True),
            cfg=sm.params.duplicates,
            matching=sm.params.matching,
            device=sm.params.device,
            out_npz=sm.output.npz,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
