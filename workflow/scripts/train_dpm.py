from diffmem.stages.dpm import train_dpm_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    summary = train_dpm_stage(
        train_npz=sm.input.train,
        model_cfg=sm.params.model,
        diffusion_cfg=sm.params.diffusion,
        train_cfg=sm.params.train,
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
        out_weights=sm.output.weights,
        out_config=sm.output.config,
        out_loss_csv=sm.output.loss_csv,
        out_loss_png=sm.output.loss_png,
        checkpoint_dir=sm.params.checkpoint_dir,
    )
    print(summary)
