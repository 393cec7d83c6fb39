"""End to end: the real Snakemake DAG on the small test config and the real BreastMNIST file."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from diffmem.metrics.stats import decide, rate_excess

from .conftest import TEST_CONFIG, local_env, snakemake, workflow_copy

RUN = "results/breastmnist/n64/seed0"
RUN_OUTPUTS = [
    "data/train.npz", "data/target.npz", "data/target.json", "data/heldout.npz",
    "data/target.png", "data/unused_train.npz", "model/model.safetensors",
    "model/model_config.json", "model/loss.csv",
    "model/loss.png", "samples/samples.npz", "samples/samples.json", "samples/grid.png",
    "classifiers/c_saf.safetensors", "classifiers/c_id.safetensors", "classifiers/classifiers.json",
    "audit/reproductions.csv", "audit/reproductions.json", "audit/reproductions.png",
    "audit/boundary.csv", "audit/boundary.json", "audit/boundary.png", "audit/fid.json",
    "side/labels.npz", "side/labels.json", "side/clusters.png", "side/classifier.safetensors",
    "side/classifier.json", "side/extract_s1.npz", "side/extract_s4.npz", "side/metrics.csv",
    "side/nearest.csv",
    "side/metrics.json", "side/pairs.png", "side/nn_similarity.png", "side/ams_ums_vs_scale.png",
    "audit/membership.json", "audit/membership.png", "audit/detectors.json",
    "audit/membership_scores.npz", "audit/exposure.csv", "audit/exposure.json",
    "audit/exposure.png",
]
SUMMARY_OUTPUTS = [
    "results/fingerprint/table1_reproductions.csv", "results/fingerprint/table1_reproductions.md",
    "results/fingerprint/table2_datasets.csv", "results/fingerprint/table2_datasets.md",
    "results/fingerprint/reproductions_rho_vs_n.png", "results/report.md",
    "results/verdict.csv", "results/verdict.md", "results/breastmnist/near_duplicates.npz",
    "results/breastmnist/near_duplicates.json", "results/breastmnist/near_duplicates.png",
]


def scheduled(proc) -> dict[str, int]:
    """Rule → job count from a dry run's job-stats table."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("Reasons:")[0] if "Reasons:" in out else \
        out.split("Job stats:")[1]
    jobs = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def test_every_output_and_the_report(finished):
    for rel in RUN_OUTPUTS:
        assert (finished / RUN / rel).stat().st_size > 0, rel
    for rel in SUMMARY_OUTPUTS:
        assert (finished / rel).stat().st_size > 0, rel
    report = (finished / "results/report.md").read_text()
    for rel in ("data/target.png", "model/loss.png", "samples/grid.png", "audit/boundary.png",
                "audit/reproductions.png"):
        assert f"breastmnist/n64/seed0/{rel}" in report
    assert "training images N | 64" in report
    assert "walks back to the fingerprinted image?" in report and "| breastmnist |  64 |" in report
    import json

    boundary = json.loads((finished / RUN / "audit/boundary.json").read_text())
    assert boundary["evaluations"] == 6  # t = 0, 20, ..., 80, 99
    # matched unseen controls (2 in the test config) beside the target, robust boundaries
    assert len(boundary["rho_control"]) == 2 and len(boundary["t50_control"]) == 2
    assert boundary["sampler"] == "ddpm" and boundary["steps"] == 20
    assert boundary["t50_ci"][0] <= boundary["t50"] <= boundary["t50_ci"][1]
    assert boundary["rank_p_value_t50"] in (1 / 3, 2 / 3, 1.0)
    # a 30-step model walks back to the fingerprinted image no further than to unseen images:
    # the target's t50 and ρ lie within the controls' (2 controls cannot make a rank
    # significant, so the answer itself is never "yes" here)
    assert min(boundary["t50_control"]) <= boundary["t50"] <= max(boundary["t50_control"])
    assert boundary["rho"] <= max(boundary["rho_control"])
    assert boundary["walks_back"] != "yes"
    target = json.loads((finished / RUN / "data/target.json").read_text())
    assert target["target_nearest_other"]["similarity"] < target["max_twin_similarity"]
    detection = json.loads((finished / RUN / "audit/reproductions.json").read_text())
    assert detection["samples"] == 24 and detection["n_train"] == 64
    assert 0 <= detection["id_positive_with_disc"] <= detection["id_positive"]
    table1 = pd.read_csv(finished / "results/fingerprint/table1_reproductions.csv")
    assert {"ID+_with_disc", "AND_recall", "AND_fpr", "rate_upper_95",
            "rate<1/N_claim"} <= set(table1.columns)
    det = json.loads((finished / RUN / "audit/detectors.json").read_text())
    assert det["samples"] == 24 and len(det["renderings"]) == 2
    assert det["rate_ci"][0] <= det["rate_ci"][1] and det["below_null"] in ("supported", "refused")
    assert "pixel_near_copies" in detection
    side = json.loads((finished / RUN / "side/metrics.json").read_text())
    assert side["budget"] == 12  # 3 clusters x 4 per cluster
    methods = [r["method"] for r in side["rows"] if r["similarity"] == "cosine"]
    assert methods == ["plain sampling", "unseen real images (null)",
                       "held-out real images (all, twins included)", "SIDE", "SIDE",
                       "SIDE best scale (held-out half)"]
    # the two similarities matched at their best shift and mirror, the plain pixel match, the
    # copy embedding and both eyes combined (the verdict's)
    assert {r["similarity"] for r in side["rows"]} == {"cosine", "l2", "pixel", "embedding",
                                                       "combined"}
    assert side["primary_similarity"] == "combined"
    eye = side["copy_eye"]
    assert eye["checked"] and eye["train_images"] == 64 and len(eye["families"]) == 13
    assert {f["family"] for f in eye["families"] if not f["trained"]} == {
        "shifted 4 px", "gamma 0.7", "elastic warp", "rotated 25°", "cutout of 10 %"}
    assert all(0 <= f["recall_combined"] <= 1 for f in eye["families"])
    copy_test = side["tests"]["plain_copies"]
    assert copy_test["smallest_recall"] == min(f["recall_combined"] for f in eye["families"])
    assert set(copy_test["unlike_p_values"]) == {"pixels", "embedding"}
    assert side["tests"]["plain_copies_pixel"]["similarity"] == "cosine"
    assert "### The learned copy eye" in report and "| rotated 25° | **no** |" in report
    null = side["null"]
    # BreastMNIST: 50 of the 234 held-out images are near-duplicates of training-split images
    # (at the best shift and mirror; 46 pixel to pixel)
    assert null["heldout"] == 234 and null["unused_train"] == 546 - 64
    assert null["heldout_twins_excluded"] <= 50 and null["near_duplicates_excluded"]
    assert all(r["equal_size"] == 6 for r in side["rows"])  # SIDE's held-out half per scale
    edges = side["bands"]["cosine"]["edges"]
    assert edges[0] < edges[1] < edges[2] and side["bands"]["cosine"]["quantiles_used"]
    assert set(side["tests"]) == {"plain_copies", "plain_copies_pixel", "side_extracts_more"}
    assert all(0 <= t["p_holm"] <= 1 and t["p_holm"] >= t["p_value"] for t in side["secondary"])
    csv = pd.read_csv(finished / RUN / "side/metrics.csv")
    assert csv["method"].str.contains("unseen real images").any()
    assert "### Memorization scores beside their null (both eyes)" in report
    dup = json.loads((finished / "results/breastmnist/near_duplicates.json").read_text())
    assert dup["train_images"] == 546 and dup["heldout_images"] == 234
    assert dup["heldout_images_sharing_a_group_with_train"] == 50  # by brute force: test_data.py
    assert dup["matching"] == {"shift": 2, "mirror": True}
    mia = json.loads((finished / RUN / "audit/membership.json").read_text())
    assert mia["members"] == 64 and 0 <= mia["ci_low"] <= mia["effect"] <= mia["ci_high"] <= 1
    # the loss attack, SimA and PIA, each at its t chosen on one half, scored on the other
    assert set(mia["attacks"]) == {"loss", "sima", "pia"} and mia["fallback"] is None
    assert mia["chosen"] in mia["attacks"] and "(chosen on the other half)" in mia["statistic"]
    # the verdict's AUC is the Mann-Whitney AUC of the scoring half's saved scores
    saved = np.load(finished / RUN / "audit/membership_scores.npz")
    m_s = saved["member_score"][saved["member_half"] == "scoring"]
    n_s = saved["nonmember_score"]
    pairs = (m_s[:, None] > n_s[None]).mean() + 0.5 * (m_s[:, None] == n_s[None]).mean()
    assert mia["effect"] == pytest.approx(pairs, abs=1e-9)
    assert len(m_s) == mia["n"] and len(n_s) == mia["null_n"]
    sel, sco = mia["halves"]["selection"], mia["halves"]["scoring"]
    assert sel["members"] + sco["members"] == 64 and mia["n"] == sco["members"]
    assert sel["nonmembers"] >= 20 and sco["nonmembers"] == mia["null_n"] >= 20
    exposure = pd.read_csv(finished / RUN / "audit/exposure.csv")
    assert len(exposure) == 64 and exposure["p_value"].between(0, 1).all()
    assert {"membership_score", "plain_copies", "side_copies", "walk_back_t50",
            "bh_pass"} <= set(exposure.columns)
    assert exposure["walk_back_t50"].notna().sum() == 1  # the fingerprinted target's
    # Benjamini–Hochberg counts only the scoring half: the selection half's scores chose the
    # attack (their p-values are listed, not counted)
    assert exposure["half"].value_counts().to_dict() == {"selection": sel["members"],
                                                        "scoring": sco["members"]}
    assert not exposure[exposure["half"] == "selection"]["bh_pass"].any()
    e = json.loads((finished / RUN / "audit/exposure.json").read_text())
    assert e["scored"] == sco["members"] and e["selection_half_listed"] == sel["members"]
    assert e["smallest_p"] == pytest.approx(1 / (sco["nonmembers"] + 1))
    assert e["hits_needed_at_smallest_p"] >= 1 and 0 <= e["bh_passed"] <= 64
    assert "### Which training images are most exposed" in report and "| PIA" in report
    # the report opens with the verdict: one row per run and question
    assert report.startswith("# Verdict")
    verdict = pd.read_csv(finished / "results/verdict.csv")
    # two runs (breastmnist, an imported model), four questions each, a latent model (six:
    # its raw-null comparison and its autoencoder's question besides), and two generated image
    # sets (only the copy question)
    assert len(verdict) == 16
    assert set(verdict["answer"]) <= {"yes", "no", "inconclusive", "inconclusive (no null)",
                                      "samples unlike the training data"}
    assert verdict["question"].tolist()[2] == "can training images be told from unseen ones?"
    assert verdict["question"].tolist()[3].startswith("does the model walk back")
    # a 30-step model on 64 images makes blobs, less like the data than unseen images: named so,
    # never "no"; the copy row says what excess it could have detected at these sizes
    first = verdict.iloc[0]
    assert first["answer"] == "samples unlike the training data"
    copies = side["tests"]["plain_copies"]
    assert copies["unlike_p_value"] < 0.05 and first["detectable"] == copies["detectable_rate"]
    # the detectable rate is the excess the yes-rule finds 80 % of the time at the run's sizes:
    # simulated here with the rule itself (rate_excess, then decide)
    n1, n2, p0 = copies["n"], copies["null_n"], copies["null_rate_calibration"]
    assert (n1, n2) == (24, side["null"]["score"])

    def power(d, runs=2000):
        rng = np.random.default_rng(0)
        hits = zip(rng.binomial(n1, min(p0 + d, 1), runs), rng.binomial(n2, p0, runs),
                   strict=True)
        return np.mean([decide(rate_excess(a, n1, b, n2), alpha=0.05, margin=0.05) == "yes"
                        for a, b in hits])

    assert abs(power(copies["detectable_rate"]) - 0.8) < 0.04
    copy_rows = verdict.question.isin([first["question"],
                                       "do these images copy training images?"]) | \
        verdict.question.str.startswith("against a raw null")  # a latent model's comparison
    assert verdict[~copy_rows]["detectable"].isna().all()
    assert "| detectable |" in (finished / "results/verdict.md").read_text()
    assert "the test finds an excess of" in report and "with 80 % power" in report
    nearest = pd.read_csv(finished / RUN / "side/nearest.csv")
    assert len(nearest) == 24 + 2 * 12 and set(nearest["set"]) == {"plain sampling", "SIDE"}
    assert {"nearest_train", "similarity", "transform", "copy", "pixel_similarity", "eye",
            "pixel_match_similarity", "embedding_similarity"} <= set(nearest.columns)
    assert set(nearest["eye"]) <= {"pixels", "embedding", "both"}
    assert (nearest["similarity"] >= -1).all() and nearest["transform"].str.len().min() > 0
    fid = json.loads((finished / RUN / "audit/fid.json").read_text())
    assert fid["fid_train"] is None and "fid.inception_weights" in fid["skipped"]
    table2 = pd.read_csv(finished / "results/fingerprint/table2_datasets.csv")
    assert {"FID_train", "FID_test"} <= set(table2.columns)
    samples = np.load(finished / RUN / "samples/samples.npz")["images"]
    assert samples.shape == (24, 28, 28) and samples.dtype == np.uint8
    # nothing half-written or left behind
    assert not list(finished.rglob("*.part"))
    assert not (finished / RUN / "checkpoints").exists()


