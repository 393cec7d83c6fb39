# The known-truth study (config "study"): the copy verdict on stand-ins whose answer is known,
# built from a dataset's own images. One job: `snakemake --configfile workflow/configs/study.yaml`.


rule known_truth_study:
    output:
        runs="results/study/{dataset}/runs.csv",
        table=report(
            "results/study/{dataset}/table.csv",
            caption="../workflow/report/study.rst",
            category="summary",
            labels={"table": "known-truth study"},
        ),
        markdown="results/study/{dataset}/table.md",
        summary="results/study/{dataset}/study.json",
    log:
        "logs/study/{dataset}.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        # data_root and download are read in the script: a location, not the data
        entry=lambda wc: dataset_entry(config, wc.dataset),
        images=lambda wc: dataset_images(config, wc.dataset),
        image_size=config["image_size"],
        study=config.get("study") or {},
        scoring={**config["scoring"], "matching": config.get("matching") or {}},
        duplicates=config["duplicates"],
        copies=COPIES,
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/known_truth_study.py"
