rule trend:
    """Every question against the training-set size N, each beside its null (README,
    Results): planned when the config trains more than one size of a dataset."""
    input:
        metrics=expand_runs("results/{dataset}/n{size}/seed{seed}/side/metrics.json"),
        membership=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/membership.json"
        ),
        boundaries=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/boundary.json"
        ),
        reproductions=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/reproductions.json"
        ),
        detectors=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/detectors.json"
        ),
    output:
        csv=report(
            "results/trend/trend.csv",
            caption="../workflow/report/trend.rst",
            category="summary",
            labels={"table": "Every question against N"},
        ),
        markdown="results/trend/trend.md",
        figure=report(
            "results/trend/trend.png",
            caption="../workflow/report/trend.rst",
            category="summary",
            labels={"figure": "Every question against N"},
        ),
    log:
        "logs/trend.log",
    conda:
        CONDA_ENV
    params:
        runs=RUNS,
        alpha=config["scoring"].get("alpha", 0.05),
    script:
        "../workflow/scripts/trend.py"