def test_no_job_of_the_run_unpickles_anything(finished):
    """Every job of the shared run ran under tests/guard/sitecustomize.py, where torch.load,
    pickle.load, pickle.Unpickler and numpy.load(allow_pickle=True) raise; none called them."""
    log = (finished / "guard.log").read_text().splitlines()
    jobs = re.findall(r"(\d+) of \1 steps \(100%\) done", (finished / "run.log").read_text())
    scripts = [line for line in log if line.startswith("active") and ".snakemake/scripts/" in line]
    assert jobs and len(scripts) >= int(jobs[-1]) - 1, (len(scripts), jobs)  # all but `all`
    assert not [line for line in log if line.startswith("ATTEMPT")], log


def test_an_imported_model_is_audited_and_found_to_copy(finished):
    """The user's own diffusers model (trained until it copies 4 PNGs) through `models:`."""
    run = finished / "results/models/own"
    for rel in ("model/model.safetensors", "model/model_config.json", "data/images.json",
                "near_duplicates.json", "samples/grid.png", "side/metrics.json",
                "audit/membership.json", "audit/boundary.json", "audit/boundary.png"):
        assert (run / rel).stat().st_size > 0, rel
    train = np.load(run / "data/train.npz")
    assert train["images"].shape == (4, 16, 16)  # 28x28 PNGs resized to the model's 16x16
    assert sorted(train["names"])[0] == "part0/tr00.png"  # found in nested folders
    assert np.load(run / "data/heldout.npz")["images"].shape == (40, 16, 16)
    assert np.load(run / "samples/samples.npz")["images"].shape == (24, 16, 16)
    model = json.loads((run / "model/model_config.json").read_text())
    assert model["source"]["scheduler"] == "DDPMScheduler"
    assert model["diffusion"]["num_train_timesteps"] == 100
    assert model["diffusion"]["beta_end"] == 0.2  # its scheduler reaches noise
    samples = json.loads((run / "samples/samples.json").read_text())
    assert samples["signal_at_start"] == pytest.approx(0.0046, abs=1e-4)  # ddpm from step 99
    nearest = pd.read_csv(run / "side/nearest.csv")
    assert set(nearest["nearest_name"]) <= set(train["names"])  # named by file
    verdict = pd.read_csv(finished / "results/verdict.csv")
    own = verdict[verdict["run"] == "model own"].set_index("question")["answer"]
    assert own["does plain sampling copy training images?"] == "yes"
    assert own["can training images be told from unseen ones?"] == "yes"
    # the README's figures of this model: every sample in the high band of both eyes against
    # 30 or 35 % of the 20 scored unseen images (the copy eye of 4 images trains a little
    # differently on one thread or two), a detectable excess of about 0.4, AUC 1.0
    copies = json.loads((run / "side/metrics.json").read_text())["tests"]["plain_copies"]
    assert (copies["value"], copies["null_n"]) == (1.0, 20)
    assert copies["null_value"] in (0.3, 0.35)
    assert 0.38 < copies["detectable_rate"] < 0.43
    assert own_pixel_only(verdict) == "yes"  # the pixel match alone, reported beside
    mia = json.loads((run / "audit/membership.json").read_text())
    assert mia["effect"] == 1.0 and (mia["n"], mia["null_n"]) == (4, 40)
    # 4 training images cannot be split into halves of 10: the loss attack on all of them
    assert mia["chosen"] == "loss" and mia["fallback"].startswith("fewer than 10 members")
    assert mia["attacks"] == {} and "the loss attack on all of them" in mia["statistic"]
    exposure = pd.read_csv(run / "audit/exposure.csv")
    assert len(exposure) == 4 and exposure["plain_copies"].sum() > 0
    assert (exposure["half"] == "all").all()  # no attack was chosen: every p-value is clean
    e = json.loads((run / "audit/exposure.json").read_text())
    assert e["scored"] == 4 and e["bh_reachable"] and e["bh_passed"] == 4  # 4 of 4, p = 1/41
    assert exposure["walk_back_t50"].notna().sum() == 1  # the most copied image's
    b = json.loads((run / "audit/boundary.json").read_text())
    assert b["query"]["chosen"] == "most copied by plain sampling"
    assert b["query"]["name"] in set(train["names"]) and len(b["t50_control"]) == 2
    # a copying model walks back to its training image from far more noise than to unseen
    # images; with 2 controls the rank cannot be significant, so not "yes"
    assert b["t50"] > max(b["t50_control"]) and b["walks_back"] != "yes"
    # regression pins of the README's figures (4 reverse runs per level)
    assert (b["t50"], b["rho"], b["t50_control"], b["rho_control"]) == (0.55, 0.99, [0.1, 0.1],
                                                                        [0.0, 0.0])
    side = json.loads((run / "side/metrics.json").read_text())
    assert side["null"]["heldout"] == 40 and side["null"]["unused_train"] == 0
    report = (finished / "results/report.md").read_text()
    assert "## Imported model own" in report and "| model own |" in report


