rule verdict:
    """One row per run and question, answered yes / no / inconclusive from its primary
    statistic (see README, The verdict and its nulls)."""
    input:
        metrics=expand_all("results/{run}/side/metrics.json"),
        membership=expand_all("results/{run}/audit/membership.json"),
        boundaries=expand_all("results/{run}/audit/boundary.json"),
        generated=expand("results/generated/{name}/scores/metrics.json", name=GENERATED),
    output:
        csv=report(
            "results/verdict.csv",
            caption="../workflow/report/verdict.rst",
            category="summary",
            labels={"table": "Verdict"},
        ),
        markdown="results/verdict.md",
    log:
        "logs/verdict.log",
    conda:
        CONDA_ENV
    params:
        runs=all_runs(config),
        generated=list(GENERATED),
        alpha=config["scoring"].get("alpha", 0.05),
    script:
        "../workflow/scripts/verdict.py"
