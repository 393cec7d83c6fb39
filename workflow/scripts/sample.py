from diffmem.stages.dpm import sample_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
cfg = sm.params.sample
with logged(sm.log[0]):
    info = sample_stage(
        weights=sm.input.weights,
        model_config=sm.input.config,
        num_samples=cfg["num_samples"],
        batch_size=cfg.get("batch_size", 1000),
        sampler=cfg["sampler"],
        steps=cfg["steps"],
        seed=sm.params.seed,
        device=sm.params.device,
        bf16=cfg.get("bf16", True),
        graphs=sm.config.get("cuda_graphs", True),
        out_samples=sm.output.samples,
        out_grid=sm.output.grid,
        out_json=sm.output.info,
    )
    print(info)
