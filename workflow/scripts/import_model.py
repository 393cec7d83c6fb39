from diffmem.external import import_model
from diffmem.runner import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0]):
    print(import_model(sm.params.folder, sm.output.weights, sm.output.config))
