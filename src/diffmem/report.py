"""The Markdown report: one section per run (dataset, N, seed) with its figures and numbers.

Images are linked with paths relative to the report, so ``results/`` can be zipped and read
anywhere. ``snakemake --report`` builds the HTML version from the rules' ``report()`` outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .io import load_json, save_text


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
    ]
    audit = run_dir / "audit"
    if (audit / "boundary.json").exists():
        c = load_json(run_dir / "classifiers/classifiers.json")
        d = load_json(audit / "reproductions.json")
        b = load_json(audit / "boundary.json")
        rows += [
            ("C_SAF validation accuracy / precision / recall",
             f"{c['c_saf']['accuracy']:.3f} / {c['c_saf']['precision']:.3f} / "
             f"{c['c_saf']['recall']:.3f}"),
            ("C_ID validation accuracy / precision / recall",
             f"{c['c_id']['accuracy']:.3f} / {c['c_id']['precision']:.3f} / "
             f"{c['c_id']['recall']:.3f}"),
            ("samples flagged SAF+ / ID+ / both (reproductions)",
             f"{d['saf_positive']} / {d['id_positive']} / **{d['reproductions']}**"),
            ("ID+ samples with the disc at its place (pixel test, strength ≥ 0.5)",
             f"{d.get('id_positive_with_disc', '–')}"),
            ("expected under p = 1/N", f"{d['expected']:.2f}"),
            ("one-sided binomial p-value, rate < 1/N / rate > 1/N",
             f"{d['p_value_less']:.3g} / {d['p_value_greater']:.3g}"),
            ("MAE of reproductions to x_SAF",
             f"{d['mae_reproductions']:.4f}" if d["mae_reproductions"] is not None else "–"),
            ("anonymity indicator ρ = t′/T", f"**{b['rho']:.3f}** (t′ = {b['t_star']}, "
             f"{b['method']}, M = {b['m']}, {b['evaluations']} levels, {b['seconds']:.1f} s)"),
            ("upper Darboux area of p̂_t", f"{b['upper_darboux_area']:.3f}"),
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
                  "*Boundary search: p̂_t with its 95 % band; ρ marks the largest t that still "
                  "returns to x_SAF.*", ""]
    side = run_dir / "side"
    if (side / "metrics.json").exists():
        parts += side_section(side, base)
    return "\n".join(parts)


def side_section(side: Path, base: Path) -> list[str]:
    m = load_json(side / "metrics.json")
    clf = load_json(side / "classifier.json")
    taus = [f"{t:g}" for t in m["thresholds"]]
    head = ["method", "scale", *[f"AMS@{t}" for t in taus], *[f"UMS@{t}" for t in taus],
            "Carlini extractions (unique)", "mean NN cosine"]
    lines = [f"### SIDE extraction vs plain sampling ({m['budget']} images each)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in m["rows"]:
        cells = [r["method"], f"{r['scale']:g}" if r["method"] == "SIDE" else "–",
                 *[f"{r[f'ams@{t}']:.4f}" for t in taus], *[f"{r[f'ums@{t}']:.4f}" for t in taus],
                 f"{r['carlini_extractions']} ({r['carlini_unique']})",
                 f"{r['mean_nn_cosine']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    acc = ", ".join(f"t∈[{a['t_from']},{a['t_to']}): {a['accuracy']:.2f}"
                    for a in clf["accuracy_by_t"])
    lines += ["", f"Surrogate classifier accuracy by noise level ({acc}; chance "
                  f"{clf['chance']:.2f}).", "",
              f"![pairs]({_rel(side / 'pairs.png', base)})", "",
              "*Top SIDE pairs: generated image (top) and its nearest training image.*", "",
              f"![hist]({_rel(side / 'nn_similarity.png', base)})", "",
              f"![scales]({_rel(side / 'ams_ums_vs_scale.png', base)})", "",
              "*AMS/UMS against guidance scale; dotted: plain sampling.*", ""]
    return lines


def write_report(*, out_markdown: str, runs: list, run_dirs: list[str], title: str,
                 settings: dict, fingerprint_tables: list[str] | None = None,
                 fingerprint_figure: str | None = None) -> None:
    base = Path(out_markdown).parent
    lines = [f"# {title}", "",
             "Which training images can this diffusion model reproduce, how likely is it, and "
             "can an attacker pull them out? Summary tables first, then one section per trained "
             "model.", ""]
    if fingerprint_tables:
        t1, t2 = (Path(t).read_text() for t in fingerprint_tables)
        lines += ["## Fingerprint audit: reproductions of the fingerprinted image", "",
                  "A reproduction is a generated image that both adversary classifiers (C_SAF: "
                  "carries the fingerprint; C_ID: is the target patient) accept. Under the null "
                  "hypothesis the model reproduces the target as often as any training image "
                  "(rate 1/N).", "", t1, "",
                  "## Fingerprint audit: per dataset (as the paper's Table 2)", "",
                  "ρ = t′/T: the largest diffusion step from which reverse runs still return to "
                  "the fingerprinted image (1 = the model walks back to it from pure noise).", "",
                  t2, ""]
    if fingerprint_figure:
        lines += [f"![vs N]({_rel(Path(fingerprint_figure), base)})", ""]
    for (dataset, n, seed), run_dir in zip(runs, run_dirs, strict=True):
        lines.append(run_section(Path(run_dir), base, dataset, int(n), int(seed)))
    lines += ["## Settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(),
              "```", ""]
    save_text(out_markdown, "\n".join(lines))