def own_pixel_only(verdict) -> str:
    row = verdict[(verdict["run"] == "model own") & verdict["question"].str.startswith(
        "does plain sampling copy")]
    return row["pixel_only_answer"].item()


def test_each_set_of_training_images_and_groups_has_its_own_copy_embedding(finished):
    """One copy embedding per distinct training images and near-duplicate groups: the MedMNIST
    run's, the pixel model's, the latent model's, and one for each generated set, since the
    two share their training images but not their held-out images (which the groups are made
    over; entries that share both share one, tests/test_config.py); each trained on those
    images alone (its JSON says how many and their digest)."""
    keys = sorted(p.name for p in (finished / "results/copies").iterdir())
    assert len(keys) == 5 and "breastmnist-n64-seed0" in keys
    metas = {k: json.loads((finished / f"results/copies/{k}/embedding.json").read_text())
             for k in keys}
    assert metas["breastmnist-n64-seed0"]["train_images"] == 64
    assert sorted(m["train_images"] for m in metas.values()) == [4, 6, 24, 24, 64]
    generated = [m for m in metas.values() if m["train_images"] == 24]
    assert generated[0]["train_digest"] == generated[1]["train_digest"]
    assert all(0 < m["twin_threshold"] < 1 and "training images only" in m["trained_on"]
               for m in metas.values())


