# On-demand benchmark (not part of `all`): `snakemake --cores all results/bench/bench.json`.
# Every stage of the library timed on the config's first dataset and size, beside a plain
# diffusers training loop; the `benchmark:` TSV adds Snakemake's wall time and peak RSS.


rule bench:
    output:
        json="results/bench/bench.json",
        md="results/bench/bench.md",
    log:
        "logs/bench.log",
    benchmark:
        "results/bench/bench.tsv"
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        # data_root is a location, read in the script (as in prepare_data)
        config={k: v for k, v in config.items() if k != "data_root"},
    script:
        "../workflow/scripts/bench.py"
