from diffmem.stages.bench import bench_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        bench_stage(
            config=sm.params.config,
            data_root=sm.config["data_root"],
            out_json=sm.output.json,
            out_md=sm.output.md,
            progress=False,
        )
    )