def test_images_without_held_out_images_are_scored_without_a_null(finished):
    """No held-out images: the scores are reported, and the copy question, which needs unseen
    images, is answered neither yes nor no (the images copy, but nothing shows it is unusual).
    A model entry without them runs the same scoring; its membership stage and report section
    are checked in test_membership.py."""
    run = finished / "results/generated/nonull"
    images = json.loads((run / "data/images.json").read_text())
    assert images["train_images"] == 24 and images["heldout_images"] == 0
    verdict = pd.read_csv(finished / "results/verdict.csv")
    row = verdict[verdict["run"] == "generated nonull"]
    assert row["answer"].tolist() == ["inconclusive (no null)"]
    m = json.loads((run / "scores/metrics.json").read_text())
    t = m["tests"]["plain_copies"]
    assert m["no_null"] and m["secondary"] == [] and t["null_value"] is None
    assert t["value"] > 0.9  # measured all the same: the images are copies
    assert "a reference, not a null" in m["bands"]["cosine"]["kind"]
    # the copy embedding is reported without bands, and the two eyes are not combined
    assert m["bands"]["embedding"]["edges"] is None and "combined" not in m["bands"]
    assert m["primary_similarity"] == "cosine" and not m["copy_eye"]["checked"]
    report = (finished / "results/report.md").read_text()
    section = report.split("## Generated images nonull")[1].split("\n## ")[0]
    assert "**No held-out images were given, so the copy question has no null**" in section
    assert "**No null: there were no unseen images**" in section


