rule report:
    input:
        targets=expand_runs(RUN + "/data/target.json"),
        target_pngs=expand_runs(RUN + "/data/target.png"),
        models=expand_runs(RUN + "/model/model_config.json"),
        loss_pngs=expand_runs(RUN + "/model/loss.png"),
        samples=expand_runs(RUN + "/samples/samples.json"),
        grids=expand_runs(RUN + "/samples/grid.png"),
        classifiers=expand_runs(RUN + "/classifiers/classifiers.json"),
        detections=expand_runs(RUN + "/audit/reproductions.json"),
        detection_pngs=expand_runs(RUN + "/audit/reproductions.png"),
        boundaries=expand_runs(RUN + "/audit/boundary.json"),
        boundary_pngs=expand_runs(RUN + "/audit/boundary.png"),
        table1="results/fingerprint/table1_reproductions.md",
        table2="results/fingerprint/table2_datasets.md",
        vs_n="results/fingerprint/reproductions_rho_vs_n.png",
        side=expand_runs(RUN + "/side/metrics.json"),
    output:
        markdown="results/report.md",
    log:
        "logs/report.log",
    params:
        runs=RUNS,
        run_dirs=expand_runs(RUN),
        title=config.get("report", {}).get("title", "diffmem memorization audit"),
        settings={
            k: config[k]
            for k in (
                "model",
                "diffusion",
                "train",
                "sample",
                "saf",
                "classifiers",
                "boundary",
                "side",
            )
        },
    script:
        "../workflow/scripts/report.py"
