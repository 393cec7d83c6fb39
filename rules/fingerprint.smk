rule train_fingerprint_classifiers:
    input:
        train=RUN + "/data/train.npz",
        target=RUN + "/data/target.npz",
        target_json=RUN + "/data/target.json",
        heldout=RUN + "/data/heldout.npz",
    output:
        c_saf=RUN + "/classifiers/c_saf.safetensors",
        c_id=RUN + "/classifiers/c_id.safetensors",
        metrics=RUN + "/classifiers/classifiers.json",
    log:
        LOG + "/train_fingerprint_classifiers.log",
    params:
        classifiers=config["classifiers"],
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/train_fingerprint_classifiers.py"


rule detect_reproductions:
    input:
        samples=RUN + "/samples/samples.npz",
        target=RUN + "/data/target.npz",
        target_json=RUN + "/data/target.json",
        c_saf=RUN + "/classifiers/c_saf.safetensors",
        c_id=RUN + "/classifiers/c_id.safetensors",
        metrics=RUN + "/classifiers/classifiers.json",
    output:
        csv=RUN + "/audit/reproductions.csv",
        summary=RUN + "/audit/reproductions.json",
        figure=report(
            RUN + "/audit/reproductions.png",
            caption="../workflow/report/reproductions.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "flagged samples"},
        ),
    log:
        LOG + "/detect_reproductions.log",
    params:
        threshold=config["classifiers"].get("threshold", 0.5),
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/detect_reproductions.py"


rule boundary_search:
    input:
        weights=RUN + "/model/model.safetensors",
        config=RUN + "/model/model_config.json",
        target=RUN + "/data/target.npz",
        c_saf=RUN + "/classifiers/c_saf.safetensors",
        c_id=RUN + "/classifiers/c_id.safetensors",
        metrics=RUN + "/classifiers/classifiers.json",
    output:
        csv=RUN + "/audit/boundary.csv",
        summary=RUN + "/audit/boundary.json",
        figure=report(
            RUN + "/audit/boundary.png",
            caption="../workflow/report/boundary.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "boundary search"},
        ),
    log:
        LOG + "/boundary_search.log",
    params:
        boundary=config["boundary"],
        threshold=config["classifiers"].get("threshold", 0.5),
        sampler=config["sample"]["sampler"],
        steps=config["sample"]["steps"],
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
    resources:
        **gpu_resources(),
    script:
        "../workflow/scripts/boundary_search.py"


rule fingerprint_tables:
    input:
        classifiers=expand_runs(RUN + "/classifiers/classifiers.json"),
        detections=expand_runs(RUN + "/audit/reproductions.json"),
        boundaries=expand_runs(RUN + "/audit/boundary.json"),
    output:
        table1_csv="results/fingerprint/table1_reproductions.csv",
        table1_md="results/fingerprint/table1_reproductions.md",
        table2_csv="results/fingerprint/table2_datasets.csv",
        table2_md="results/fingerprint/table2_datasets.md",
        figure=report(
            "results/fingerprint/reproductions_rho_vs_n.png",
            caption="../workflow/report/fingerprint_vs_n.rst",
            category="summary",
            labels={"figure": "reproductions and rho vs N"},
        ),
    log:
        "logs/fingerprint_tables.log",
    params:
        runs=RUNS,
    script:
        "../workflow/scripts/fingerprint_tables.py"