def test_a_dataset_of_your_own_pngs_runs_the_fingerprint_branch(finished, tmp_path, data_root):
    """A site's PNG folders (nested, one 16-bit) as a ``datasets`` entry: the DAG plans the
    whole fingerprint branch for it, and its own jobs (reading the PNGs, the unique target, the
    near-duplicate groups) run, unpickling nothing. The rest of the branch is the code the
    shared MedMNIST run ran end to end (one whole run less in the suite's time)."""
    shifted = yaml.safe_load((finished / "test.yaml").read_text())["generated"]["shifted"]
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data_root"] = str(data_root)
    cfg["datasets"] = [{"name": "site", "train": shifted["train"], "heldout": shifted["heldout"]}]
    cfg["train_sizes"] = {"site": ["all"]}
    (wf / "site.yaml").write_text(yaml.safe_dump(cfg))
    jobs = scheduled(snakemake(wf, "-n", config=wf / "site.yaml"))
    assert {"prepare_data", "near_duplicates", "train_dpm", "sample",
            "train_fingerprint_classifiers", "detect_reproductions", "detector_check",
            "boundary_search", "sample_quality", "surrogate_labels", "side_extract",
            "extraction_metrics", "membership", "exposure", "fingerprint_tables", "verdict",
            "report"} <= set(jobs), jobs
    run = wf / "results/site/n24/seed0"
    snakemake(wf, "results/site/n24/seed0/data/target.json", "results/site/near_duplicates.json",
              config=wf / "site.yaml", guard_log=wf / "guard.log")
    assert np.load(run / "data/train.npz")["images"].shape == (24, 28, 28)
    assert np.load(run / "data/heldout.npz")["images"].shape == (24, 28, 28)
    target = json.loads((run / "data/target.json").read_text())
    assert target["dataset"] == "site"
    assert target["target_nearest_other"]["similarity"] < target["max_twin_similarity"]
    dup = json.loads((wf / "results/site/near_duplicates.json").read_text())
    assert dup["train_images"] == 24 and dup["heldout_images"] == 24
    assert not [line for line in (wf / "guard.log").read_text().splitlines()
                if line.startswith("ATTEMPT")]


def test_a_generated_image_set_is_audited_without_its_model(finished):
    """A folder of a generator's PNGs (nested, one 16-bit): the site's training images moved by
    one pixel. Only the copy question is asked, and it is answered yes."""
    run = finished / "results/generated/shifted"
    for rel in ("data/generated.npz", "data/images.json", "near_duplicates.json",
                "scores/metrics.json", "scores/nearest.csv", "scores/pairs.png",
                "scores/nn_similarity.png"):
        assert (run / rel).stat().st_size > 0, rel
    assert np.load(run / "data/generated.npz")["images"].shape == (24, 28, 28)
    verdict = pd.read_csv(finished / "results/verdict.csv")
    row = verdict[verdict["run"] == "generated shifted"]
    assert row["question"].tolist() == ["do these images copy training images?"]
    assert row["answer"].tolist() == ["yes"] and row["detectable"].notna().all()
    assert row["pixel_only_answer"].tolist() == ["yes"]
    nearest = pd.read_csv(run / "scores/nearest.csv")
    assert len(nearest) == 24 and nearest["copy"].all()
    assert set(nearest["set"]) == {"generated images"}
    assert nearest["transform"].str.startswith("shifted dx=").mean() > 0.9  # found moved
    assert (nearest["pixel_similarity"] < nearest["similarity"]).mean() > 0.9
    report = (finished / "results/report.md").read_text()
    section = report.split("## Generated images shifted")[1].split("\n## ")[0]
    assert "Membership inference, the walk-back and SIDE need the generator's model" in section
    assert "generated images (plain pixels)" in section and "pairs.png" in section


def test_the_known_truth_study_runs_with_two_seeds(finished):
    table = pd.read_csv(finished / "results/study/breastmnist/table.csv").set_index("stand-in")
    assert (table["seeds"] == 2).all()
    for name in ("copies shifted 1 px", "copies shifted 2 px", "copies mirrored",
                 "copies + noise (σ = 2 grey levels)"):
        assert table.loc[name, "yes"] == 2, name
    assert table.loc["unseen images", "yes"] == 0
    assert table.loc["pure noise", "verdicts"] == "samples unlike the training data 2"
    runs = pd.read_csv(finished / "results/study/breastmnist/runs.csv")
    assert len(runs) == 2 * len(table) and runs["detectable"].between(0, 1).all()
    report = (finished / "results/report.md").read_text()
    assert "## Known-truth study of the copy verdict" in report


def test_pickled_only_model_is_refused_before_any_job(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(
        tmp_path / "model", safe_serialization=False)
    assert (tmp_path / "model/unet/diffusion_pytorch_model.bin").exists()
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["models"] = {"mine": {"folder": str(tmp_path / "model"), "train": str(tmp_path),
                              "heldout": str(tmp_path)}}
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, config=wf / "c.yaml", check=False)
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if "config error at models.mine" in x)
    assert "diffusion_pytorch_model.bin is pickled and diffmem never unpickles" in line
    assert "save_pretrained(dir, safe_serialization=True)" in line
    assert not (wf / "results").exists()


