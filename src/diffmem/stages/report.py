"""Stage of rules/report.smk: the Markdown report, one section per run (dataset, N, seed) with
its figures and numbers.

Images are linked with paths relative to the report, so ``results/`` can be zipped and read
anywhere. ``snakemake --report`` builds the HTML version from the rules' ``report()`` outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..diffusion.schedule import MAX_SIGNAL
from ..io import load_json, save_text
from .verdict import _fmt_test, _num


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def run_section(run_dir: Path, base: Path, dataset: str, n: int, seed: int) -> str:
    target = load_json(run_dir / "data/target.json")
    model = load_json(run_dir / "model/model_config.json")
    samples = load_json(run_dir / "samples/samples.json")
    tr = model["train"]
    saf = target["saf"]
    rows = [
        ("training images N", n),
        ("target (position in subset / index in train split)",
         f"{target['target_position']} / {target['target_source_index']}"),
        ("SAF centre (y, x), radius, grey", f"{tuple(saf['center_yx'])}, {saf['radius']:g} px, "
                                            f"{saf['grey']:g}"),
        ("U-Net parameters", f"{tr['parameters']:,}"),
        ("training steps × batch", f"{tr['steps']} × {tr['batch_size']}"
                                   + (f" (resumed at {tr['resumed_from']})"
                                      if tr["resumed_from"] else "")),
        ("final training loss", f"{tr['final_loss']:.4f}" if tr["final_loss"] else "n/a"),
        ("training time", f"{tr['seconds']:.1f} s on {tr['device']} "
                          f"({tr['images_per_second']:.0f} images/s, bf16={tr['bf16']})"),
        ("samples", f"{samples['num_samples']:,} ({samples['sampler']}, {samples['steps']} steps)"),
        ("sampling time", f"{samples['seconds']:.1f} s on {samples['device']} "
                          f"({samples['images_per_second']:.0f} images/s)"),
        _signal_row(samples),
    ]
    audit = run_dir / "audit"
    if (audit / "boundary.json").exists():
        c = load_json(run_dir / "classifiers/classifiers.json")
        d = load_json(audit / "reproductions.json")
        b = load_json(audit / "boundary.json")
        rows += [
            ("C_SAF validation AUC / precision / recall / accuracy",
             f"{c['c_saf'].get('auc', float('nan')):.3f} / {c['c_saf']['precision']:.3f} / "
             f"{c['c_saf']['recall']:.3f} / {c['c_saf']['accuracy']:.3f} "
             f"({c['c_saf']['positives']} of {c['c_saf']['n']} with a disc)"),
            ("C_ID validation AUC / precision / recall / accuracy",
             f"{c['c_id'].get('auc', float('nan')):.3f} / {c['c_id']['precision']:.3f} / "
             f"{c['c_id']['recall']:.3f} / {c['c_id']['accuracy']:.3f}"),
            ("samples flagged SAF+ / ID+ / both (reproductions)",
             f"{d['saf_positive']} / {d['id_positive']} / **{d['reproductions']}**"),
            ("ID+ samples with the disc at its place (pixel test, strength ≥ 0.5)",
             f"{d.get('id_positive_with_disc', '–')}"),
            ("expected under p = 1/N", f"{d['expected']:.2f}"),
            *_detector_rows(audit),
            ("one-sided binomial p-value, rate < 1/N / rate > 1/N (assumes the detectors find "
             "every reproduction and nothing else; the corrected rate above does not)",
             f"{d['p_value_less']:.3g} / {d['p_value_greater']:.3g}"),
            ("MAE of reproductions to x_SAF",
             f"{d['mae_reproductions']:.4f}" if d["mae_reproductions"] is not None else "–"),
            ("boundary search", f"{b['method']}, {b['sampler']} {b['steps']} steps, "
             f"M = {b['m']}, {b['evaluations']} levels per query, {b['seconds']:.1f} s"),
            ("paper's t′/T (C_SAF ∧ C_ID accept)", f"{b['rho_paper']:.3f} (upper Darboux area "
             f"{b['upper_darboux_area']:.3f})"),
            ("ρ = t′/T, target / matched unseen controls (classifier-free test)",
             f"**{b['rho']:.3f}** / " + ", ".join(f"{r:.3f}" for r in b["rho_control"])
             + (" (a lower bound: p̂_t is positive above the bisection's answer)"
                if b.get("t_star_is_lower_bound") else "")),
            ("t50 (isotonic p̂_t = 0.5) [95 % interval], target / controls",
             f"**{b['t50']:.3f}** [{b['t50_ci'][0]:.3f}, {b['t50_ci'][1]:.3f}] / "
             + ", ".join(f"{r:.3f}" for r in b["t50_control"])),
            ("rank of the target among the controls (p)", f"{b['rank_p_value_t50']:.3f}"),
            ("walks back to the fingerprinted image?", f"**{b['walks_back']}**"),
            ("false accepts from nearly pure noise (controls, t/T ≥ 0.9)",
             "–" if b["false_accept_rate"] is None else
             f"rate {b['false_accept_rate']:.4f}: about {b['expected_false_accepts']:.2f} of "
             f"the target's accepts are expected by chance"),
        ]
    parts = [f"## {dataset}, N = {n}, seed {seed}", "", _table(rows), "",
             f"![target]({_rel(run_dir / 'data/target.png', base)})", "",
             "*The fingerprinted target: the clean original (removed from the training set), the "
             "stamped copy that replaced it, and their difference.*", "",
             f"![loss]({_rel(run_dir / 'model/loss.png', base)})", "",
             "*Training loss (ε-prediction MSE) of the DPM.*", "",
             f"![samples]({_rel(run_dir / 'samples/grid.png', base)})", "",
             "*Images sampled from the trained model's EMA weights.*", ""]
    if (audit / "boundary.json").exists():
        parts += [f"![reproductions]({_rel(audit / 'reproductions.png', base)})", "",
                  "*Samples flagged by the adversary classifiers: reproductions (both say yes) "
                  "and single-classifier flags (false-positive candidates).*", "",
                  f"![boundary]({_rel(audit / 'boundary.png', base)})", "",
                  "*Boundary search: p̂_t of the target and of matched unseen controls (same "
                  "disc) with their 95 % bands; the target's t50 beside the controls' range.*",
                  ""]
    side = run_dir / "side"
    if (side / "metrics.json").exists():
        parts += side_section(side, base)
    if (audit / "membership.json").exists():
        parts += membership_section(audit, base)
    return "\n".join(parts)


def _signal_row(samples: dict) -> tuple[str, str]:
    m = samples.get("signal_at_start")
    text = "–" if m is None else f"{m:.3f}" + (
        "" if m <= MAX_SIGNAL else
        f" (**above {MAX_SIGNAL}: the process does not reach noise where sampling starts, so "
        f"samples drawn from noise are partly noise; sampled all the same because the entry "
        f"sets allow_signal_at_start**)")
    return "signal left where sampling starts from noise (m at its first step; ≤ 0.1 needed)", text


def model_section(run_dir: Path, base: Path, name: str) -> str:
    """An imported model: where it came from, its images, samples and every audit."""
    model = load_json(run_dir / "model/model_config.json")
    images = load_json(run_dir / "data/images.json")
    samples = load_json(run_dir / "samples/samples.json")
    dup = load_json(run_dir / "near_duplicates.json")
    src, diff = model.get("source", {}), model["diffusion"]
    schedule = "trained betas" if diff.get("trained_betas") else diff["beta_schedule"]
    latent = model.get("latent")
    kind = "pixel-space (the U-Net denoises images)" if not latent else (
        f"latent: autoencoder {latent['kind']} (`{src.get('autoencoder', '?')}/`) and a U-Net "
        f"on its {'×'.join(map(str, latent['shape']))} latents z = {latent['scale']:g}·E(x) "
        f"(scale: {latent['scale_source']}); latents "
        f"{'clipped to [-1, 1] as its scheduler does' if latent['clip'] else 'unclipped'}, "
        f"images clipped after decoding")
    rows = [
        ("model folder", f"`{src.get('folder', '?')}` ({src.get('scheduler', '?')})"),
        ("model kind", kind),
        ("noise process", f"T = {diff['num_train_timesteps']}, {schedule}, "
                          f"{diff.get('prediction_type', 'epsilon')} prediction"),
        ("training / held-out images", f"{images['train_images']} / {images['heldout_images']}"
                                       f" ({images['image_size']} px, {images['channels']} "
                                       f"channel(s), resize {images['resize']})"),
        ("held-out images sharing a near-duplicate group with a training image",
         f"{dup['heldout_images_sharing_a_group_with_train']} (left out of the null)"),
        ("samples", f"{samples['num_samples']:,} ({samples['sampler']}, {samples['steps']} steps)"),
        _signal_row(samples),
    ]
    audit = run_dir / "audit"
    if (audit / "autoencoder.json").exists():
        rows += autoencoder_rows(audit / "autoencoder.json", run_dir / "side/metrics.json")
    if (audit / "boundary.json").exists():
        b = load_json(audit / "boundary.json")
        q = b["query"]
        rows += [
            ("boundary search from", f"training image {q['name']} ({q['chosen']}); "
                                     f"{len(b['t50_control'])} unseen controls"),
            ("t50 [95 % interval], image / controls",
             f"**{b['t50']:.3f}** [{b['t50_ci'][0]:.3f}, {b['t50_ci'][1]:.3f}] / "
             + (", ".join(f"{r:.3f}" for r in b["t50_control"]) or "none")),
            ("ρ, image / controls", f"{b['rho']:.3f} / "
                                    + (", ".join(f"{r:.3f}" for r in b["rho_control"])
                                       or "none")),
            ("walks back to the training image?", f"**{b['walks_back']}**" + (
                f" (rank p {b['rank_p_value_t50']:.3f})" if b["t50_control"] else "")),
        ]
    no_null = [] if images["heldout_images"] else [
        "**No held-out images were given, so none of the scores below has a null**: nothing "
        "says what images the model never saw would score. Every score is reported; the "
        "questions that need unseen images (copies? members told apart? walks back?) are "
        "answered *inconclusive (no null)*, and only SIDE against plain sampling is tested. "
        "Add held-out images (`heldout:` in the model's entry) for a verdict.", ""]
    parts = [f"## Imported model {name}", "", *no_null, _table(rows), "",
             f"![samples]({_rel(run_dir / 'samples/grid.png', base)})", "",
             "*Images sampled from the imported model.*", ""]
    if (audit / "boundary.json").exists():
        parts += [f"![boundary]({_rel(audit / 'boundary.png', base)})", "",
                  "*Boundary search from a training image and from unseen controls.*", ""]
    if (run_dir / "side/metrics.json").exists():
        parts += side_section(run_dir / "side", base)
    if (audit / "membership.json").exists():
        parts += membership_section(audit, base)
    return "\n".join(parts)


def autoencoder_rows(ae_json: Path, metrics_json: Path) -> list[tuple[str, str]]:
    """A latent model's null and its autoencoder's own question."""
    t = load_json(ae_json)["test"]
    rows = [("the copy question's null",
             "decoder-aware: the unseen images passed through the autoencoder, D(E(x)) (a "
             "decoder smooths, and smoothing raises nearest-training similarity: a raw null can "
             "say yes of a model that only smooths)")]
    if metrics_json.exists():
        raw = load_json(metrics_json)["tests"].get("plain_copies_raw_null")
        if raw is not None and raw.get("effect") is not None:
            rows.append(("copies against the raw null (comparison only)",
                         f"{raw['effect']:.3f} [{raw['ci_low']:.3f}, {raw['ci_high']:.3f}], "
                         f"p = {raw['p_value']:.3g} (its answer is in the verdict table)"))
    if t.get("effect") is None:
        rows.append((t["question"], t.get("answer", "not tested")))
    else:
        rows.append((t["question"],
                     f"AUC {t['effect']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}], "
                     f"p = {t['p_value']:.3g} ({t['n']} training vs {t['null_n']} unseen; "
                     f"mean error {t['mean_error_train']:.4f} vs {t['mean_error_unseen']:.4f}; "
                     f"its answer is in the verdict table)"))
    return rows


def _detector_rows(audit: Path) -> list[tuple[str, str]]:
    if not (audit / "detectors.json").exists():
        return []
    q = load_json(audit / "detectors.json")
    lo, hi = q["rate_ci"]
    corrected = "–" if q["rate_corrected"] is None else f"{q['rate_corrected']:.2e}"
    return [
        ("C_SAF ∧ C_ID against this DPM: recall [95 %] / false-positive rate [95 %]",
         f"{q['recall']:.3f} [{q['recall_ci'][0]:.3f}, {q['recall_ci'][1]:.3f}] on "
         f"{q['positives']} pixel-test reproductions ({q.get('recall_from', 'renderings')}) / "
         f"{q['fpr']:.4f} [{q['fpr_ci'][0]:.4f}, "
         f"{q['fpr_ci'][1]:.4f}] on {q['negatives']} samples"),
        ("reproduction rate, corrected for recall and false positives [95 %]",
         f"{corrected} [{lo:.2e}, {hi:.2e}] (1/N = {q['null_rate']:.2e}); 'rate below 1/N': "
         f"**{q['below_null']}**" + ("" if q["below_null"] == "supported" else
                                     f" (the upper bound {hi:.2e} is the finding)")),
    ]


def _power_words(t: dict) -> str:
    """What a copy test could have seen, and whether the samples look like the data at all."""
    if "detectable_rate" not in t:
        return ""
    rate = t["detectable_rate"]
    share = 100 * t["null_rate_calibration"]
    seen = (f" At these sizes ({t['n']} generated, {t['null_n']} unseen images, {share:.1f} % of "
            f"unseen images in the high band) the test finds "
            + (f"an excess of {rate:.3f} with 80 % power" if rate is not None else
               "no excess with 80 % power")
            + (f", so it cannot say no to one of {t['margin']:g}" if rate is None or
               rate > t["margin"] else "") + ".")
    eyes = t.get("unlike_p_values")
    unlike = (f"one-sided Mann–Whitney p = {t['unlike_p_value']:.3g}" if not eyes else
              f"the smaller of each eye's one-sided Mann–Whitney p, doubled: "
              f"{t['unlike_p_value']:.3g} (" + ", ".join(f"{k} {v:.3g}" for k, v in eyes.items())
              + ")")
    recall = (f" The copy eye's own check: its smallest recall over the transform families is "
              f"{t['smallest_recall']:.2f} ({t['smallest_recall_family']})"
              + (f", over the families it never trained with {t['smallest_recall_untrained']:.2f}"
                 f" ({t['smallest_recall_untrained_family']})"
                 if "smallest_recall_untrained" in t else "")
              + "; copies changed like that are found at about that rate, so a \"no\" covers "
                "them only that far." if "smallest_recall" in t else "")
    return seen + (f" Generated images less similar to the training images than unseen images: "
                   f"{unlike}.") + recall


def copy_eye_lines(m: dict) -> list[str]:
    """What the learned copy eye is, which unseen images it left out, and its retrieval check."""
    eye = m.get("copy_eye")
    if not eye:
        return []
    null = m["null"]
    twins = null.get("heldout_eye_twins_excluded", 0) + null.get(
        "unused_train_eye_twins_excluded", 0)
    lines = ["### The learned copy eye", "",
             f"An embedding ({eye['encoder']} encoder, NT-Xent, {eye['steps']} steps, final loss "
             f"{eye['final_loss']:.2f}) trained on the {eye['train_images']} training images "
             f"only: {eye['trained_on']}. The verdict's copy score takes, per pair of a "
             f"generated and a training image, the more unusual of the two eyes (each read as "
             f"the share of unseen calibration images it puts farther from the training set), "
             f"so copies the model rotated, zoomed, moved, cropped or smoothed count as copies. "
             f"Its twin threshold (embedding cosine {eye['twin_threshold']:.3f}, the "
             f"{eye['twin_quantile']:g} quantile of the training images' own views) with a pixel "
             f"cosine of at least {eye['twin_pixel_cosine']:g} left {twins} further "
             f"unseen images out of the null as another frame of a training patient.", ""]
    if not eye.get("checked"):
        return lines + [eye.get("note", ""), ""]
    lines += [f"Its own check: {eye['images_per_family']} training images per transform family, "
              f"changed that way and scored like generated images; recall is the share that "
              f"lands in the high band (where unseen images land at the null's false-positive "
              f"rate).", "", "| family | trained with it | recall: both eyes | embedding alone "
              "| pixel match alone |", "|---|---|---|---|---|"]
    pixel = next(k for k in eye["families"][0] if k.startswith("recall_") and k not in (
        "recall_combined", "recall_embedding"))
    for r in eye["families"]:
        lines.append(f"| {r['family']} | {'yes' if r['trained'] else '**no**'} | "
                     f"{r['recall_combined']:.2f} | {r.get('recall_embedding', float('nan')):.2f} "
                     f"| {r[pixel]:.2f} |")
    return lines + [""]


def scores_lines(m: dict) -> list[str]:
    """The scores of one run (a model's plain samples and SIDE, or a generated set) beside the
    null: the bands, the table, the primary and the secondary tests."""
    kind = m["primary_similarity"]
    e = m["bands"][kind]["edges"]
    bands = m["bands"][kind]
    how = (f"quantiles {', '.join(f'{q:g}' for q in bands['quantiles_used'])} of "
           f"{bands['calibration_images']} " + ("training images' nearest-other-group similarity"
                                                if m.get("no_null") else
                                                "unseen images' nearest-training similarity")
           if bands["quantiles_used"] else "fixed")
    null = m["null"]
    if m.get("no_null"):
        about = ("**No null: there were no unseen images**, so these scores are reported and "
                 "not tested against what unseen images score; the bands are a reference from "
                 "the training images themselves, not a null.")
    else:
        eye_h, eye_u = (null.get("heldout_eye_twins_excluded", 0),
                        null.get("unused_train_eye_twins_excluded", 0))
        about = (f"The null: {null['score']} unseen real images scored (another "
                 f"{null['calibrate']} set the bands) out of {null['heldout']} held-out images "
                 f"({null['heldout_twins_excluded']} left out as near-duplicates of training "
                 f"images" + (f", {eye_h} as the copy eye's twins" if eye_h else "") + ") and "
                 f"{null['unused_train']} unused training-split images "
                 f"({null['unused_train_twins_excluded']} left out"
                 + (f", {eye_u} as the copy eye's twins" if eye_u else "") + ").")
    head = ["method", "scale", "images", "AMS low", "AMS mid", "AMS high",
            f"UMS low @{m['equal_size']}", f"UMS mid @{m['equal_size']}",
            f"UMS high @{m['equal_size']}", "Carlini rate", f"Carlini distinct @{m['equal_size']}",
            "mean NN sim"]
    title = "without a null" if m.get("no_null") else "beside their null"
    match = m["tests"]["plain_copies"].get("matching") or {}
    moves = (f"the best over shifts of up to {match.get('shift', 0)} pixels"
             + (" and the left-right mirror" if match.get("mirror") else "")
             if match else "pixel to pixel")
    pixel = m["bands"].get("pixel", {}).get("edges")
    named = "both eyes" if kind == "combined" else f"{kind} similarity"
    lines = [*copy_eye_lines(m), f"### Memorization scores {title} ({named})", "",
             f"Each image is matched to a training image at {moves}; the rows marked *plain "
             f"pixels* match pixel to pixel (cosine" + (f", high band ≥ {pixel[2]:.3f}"
                                                        if pixel else "") + "). "
             f"Bands: low [{e[0]:.3f}, {e[1]:.3f}), mid [{e[1]:.3f}, {e[2]:.3f}), high ≥ "
             f"{e[2]:.3f} ({how}). {about} UMS and distinct Carlini "
             f"extractions count groups of near-duplicate training images, at "
             f"{m['equal_size']} images per set (mean over random subsets).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [r for r in m["rows"] if r["similarity"] == kind] + \
        [r for r in m["rows"] if r["similarity"] == "pixel"]
    for r in rows:
        label = r["method"] + (" (plain pixels)" if r["similarity"] == "pixel" else "")
        cells = [label, f"{r['scale']:g}" if r["scale"] is not None else "–",
                 str(r["images"]), *[f"{r[f'ams_{b}']:.3f}" for b in ("low", "mid", "high")],
                 *[f"{r[f'ums_{b}']:.3f}" for b in ("low", "mid", "high")],
                 f"{r['carlini_rate']:.3f}", f"{r['carlini_unique']:.2f}",
                 f"{r['mean_nn_similarity']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Primary statistics (effect [95 % interval], one-sided p):", ""]
    for t in m["tests"].values():
        lines.append(f"* {t['question']} {t['statistic']}: {_fmt_test(t)} "
                     f"(value {t['value']:.3f} vs null {_num(t['null_value'], 'none')}; "
                     f"{t['test'] if t.get('effect') is not None else t['no_null']})."
                     + _power_words(t))
    lines += ["", "Secondary tests (p-values Holm-adjusted within the run):", ""]
    if not m["secondary"]:
        lines.append("None: each compares a set with unseen images, and there are none.")
    else:
        lines += ["| test | effect [95 % interval] | p | p (Holm) |", "|---|---|---|---|"]
    for t in m["secondary"]:
        lines.append(f"| {t['name']} | {t['effect']:.3f} [{t['ci_low']:.3f}, "
                     f"{t['ci_high']:.3f}] | {t['p_value']:.3g} | {t['p_holm']:.3g} |")
    return lines


def side_section(side: Path, base: Path) -> list[str]:
    m = load_json(side / "metrics.json")
    clf = load_json(side / "classifier.json")
    lines = scores_lines(m)
    # a latent model's null is decoder-aware (its unseen images through the autoencoder)
    null_words = (m["null_kind"].split(": ", 1)[1] if "null_kind" in m
                  else "unseen real images")
    acc = ", ".join(f"t∈[{a['t_from']},{a['t_to']}): {a['accuracy']:.2f}"
                    for a in clf["accuracy_by_t"])
    lines += ["", f"Every guidance scale is in the table; the best scale ({m['best_scale']:g}) "
                  f"was chosen on one half of each cluster's SIDE images (UMS high "
              + ", ".join(f"s={k}: {v:.3f}" for k, v in m["best_scale_selection_ums_high"].items())
              + ") and is scored on the other half. Surrogate classifier accuracy by noise level "
                f"({acc}; chance {clf['chance']:.2f}).", "",
              f"![pairs]({_rel(side / 'pairs.png', base)})", "",
              "*Top SIDE pairs: generated image (top) and its nearest training image.*", "",
              f"![hist]({_rel(side / 'nn_similarity.png', base)})", "",
              f"*Nearest-training similarity of generated images beside {null_words} (the "
              "null), with the band edges.*", "",
              f"![scales]({_rel(side / 'ams_ums_vs_scale.png', base)})", "",
              "*AMS/UMS in the high band against guidance scale; dotted: plain sampling, dashed: "
              "unseen real images.*", ""]
    return lines


def generated_section(run_dir: Path, base: Path, name: str) -> str:
    """A generator's images audited without its model: the images, their near-duplicates and
    the copy question beside the null."""
    images = load_json(run_dir / "data/images.json")
    dup = load_json(run_dir / "near_duplicates.json")
    m = load_json(run_dir / "scores/metrics.json")
    rows = [("generated images", f"`{images['generated']}`: {images['generated_images']} images "
                                 f"({images['image_size']} px, {images['channels']} channel(s), "
                                 f"resize {images['resize']})"),
            ("training / held-out images", f"{images['train_images']} / "
                                           f"{images['heldout_images']}"),
            ("held-out images sharing a near-duplicate group with a training image",
             f"{dup['heldout_images_sharing_a_group_with_train']} (left out of the null)")]
    no_null = [] if images["heldout_images"] else [
        "**No held-out images were given, so the copy question has no null**: the scores are "
        "reported and the answer is *inconclusive (no null)*. Add images the generator never "
        "saw (`heldout:` in the set's entry) for a verdict.", ""]
    return "\n".join([
        f"## Generated images {name}", "",
        "Audited from the images alone: only *do these images copy training images?* is asked. "
        "Membership inference, the walk-back and SIDE need the generator's model, which was not "
        "given.", "", *no_null, _table(rows), "", *scores_lines(m), "",
        f"![pairs]({_rel(run_dir / 'scores/pairs.png', base)})", "",
        "*Top pairs: generated image (top) and its nearest training image, with the transform "
        "that matched.*", "",
        f"![hist]({_rel(run_dir / 'scores/nn_similarity.png', base)})", "",
        "*Nearest-training similarity of the generated images beside unseen real images (the "
        "null), with the band edges.*", ""])


def study_section(table_md: str) -> list[str]:
    return ["## Known-truth study of the copy verdict", "",
            "Stand-in generators whose answer is known, built from the dataset's own images and "
            "scored exactly as a generated image set is; the verdict's answers counted over the "
            "seeds.", "", Path(table_md).read_text().rstrip(), ""]


def membership_section(audit: Path, base: Path) -> list[str]:
    s = load_json(audit / "membership.json")
    head = ["### Membership inference", ""]
    if s.get("effect") is None:
        return head + [f"**Not run: {s['no_null']}** (the attacks' null). Mean denoising loss "
                       f"of the {s['members']} training images: {s['mean_loss_members']:.4f}.",
                       "", f"![membership]({_rel(audit / 'membership.png', base)})", ""]
    names = {"loss": "loss", "sima": "SimA", "pia": "PIA"}
    if s.get("fallback"):
        lines = [f"**The loss attack on every image** ({s['fallback']}). AUC {_fmt_test(s)} "
                 f"over {s['members']} training and {s['nonmembers']} unseen images (chance "
                 f"0.5); TPR {s['tpr']:.3f} [{s['tpr_ci_low']:.3f}, {s['tpr_ci_high']:.3f}] "
                 f"at FPR {s['fpr_achieved']:.3f}."]
    else:
        h = s["halves"]
        sel, sco = h["selection"], h["scoring"]
        lines = [f"Every attack tried at t/T ∈ the grid on a selection half ({sel['members']} "
                 f"training, {sel['nonmembers']} unseen images); the "
                 f"chosen one, **{names[s['chosen']]} at t/T = {s['chosen_t_over_T']:g}**, and "
                 f"every attack at its own chosen t are reported on the other half "
                 f"({sco['members']} training, {sco['nonmembers']} unseen images): AUC "
                 f"{_fmt_test(s)} (chance 0.5).", "",
                 "| attack | queries per image | t/T (chosen on the selection half) | "
                 "selection AUC | AUC [95 %] (scoring half) | TPR at 1 % FPR [95 %] | "
                 "TPR at 0.1 % FPR |", "|---|---|---|---|---|---|---|"]
        for name, r in s["attacks"].items():
            low = "–" if "tpr_0.1%" not in r else \
                f"{r['tpr_0.1%']:.3f} [{r['tpr_0.1%_ci'][0]:.3f}, {r['tpr_0.1%_ci'][1]:.3f}]"
            lines.append(f"| {names[name]}{' (chosen)' if name == s['chosen'] else ''} | "
                         f"{r['queries']} | {r['t_over_T']:g} | {r['selection_auc']:.3f} | "
                         f"{r['effect']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                         f"{r['tpr']:.3f} [{r['tpr_ci_low']:.3f}, {r['tpr_ci_high']:.3f}] at "
                         f"{r['fpr_achieved']:.3f} | {low} |")
        lines += ["", "TPR at 0.1 % FPR is shown only where at least 1,000 unseen images can "
                      "resolve it; an FPR above the target means the null is too small to "
                      "resolve it (the smallest FPR it can show)."]
    lines += ["", f"![membership]({_rel(audit / 'membership.png', base)})", "",
              "*Scores of the chosen attack, training vs unseen images, and every attack's ROC "
              "on a log-scaled FPR axis.*", ""]
    if (audit / "exposure.json").exists():
        e = load_json(audit / "exposure.json")
        lines += ["### Which training images are most exposed", "",
                  f"Each training image's membership p-value against the {e['nonmembers']} "
                  f"unseen images of the scoring half (`exposure.csv`, with the samples that "
                  f"copy it and its walk-back t50 where the boundary search ran from it): "
                  f"**{e['bh_passed']} of {e['scored']}** pass Benjamini–Hochberg at q = "
                  f"{e['q']:g}"
                  + (f" (the scoring half's training images; the {e['selection_half_listed']} "
                     f"of the selection half are listed, not counted: their scores chose the "
                     f"attack, so their p-values lean low)" if e.get("selection_half_listed")
                     else "")
                  + f". The smallest attainable p is {_num(e['smallest_p'], fmt='.4f')}"
                  f" (1/(n + 1)); at that p Benjamini–Hochberg needs "
                  f"{e['hits_needed_at_smallest_p']} simultaneous hits"
                  + (", so fewer exposed images cannot show" if e.get("bh_reachable") else
                     f", more than the {e['scored']} tested: **no image could pass at these "
                     f"sizes**, so none passing is no finding")
                  + f". {e['copied_training_images']} training images are copied by at least "
                  f"one plain sample.", "",
                  f"![exposure]({_rel(audit / 'exposure.png', base)})", ""]
    return head + lines


def duplicates_lines(paths: list[str], base: Path) -> list[str]:
    lines = ["## Near-duplicates in the data", ""]
    for p in paths:
        d = load_json(p)
        lines.append(f"* {d['dataset']}: {d['images_with_a_twin']} of {d['images']} images "
                     f"({100 * d['duplicate_rate']:.1f} %) have a near-duplicate "
                     f"({d['metric']} threshold {d['threshold']:g}); "
                     f"{d['train_images_with_a_twin']} of {d['train_images']} training-split "
                     f"images, and {d['heldout_images_sharing_a_group_with_train']} of "
                     f"{d['heldout_images']} held-out images share a group with a training-"
                     f"split image. {d['groups']} groups, largest {d['largest_group']}, "
                     f"{d['chains_split']} chained groups split.")
        lines += ["", f"![near-duplicates]({_rel(Path(p).with_suffix('.png'), base)})", ""]
    return lines


def report_stage(*, out_markdown: str, runs: list, run_dirs: list[str], title: str, settings: dict,
                 fingerprint_tables: list[str] | None = None, fingerprint_figure: str | None = None,
                 verdict: str | None = None, duplicates: list[str] | None = None,
                 generated: dict | None = None, studies: list[str] | None = None,
                 trend: list[str] | None = None) -> None:
    """The report; ``generated``: name → run folder of each generated image set; ``studies``:
    the known-truth studies' Markdown tables; ``trend``: the table and figure of every question
    against N."""
    base = Path(out_markdown).parent
    lines = [f"# Verdict — {title}", ""]
    if verdict:
        lines += [Path(verdict).read_text().rstrip(), ""]
    lines += ["Which training images can this diffusion model reproduce, how likely is it, and "
              "can an attacker pull them out? The verdict first, then the summary tables, then "
              "one section per trained model, every score beside what unseen real images score.",
              ""]
    if trend:
        table, figure = trend
        lines += ["## Every question against the training-set size N", "",
                  Path(table).read_text().rstrip(), "",
                  f"![every question against N]({_rel(Path(figure), base)})", ""]
    if duplicates:
        lines += duplicates_lines(duplicates, base)
    if fingerprint_tables:
        t1, t2 = (Path(t).read_text() for t in fingerprint_tables)
        lines += ["## Fingerprint audit: reproductions of the fingerprinted image", "",
                  "A reproduction is a generated image that both adversary classifiers (C_SAF: "
                  "carries the fingerprint; C_ID: is the target patient) accept. Under the null "
                  "hypothesis the model reproduces the target as often as any training image "
                  "(rate 1/N).", "", t1, "",
                  "## Fingerprint audit: per dataset (as the paper's Table 2)", "",
                  "t′ (t_dash_paper): the paper's largest diffusion step from which reverse runs "
                  "still return to the fingerprinted image (both classifiers accept). ρ: the "
                  "same with the classifier-free test that also runs on matched unseen "
                  "controls (rho_controls); t50: where an isotonic fit of p̂_t crosses 0.5; "
                  "rank_p: the target's rank among the controls; walks_back: the verdict.", "",
                  t2, ""]
    if fingerprint_figure:
        lines += [f"![vs N]({_rel(Path(fingerprint_figure), base)})", ""]
    for run, run_dir in zip(runs, run_dirs, strict=True):
        if isinstance(run, str):
            lines.append(model_section(Path(run_dir), base, run))
        else:
            dataset, n, seed = run
            lines.append(run_section(Path(run_dir), base, dataset, int(n), int(seed)))
    for name, run_dir in (generated or {}).items():
        lines.append(generated_section(Path(run_dir), base, name))
    for table in studies or []:
        lines += study_section(table)
    lines += ["## Settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(),
              "```", ""]
    save_text(out_markdown, "\n".join(lines))
