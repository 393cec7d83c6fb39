from diffmem.stages.membership import exposure_stage
from diffmem.stages.runner import logged

sm = snakemake  # noqa: F821
target = sm.input.target  # the run's target.json (a trained run), or an empty list (imported)
with logged(sm.log[0]):
    print(
        exposure_stage(
            train_npz=sm.input.train,
            scores_npz=sm.input.scores,
            membership_json=sm.input.membership,
            nearest_csv=sm.input.nearest,
            samples_npz=sm.input.samples,
            boundary_json=sm.input.boundary,
            target_json=str(target) if target else None,
            q=sm.params.q,
            out_csv=sm.output.csv,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
        )
    )