def test_editing_an_imported_model_or_its_images_reruns_the_import(tmp_path, own_model):
    """A model's files are inputs of import_model and a digest of its images is a param of
    import_images: an edit re-runs the import and what follows, and so does an older weights
    file put in place with its older time or a re-pointed unet/ link (a digest of the files'
    contents is a param); a bad number stops it before any job, with one line."""
    import os
    import shutil
    from pathlib import Path

    from .own_model import write_pngs

    own = tmp_path / "own"
    shutil.copytree(Path(own_model["folder"]).parent, own)
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["datasets"] = []
    cfg["models"] = {"own": {"folder": str(own / "model"), "train": str(own / "train"),
                             "heldout": str(own / "heldout")}}
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/models/own/model/model_config.json",
               "results/models/own/near_duplicates.json"]
    snakemake(wf, *targets, config=wf / "c.yaml")
    sched = own / "model/scheduler/scheduler_config.json"
    sched.write_text(json.dumps(json.loads(sched.read_text()) | {"prediction_type":
                                                                 "v_prediction"}))
    write_pngs(np.full((1, 28, 28), 90, np.uint8), own / "train", "tr")  # replaces tr00.png
    jobs = scheduled(snakemake(wf, "-n", *targets, config=wf / "c.yaml"))
    assert jobs == {"import_model": 1, "import_images": 1, "model_duplicates": 1}, jobs
    # older weights put in place keeping their older time (cp -p, rsync -a, mv), and a unet/
    # link re-pointed to an older folder: Snakemake's times see nothing, the digest does
    from safetensors.torch import load_file, save_file

    weights = own / "model/unet/diffusion_pytorch_model.safetensors"
    old = tmp_path / "old.safetensors"
    shutil.copy2(weights, old)
    os.utime(old, (1e9, 1e9))  # 2001: older than any output
    state = load_file(str(weights))
    save_file({k: v + 0.01 if k == "conv_in.bias" else v for k, v in state.items()},
              str(weights))
    snakemake(wf, *targets, config=wf / "c.yaml")
    shutil.copy2(old, weights)
    assert scheduled(snakemake(wf, "-n", *targets, config=wf / "c.yaml")) == {"import_model": 1}
    snakemake(wf, *targets, config=wf / "c.yaml")
    shutil.move(own / "model/unet", own / "unet_a")
    shutil.copytree(own / "unet_a", own / "unet_b")  # copy2: the files keep their times
    (own / "model/unet").symlink_to(own / "unet_a", target_is_directory=True)
    assert scheduled(snakemake(wf, "-n", *targets, config=wf / "c.yaml")) == {}
    save_file({k: v - 0.01 if k == "conv_in.bias" else v for k, v in state.items()},
              str(own / "unet_b/diffusion_pytorch_model.safetensors"))
    os.utime(own / "unet_b/diffusion_pytorch_model.safetensors", (1e9, 1e9))
    (own / "model/unet").unlink()
    (own / "model/unet").symlink_to(own / "unet_b", target_is_directory=True)
    assert scheduled(snakemake(wf, "-n", *targets, config=wf / "c.yaml")) == {"import_model": 1}
    sched.write_text(json.dumps(json.loads(sched.read_text()) | {"beta_end": float("nan")}))
    proc = snakemake(wf, *targets, config=wf / "c.yaml", check=False)
    assert proc.returncode != 0 and "localrule" not in proc.stdout + proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "config error at models.own" in x)
    assert f"{sched}: beta_end = nan is invalid: expected a finite number" in line


def test_dry_run_after_a_finished_run_schedules_nothing(finished):
    assert scheduled(snakemake(finished, "-n", config=finished / "test.yaml")) == {}


def test_changing_the_sample_count_reruns_sampling_not_training(finished):
    cfg = yaml.safe_load((finished / "test.yaml").read_text())
    cfg["sample"]["num_samples"] = 30
    (finished / "more.yaml").write_text(yaml.safe_dump(cfg))
    jobs = scheduled(snakemake(finished, "-n", config=finished / "more.yaml"))
    assert {"sample", "detect_reproductions", "fingerprint_tables", "report"} <= set(jobs)
    assert "train_dpm" not in jobs and "prepare_data" not in jobs
    assert "train_fingerprint_classifiers" not in jobs and "boundary_search" not in jobs


