from diffmem.stages.data import prepare_data_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(
        prepare_data_stage(
            flag=sm.wildcards.dataset,
            size=sm.params.image_size,
            # location only (see rules/data.smk): not a param, so moving the data re-runs nothing
            root=sm.config["data_root"],
            download=sm.config.get("download", True),
            n_train=int(sm.wildcards.size),
            seed=int(sm.wildcards.seed),
            saf_radius=sm.params.saf["radius"],
            saf_grey=sm.params.saf["grey"],
            max_twin_similarity=sm.params.saf.get("max_twin_similarity", 0.95),
            to_rgb=sm.params.to_rgb,
            entry=sm.params.entry,
            matching=sm.params.matching,
            out_train=sm.output.train,
            out_target=sm.output.target,
            out_target_json=sm.output.target_json,
            out_heldout=sm.output.heldout,
            out_figure=sm.output.figure,
            out_unused=sm.output.unused,
        )
    )
