from diffmem.data import dataset_arrays
from diffmem.duplicates import duplicates_stage
from diffmem.imported import duplicates_arrays
from diffmem.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    if "name" in sm.wildcards.keys():  # an imported model's own images
        name, arrays = f"models/{sm.wildcards.name}", duplicates_arrays(
            sm.input.train, sm.input.heldout)
    else:  # data_root/download say where the file is, not what it holds (as in prepare_data)
        name = sm.wildcards.dataset
        arrays = dataset_arrays(name, sm.params.entry, sm.params.image_size,
                                sm.config["data_root"], sm.config.get("download", True))
    print(
        duplicates_stage(
            flag=name,
            arrays=arrays,
            metric=sm.params.duplicates.get("metric", "rms"),
            threshold=float(sm.params.duplicates.get("threshold", 5.0)),
            max_diameter=sm.params.duplicates.get("max_diameter"),
            device=sm.params.device,
            out_npz=sm.output.npz,
            out_json=sm.output.summary,
            out_png=sm.output.figure,
            mirror=bool(getattr(sm.params, "mirror", False)),
        )
    )
