rule train_fingerprint_classifiers:
    input:
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
    output:
        c_saf="results/{dataset}/n{size}/seed{seed}/classifiers/c_saf.safetensors",
        c_id="results/{dataset}/n{size}/seed{seed}/classifiers/c_id.safetensors",
        metrics="results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json",
    log:
        "logs/{dataset}/n{size}/seed{seed}/train_fingerprint_classifiers.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        classifiers=config["classifiers"],
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/train_fingerprint_classifiers.py"


rule detect_reproductions:
    input:
        samples="results/{dataset}/n{size}/seed{seed}/samples/samples.npz",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
        c_saf="results/{dataset}/n{size}/seed{seed}/classifiers/c_saf.safetensors",
        c_id="results/{dataset}/n{size}/seed{seed}/classifiers/c_id.safetensors",
        metrics="results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json",
    output:
        csv="results/{dataset}/n{size}/seed{seed}/audit/reproductions.csv",
        summary="results/{dataset}/n{size}/seed{seed}/audit/reproductions.json",
        figure=report(
            "results/{dataset}/n{size}/seed{seed}/audit/reproductions.png",
            caption="../workflow/report/reproductions.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "flagged samples"},
        ),
    log:
        "logs/{dataset}/n{size}/seed{seed}/detect_reproductions.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        threshold=config["classifiers"].get("threshold", 0.5),
        device=config.get("device", "auto"),
    script:
        "../workflow/scripts/detect_reproductions.py"


rule boundary_search:
    input:
        weights="results/{dataset}/n{size}/seed{seed}/model/model.safetensors",
        config="results/{dataset}/n{size}/seed{seed}/model/model_config.json",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        train="results/{dataset}/n{size}/seed{seed}/data/train.npz",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
        unused="results/{dataset}/n{size}/seed{seed}/data/unused_train.npz",
        c_saf="results/{dataset}/n{size}/seed{seed}/classifiers/c_saf.safetensors",
        c_id="results/{dataset}/n{size}/seed{seed}/classifiers/c_id.safetensors",
        metrics="results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json",
    output:
        csv="results/{dataset}/n{size}/seed{seed}/audit/boundary.csv",
        summary="results/{dataset}/n{size}/seed{seed}/audit/boundary.json",
        figure=report(
            "results/{dataset}/n{size}/seed{seed}/audit/boundary.png",
            caption="../workflow/report/boundary.rst",
            category="{dataset}",
            subcategory="n{size} seed{seed}",
            labels={"figure": "boundary search"},
        ),
    log:
        "logs/{dataset}/n{size}/seed{seed}/boundary_search.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        boundary=config["boundary"],
        threshold=config["classifiers"].get("threshold", 0.5),
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
        seed=seeded(config["boundary"].get("seed", 2)),
    script:
        "../workflow/scripts/boundary_search.py"


rule detector_check:
    """Recall and false-positive rate of C_SAF and C_ID together, against the trained DPM."""
    input:
        weights="results/{dataset}/n{size}/seed{seed}/model/model.safetensors",
        config="results/{dataset}/n{size}/seed{seed}/model/model_config.json",
        target="results/{dataset}/n{size}/seed{seed}/data/target.npz",
        target_json="results/{dataset}/n{size}/seed{seed}/data/target.json",
        heldout="results/{dataset}/n{size}/seed{seed}/data/heldout.npz",
        samples="results/{dataset}/n{size}/seed{seed}/samples/samples.npz",
        c_saf="results/{dataset}/n{size}/seed{seed}/classifiers/c_saf.safetensors",
        c_id="results/{dataset}/n{size}/seed{seed}/classifiers/c_id.safetensors",
        metrics="results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json",
    output:
        summary="results/{dataset}/n{size}/seed{seed}/audit/detectors.json",
    log:
        "logs/{dataset}/n{size}/seed{seed}/detector_check.log",
    conda:
        CONDA_ENV
    resources:
        **gpu_resources(),
    params:
        threshold=config["classifiers"].get("threshold", 0.5),
        boundary={k: config["boundary"].get(k) for k in ("sampler", "steps")},
        detectors=config["detectors"],
        bf16=config["sample"].get("bf16", True),
        device=config.get("device", "auto"),
        seed=seeded(config["detectors"].get("seed", 6)),
    script:
        "../workflow/scripts/detector_check.py"


rule fingerprint_tables:
    input:
        classifiers=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/classifiers/classifiers.json"
        ),
        detections=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/reproductions.json"
        ),
        boundaries=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/boundary.json"
        ),
        fids=expand_runs("results/{dataset}/n{size}/seed{seed}/audit/fid.json"),
        detectors=expand_runs(
            "results/{dataset}/n{size}/seed{seed}/audit/detectors.json"
        ),
    output:
        table1_csv=report(
            "results/fingerprint/table1_reproductions.csv",
            caption="../workflow/report/table1.rst",
            category="summary",
            labels={"table": "Table 1: reproductions vs N"},
        ),
        table1_md="results/fingerprint/table1_reproductions.md",
        table2_csv=report(
            "results/fingerprint/table2_datasets.csv",
            caption="../workflow/report/table2.rst",
            category="summary",
            labels={"table": "Table 2: per dataset"},
        ),
        table2_md="results/fingerprint/table2_datasets.md",
        figure=report(
            "results/fingerprint/reproductions_rho_vs_n.png",
            caption="../workflow/report/fingerprint_vs_n.rst",
            category="summary",
            labels={"figure": "reproductions and rho vs N"},
        ),
    log:
        "logs/fingerprint_tables.log",
    conda:
        CONDA_ENV
    params:
        runs=RUNS,
    script:
        "../workflow/scripts/fingerprint_tables.py"