def test_html_report(finished):
    snakemake(finished, "--report", "report.html", config=finished / "test.yaml")
    html = (finished / "report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "fingerprinted target" in html
    for label in ("Table 1: reproductions vs N", "Table 2: per dataset", "boundary search",
                  "memorization scores vs their null", "SIDE samples, scale 4",
                  "AMS/UMS vs guidance scale", "Verdict", "membership inference",
                  "near-duplicates"):
        assert label in html, label


def test_bad_config_key_stops_before_any_job(tmp_path):
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["sample"]["sampler"] = "euler"
    (wf / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, config=wf / "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "config error at sample.sampler: value 'euler' is invalid" in proc.stderr
    assert not (wf / "results").exists()


def test_missing_data_offline_names_the_path(tmp_path):
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data_root"] = str(tmp_path / "nowhere")
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, config=wf / "c.yaml", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"MedMNIST file not found: {tmp_path / 'nowhere' / 'breastmnist.npz'}" in out
    assert "zenodo.org" in out
    assert not (wf / "results/breastmnist/n64/seed0/data/train.npz").exists()


def test_paper_config_plans_the_papers_study(tmp_path):
    """A dry run of workflow/configs/paper.yaml plans every model of Tables 1 and 2 (12 runs)."""
    wf = workflow_copy(tmp_path)
    jobs = scheduled(snakemake(wf, "-n", config=wf / "workflow/configs/paper.yaml"))
    assert jobs["train_dpm"] == jobs["sample"] == jobs["boundary_search"] == 12
    assert jobs["side_extract"] == 12 * 3 and jobs["fingerprint_tables"] == 1


def test_quick_config_plans_the_whole_audit(tmp_path):
    """A dry run of workflow/configs/quick.yaml (the README's first look on a CPU) plans every
    question's jobs for its one small run, with 19 walk-back controls."""
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load((wf / "workflow/configs/quick.yaml").read_text())
    assert cfg["boundary"]["controls"] == 19 and cfg["train_sizes"] == [32]
    jobs = scheduled(snakemake(wf, "-n", config=wf / "workflow/configs/quick.yaml"))
    for rule in ("prepare_data", "train_dpm", "sample", "boundary_search", "extraction_metrics",
                 "membership", "exposure", "verdict", "report"):
        assert jobs[rule] == 1, rule
    assert jobs["side_extract"] == len(cfg["side"]["scales"])


def test_trend_config_plans_every_size_and_the_trend(tmp_path):
    """A dry run of workflow/configs/trend.yaml (the README's Results): four sizes of
    BreastMNIST (all 546 as the last) and two seeds, every question's jobs per run, the walk-back
    with 19 controls, the same training steps at every N, and one trend table over them; the
    quick config (one size) plans no trend."""
    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load((wf / "workflow/configs/trend.yaml").read_text())
    assert cfg["train_sizes"] == [16, 64, 256, "all"] and cfg["seeds"] == [0, 1]
    assert cfg["boundary"]["controls"] == 19 and isinstance(cfg["train"]["steps"], int)
    out = snakemake(wf, "-n", config=wf / "workflow/configs/trend.yaml")
    jobs = scheduled(out)
    for rule in ("prepare_data", "train_dpm", "sample", "boundary_search", "extraction_metrics",
                 "membership", "detect_reproductions", "detector_check", "train_copy_embedding"):
        assert jobs[rule] == 8, rule
    assert jobs["trend"] == jobs["verdict"] == jobs["report"] == 1
    assert "results/breastmnist/n546/seed1/model/model.safetensors" in out.stdout + out.stderr
    quick = scheduled(snakemake(wf, "-n", config=wf / "workflow/configs/quick.yaml"))
    assert "trend" not in quick


def test_the_trend_table_answers_as_the_verdict_does(finished, tmp_path):
    """The trend stage read over the shared run, listed as two sizes: each question's answer,
    statistic and null are the verdict's for that run; the reproductions row is the count of
    reproductions.json against rate 1/N; an inconclusive row says what sizes would decide it
    and a decided one says nothing."""
    from diffmem.stages.trend import trend_stage

    run = finished / RUN
    files = {"metrics": "side/metrics.json", "membership": "audit/membership.json",
             "boundaries": "audit/boundary.json", "reproductions": "audit/reproductions.json",
             "detectors": "audit/detectors.json"}
    df = trend_stage(runs=[("breastmnist", 64, 0), ("breastmnist", 128, 0)],
                     **{k: [str(run / f)] * 2 for k, f in files.items()}, alpha=0.05,
                     out_csv=str(tmp_path / "t.csv"), out_md=str(tmp_path / "t.md"),
                     out_png=str(tmp_path / "t.png"))
    verdict = pd.read_csv(finished / "results/verdict.csv")
    verdict = verdict[verdict["run"] == "breastmnist N=64 seed 0"].reset_index(drop=True)
    mine = df[(df["N"] == 64) & (df["question"] != "reproductions")].reset_index(drop=True)
    assert len(mine) == len(verdict) == 4
    assert mine["question"].tolist() == ["copies", "SIDE vs plain", "membership", "walk-back"]
    assert [q.split()[:2] for q in verdict["question"]] == [
        ["does", "plain"], ["does", "SIDE"], ["can", "training"], ["does", "the"]]
    for a, b in zip(mine.to_dict("records"), verdict.to_dict("records"), strict=True):
        assert a["answer"] == b["answer"]
        assert a["value"] == pytest.approx(b["value"]) and a["effect"] == pytest.approx(
            b["effect"])
        assert (a["null"] == pytest.approx(b["null"]) if not pd.isna(b["null"])
                else pd.isna(a["null"]))
        assert bool(a["to_decide"]) == (a["answer"] == "inconclusive"), a
    rep = json.loads((run / "audit/reproductions.json").read_text())
    for n in (64, 128):
        r = df[(df["N"] == n) & (df["question"] == "reproductions")].iloc[0]
        assert r["reproductions"] == rep["reproductions"] and r["null"] == 1 / n
        assert r["expected_at_1_over_N"] == pytest.approx(rep["samples"] / n)
    assert df[(df["N"] == 64) & (df["question"] == "reproductions")].iloc[0]["p_value"] == \
        rep["p_value_greater"]
    md = (tmp_path / "t.md").read_text()
    assert md.count("| 64 | 0 |") == 1 and md.count("| 128 | 0 |") == 1
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_bench_rule_times_every_stage(finished):
    """The on-demand bench rule: one row per stage with positive figures, plus Snakemake's
    benchmark TSV; it is not part of the default target."""
    snakemake(finished, "results/bench/bench.json", config=finished / "test.yaml")
    bench = json.loads((finished / "results/bench/bench.json").read_text())
    stages = [r["stage"] for r in bench["rows"]]
    assert stages[0] == "train: plain diffusers loop" and stages[1] == "train: diffmem"
    sample_row = next(r for r in bench["rows"] if r["stage"].startswith("sample: 8 images"))
    assert sample_row["stage"] == "sample: 8 images, ddim 10 steps"  # no graphs on a CPU
    assert abs(sample_row["image_evaluations_per_s"] - 10 * sample_row["images_per_s"]) < 1
    assert any(s.startswith("classifiers:") for s in stages)
    assert "copy embedding: small, 4 steps" in stages
    assert "copy scoring: 64 generated vs 64 training images, every similarity and both eyes" \
        in stages
    for method in ("exhaustive", "bisection"):
        row = next(r for r in bench["rows"] if r["stage"].startswith(f"boundary search: {method}"))
        assert row["wall_s"] > 0 and row["evaluations"] > 0 and "T = 100, M = 4" in row["stage"]
    assert all(r.get("images_per_s", 1) > 0 for r in bench["rows"])
    assert bench["device"] == "cpu" and "| stage |" in (finished / "results/bench/bench.md"
                                                        ).read_text()
    tsv = (finished / "results/bench/bench.tsv").read_text().splitlines()
    assert tsv[0].startswith("s\th:m:s") and len(tsv) == 2
    assert "bench" not in scheduled(snakemake(finished, "-n", "-F", config=finished / "test.yaml"))


def test_inception_weights_are_an_input_of_fid_only(finished, tmp_path):
    """Configuring FID weights re-runs FID and the tables and report, nothing upstream."""
    import torch

    from diffmem.io import save_safetensors

    save_safetensors(tmp_path / "inception.safetensors", {"w": torch.zeros(1)})
    jobs = dry_run_with(finished, "fid.yaml", lambda c: c.update(
        fid={"inception_weights": str(tmp_path / "inception.safetensors")}))
    # FID of the trained run (breastmnist), not of the imported models
    assert jobs == {"sample_quality": 1, "fingerprint_tables": 1, "report": 1, "all": 1}, jobs


def dry_run_with(finished, tmp_name, change):
    cfg = yaml.safe_load((finished / "test.yaml").read_text())
    change(cfg)
    (finished / tmp_name).write_text(yaml.safe_dump(cfg))
    return scheduled(snakemake(finished, "-n", config=finished / tmp_name))


def test_the_exposure_fdr_reruns_only_the_exposure(finished):
    jobs = dry_run_with(finished, "q.yaml", lambda c: c["membership"].update(exposure_q=0.05))
    assert set(jobs) == {"exposure", "report", "all"}, jobs


def test_a_report_setting_reruns_only_the_report(finished):
    jobs = dry_run_with(finished, "r.yaml",
                        lambda c: c.setdefault("report", {}).update(title="another title"))
    assert set(jobs) == {"report", "all"}


def test_a_training_setting_reruns_training_and_everything_after(finished):
    jobs = dry_run_with(finished, "t.yaml", lambda c: c["train"].update(learning_rate=0.001))
    assert {"train_dpm", "sample", "boundary_search", "detect_reproductions", "side_extract",
            "extraction_metrics", "membership", "verdict", "report"} <= set(jobs)
    assert "near_duplicates" not in jobs
    assert "prepare_data" not in jobs and "train_fingerprint_classifiers" not in jobs


def test_a_new_size_adds_only_its_own_jobs(finished):
    jobs = dry_run_with(finished, "n.yaml",
                        lambda c: c.update(train_sizes={"breastmnist": [64, 32]}))
    assert jobs["prepare_data"] == 1 and jobs["train_dpm"] == 1 and jobs["sample"] == 1
    # the summary rules see one more input; nothing of the N = 64 run reruns
    assert jobs.get("train_fingerprint_classifiers") == 1 and jobs.get("side_extract") == 2
    assert "near_duplicates" not in jobs  # once per dataset, not per size


def test_a_scoring_setting_reruns_the_scores_not_the_models(finished):
    # the scores (and what reads them: the exposure, a generated set's scores, the study)
    scores = {"extraction_metrics", "exposure", "generated_scores", "known_truth_study",
              "verdict", "report", "all"}
    jobs = dry_run_with(finished, "s.yaml", lambda c: c["scoring"].update(min_tail=4))
    assert set(jobs) == scores, jobs
    jobs = dry_run_with(finished, "d.yaml", lambda c: c["duplicates"].update(threshold=4.0))
    # every set's groups, and what stands on them: the imported models' boundary search's
    # controls, membership's halves and null, the latent model's autoencoder test
    assert set(jobs) == scores | {"near_duplicates", "model_duplicates", "generated_duplicates",
                                  "boundary_search_images", "membership",
                                  "train_copy_embedding", "autoencoder_audit"}, jobs


def test_a_copy_embedding_setting_reruns_the_embedding_and_the_scores_not_the_models(finished):
    """An edited copy-eye setting trains the five embeddings again (the MedMNIST run's, the
    pixel model's, the latent model's, each generated set's) and re-scores what reads them; no
    model is trained, imported or sampled again."""
    jobs = dry_run_with(finished, "c.yaml", lambda c: c["copies"].update(steps=100))
    assert jobs.pop("train_copy_embedding") == 5
    assert set(jobs) == {"extraction_metrics", "exposure", "generated_scores",
                         "known_truth_study", "verdict", "report", "all"}, jobs


def test_training_killed_mid_run_resumes_on_the_next_run(tmp_path, data_root):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    wf = workflow_copy(tmp_path)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data_root"] = str(data_root)
    cfg["train"].update(steps=80, checkpoint_every=20, log_every=10)
    (wf / "k.yaml").write_text(yaml.safe_dump(cfg))
    target = f"{RUN}/model/model.safetensors"
    cmd = [sys.executable, "-m", "snakemake", target, "--cores", "2", "--workflow-profile",
           "none", "--configfile", "k.yaml"]
    proc = subprocess.Popen(cmd, cwd=wf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=local_env(), start_new_session=True)
    ckpts = wf / RUN / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("step_*"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job dies, as on a node failure
    proc.wait()
    done = sorted(ckpts.glob("step_*"))
    assert done, "no checkpoint was written before the kill"
    assert not (wf / target).exists(), "a killed job must not leave finished-looking weights"
    snakemake(wf, "--unlock", config=wf / "k.yaml")  # a killed Snakemake leaves its lock
    snakemake(wf, "--rerun-incomplete", target, config=wf / "k.yaml")
    meta = json.loads((wf / RUN / "model/model_config.json").read_text())
    assert meta["train"]["resumed_from"] >= 20  # the step count continued
    steps = pd.read_csv(wf / RUN / "model/loss.csv")["step"].tolist()
    assert steps == list(range(10, 81, 10))
    assert not ckpts.exists()
