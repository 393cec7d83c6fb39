"""Stage of rules/study.smk: the known-truth study of the copy verdict.

How often is the verdict right, what copy rate can it see, and how does it behave on this data?
From a dataset's own images, each seed draws N training images (the unused train-split images
enlarge the null), trains the copy eye on them (:mod:`diffmem.attacks.copies`, training images
only) and builds stand-in "generators" whose answer is known: unseen images (a part of the
unseen images kept out of the null), copies of training images changed the ways models change
them (small noise, shifts, the mirror, rotations, zooms, a crop, blur, noise, a contrast curve,
down-and-up resampling; :mod:`diffmem.data.transforms`, written apart from the eye's own
augmentation), copies changed in ways the eye never trained with (an elastic warp, a 25°
rotation, a cutout), mixtures of copies and unseen images at several rates, and pure noise.
Each runs through the ``generated:`` stage's scoring in-process
(:func:`diffmem.metrics.scores.score_generated`, one Snakemake job for the whole study: hundreds
of jobs would each pay torch's import). Each seed redraws, by whole near-duplicate groups with
the null's twin rules (the pixel twins and the eye's), the unseen stand-in, the null's halves
and the copy sources.

One table: stand-in, truth, the verdict's answers counted over the seeds (both eyes), the pixel
match's alone beside them, the median effect [median interval] and the median detectable rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..attacks.copies import embed_fn, eye_twins, train_embedding, twin_threshold
from ..data import transforms as T
from ..data.duplicates import near_duplicate_groups
from ..data.images import dataset_arrays
from ..device import resolve_device
from ..errors import ConfigError
from ..io import save_csv, save_json, save_text
from ..metrics.null import null_pool, run_null_pool
from ..metrics.scores import Scorer, null_neighbours, score_generated
from ..metrics.similarity import Matching
from ..metrics.stats import NO_NULL, UNLIKE, decide
from .config import STUDY_DEFAULTS, copies_settings

ANSWERS = ("yes", "no", "inconclusive", UNLIKE, NO_NULL)


def noisy(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return T.noisy(std)(images, rng)


# copies changed as models change them, each a stand-in where every image is such a copy:
# (name, transform, inside the copy eye's augmentation ranges?)
CHANGED = [
    ("copies rotated 5°", T.rotated(5), True),
    ("copies rotated 10°", T.rotated(10), True),
    ("copies rotated 15°", T.rotated(15), True),
    ("copies zoomed 1.1", T.zoomed(1.1), True),
    ("copies zoomed 1.2", T.zoomed(1.2), True),
    ("copies cropped to 70 % of the area", T.cropped(0.7), True),
    ("copies blurred σ = 1", T.blurred(1.0), True),
    ("copies + noise of 10 grey levels", T.noisy(10), True),
    ("copies with gamma 0.7", T.gamma(0.7), False),  # below 1/1.4 = 0.714: outside
    ("copies resampled down-up ×0.5", T.down_up(0.5), True),
    ("copies warped elastically", T.elastic(2.0, 3.0), False),
    ("copies rotated 25°", T.rotated(25), False),
    ("copies with a cutout of 10 %", T.cutout(0.1), False),
]


def stand_ins(train: np.ndarray, unseen: np.ndarray, rng: np.random.Generator, cfg: dict
              ) -> list[tuple[str, str, float | None, np.ndarray]]:
    """(name, truth, copy rate, images) of every stand-in of one seed, ``len(unseen)`` images
    each; copy sources are drawn from the training images."""
    g = len(unseen)
    picks = train[rng.choice(len(train), g, replace=len(train) < g)]
    out = [("unseen images", "no copying", 0.0, unseen),
           (f"copies + noise (σ = {cfg['noise_std']:g} grey levels)", "copies", 1.0,
            noisy(picks, cfg["noise_std"], rng))]
    out += [(f"copies shifted {k} px", "copies", 1.0, T.shifted(k)(picks, rng))
            for k in cfg["shifts"]]
    out.append(("copies mirrored", "copies", 1.0, T.mirrored_copy(picks, rng)))
    out += [(name, "copies" if inside else "copies (a change the eye never trained with)", 1.0,
             fn(picks, rng)) for name, fn, inside in CHANGED]
    for rate in cfg["mixture_rates"]:
        k = int(round(rate * g))
        mix = np.concatenate([noisy(picks[:k], cfg["noise_std"], rng), unseen[k:]])
        out.append((f"{100 * rate:g} % noisy copies + unseen", f"copies at {100 * rate:g} %",
                    rate, mix[rng.permutation(g)]))
    for rate in cfg["rotated_mixture_rates"]:
        k = int(round(rate * g))
        mix = np.concatenate([T.rotated_between(5, 15)(picks[:k], rng), unseen[k:]])
        out.append((f"{100 * rate:g} % copies rotated ±5–15° + unseen",
                    f"copies at {100 * rate:g} %", rate, mix[rng.permutation(g)]))
    out.append(("pure noise", "no copying (not images)", 0.0,
                rng.integers(0, 256, unseen.shape, dtype=np.uint8)))
    return out


def split_unseen(pool: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The unseen stand-in (``n`` images of whole near-duplicate groups) and the rest of the
    pool's images with their groups, from which the null is drawn."""
    order = rng.permutation(np.unique(pool["groups"]))
    take, count = [], 0
    for grp in order:
        if count >= n:
            break
        take.append(grp)
        count += int((pool["groups"] == grp).sum())
    chosen = np.isin(pool["groups"], take)
    unseen = pool["images"][np.flatnonzero(chosen)[:n]]
    # a group split at the stand-in's edge goes to neither side
    rest = ~chosen
    return unseen, {"images": pool["images"][rest], "groups": pool["groups"][rest]}


def known_truth_study_stage(*, dataset: str, entry: dict | None, image_size: int, root: str,
                            download: bool, study: dict, scoring: dict, duplicates: dict,
                            device: str, out_runs: str, out_table_csv: str, out_table_md: str,
                            out_json: str, copies: dict | None = None) -> pd.DataFrame:
    cfg = STUDY_DEFAULTS | dict(study or {})
    eye_cfg = copies_settings({"copies": copies or {}})
    dev = resolve_device(device)
    arrays = dataset_arrays(dataset, entry, image_size, root, download)
    train_all = arrays["train_images"]
    heldout = np.concatenate([arrays["val_images"], arrays["test_images"]])
    match = Matching.from_config(scoring.get("matching"), train_all.shape[1])
    groups = near_duplicate_groups(train_all, heldout, metric=duplicates.get("metric", "rms"),
                                   threshold=float(duplicates.get("threshold", 5.0)),
                                   max_diameter=duplicates.get("max_diameter"), matching=match,
                                   device=dev)
    dups = {"train_group": groups["train_group"], "heldout_group": groups["heldout_group"],
            "pairs": groups["pairs"]}
    rows, sizes = [], []
    for s in range(int(cfg["seeds"])):
        rng = np.random.default_rng([int(cfg["seed"]), s])
        idx = np.sort(rng.choice(len(train_all), int(cfg["n_train"]), replace=False))
        unused = np.setdiff1d(np.arange(len(train_all)), idx)
        train = train_all[idx]
        need = 4 * int(scoring.get("min_tail", 5))  # both null halves set the bands
        # refused before any eye is trained when even the pixel twins leave too few unseen
        # images (the eye's twins can only leave fewer)
        pixel_pool, _ = run_null_pool(
            train_indices=idx, heldout=heldout,
            unused={"images": train_all[unused], "indices": unused}, duplicates=dups,
            cfg={"null_max_images": 10**9, "seed": 0})
        if len(pixel_pool["images"]) < int(cfg["generated"]) + need:
            _refuse_small(cfg, dataset, s, pixel_pool, need)
        # the copy eye of this seed's training images, trained on them alone
        eye_seed = int(eye_cfg["seed"]) + 1000 * s
        net, _ = train_embedding(train, groups["train_group"][idx], eye_cfg, seed=eye_seed,
                                 device=dev)
        twins = twin_threshold(net, train, eye_cfg, seed=eye_seed + 1)
        embed = embed_fn(net, dev)
        train_emb = embed(train)
        pool, train_groups = run_null_pool(
            train_indices=idx, heldout=heldout,
            unused={"images": train_all[unused], "indices": unused}, duplicates=dups,
            cfg={"null_max_images": 10**9, "seed": int(rng.integers(2**31))},
            eye_twin=lambda x, e=embed, te=train_emb, t=twins["twin_threshold"], tr=train:
            eye_twins(tr, te, x, e(x), threshold=t, matching=match, device=dev,
                      pixel_cosine=float(eye_cfg["twin_pixel_cosine"])))
        unseen, rest = _refuse_small(cfg, dataset, s, pool, need, rng)
        null = null_pool(heldout=rest["images"], heldout_groups=rest["groups"],
                         unused=rest["images"][:0], unused_groups=rest["groups"][:0],
                         train_groups=train_groups,
                         max_images=int(scoring.get("null_max_images", 10000)),
                         seed=int(rng.integers(2**31)))
        null_nns = null_neighbours(Scorer(train, train_groups, scoring, dev, embed=embed), null)
        c = pool["counts"]
        sizes.append({"seed": s, "train": len(train), "unseen_stand_in": len(unseen),
                      "null_calibrate": int(len(null["calibrate"])),
                      "null_score": int(len(null["score"])),
                      "pixel_twins_excluded": c["heldout_twins_excluded"] +
                      c["unused_train_twins_excluded"],
                      "eye_twins_excluded": c["heldout_eye_twins_excluded"] +
                      c["unused_train_eye_twins_excluded"],
                      "unseen_pool": c["heldout"] + c["unused_train"],
                      "twin_threshold": twins["twin_threshold"]})
        alpha = float(scoring.get("alpha", 0.05))
        for name, truth, rate, images in stand_ins(train, unseen, rng, cfg):
            tests = score_generated(train=train, groups=train_groups, generated=images,
                                    pool=null, cfg=scoring, device=dev, null_nns=null_nns,
                                    embed=embed)["tests"]
            t, pix = tests["plain_copies"], tests.get("plain_copies_pixel")
            rows.append({"seed": s, "stand-in": name, "truth": truth, "copy_rate": rate,
                         "answer": decide(t, alpha=alpha, margin=t["margin"],
                                          null_effect=t["null_effect"]),
                         "pixel_answer": decide(pix, alpha=alpha, margin=pix["margin"],
                                                null_effect=pix["null_effect"]) if pix else None,
                         "effect": t["effect"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                         "p_value": t["p_value"], "detectable": t["detectable_rate"],
                         "unlike_p_value": t["unlike_p_value"], "value": t["value"],
                         "null_value": t["null_value"], "images": t["n"],
                         "null_images": t["null_n"]})
    runs = pd.DataFrame(rows)
    save_csv(out_runs, runs)
    table = summarise(runs)
    save_csv(out_table_csv, table)
    size = pd.DataFrame(sizes).median(numeric_only=True)
    head = (f"Known-truth study on {dataset}: {int(cfg['seeds'])} seeds; each draws "
            f"{int(cfg['n_train'])} training images, trains the copy eye on them "
            f"({eye_cfg['encoder']}, {eye_cfg['steps']} steps), and draws an unseen stand-in of "
            f"{int(size['unseen_stand_in'])} images and a null of about "
            f"{int(size['null_score'])} scored + {int(size['null_calibrate'])} calibrating "
            f"unseen images (medians; of about {int(size['unseen_pool'])} unseen images, "
            f"{int(size['pixel_twins_excluded'])} pixel twins and "
            f"{int(size['eye_twins_excluded'])} of the eye's twins of the seed's training "
            f"images were left out); every stand-in has {int(cfg['generated'])} images. "
            f"\"yes\" counts the verdict's answers (both eyes); \"pixel-only yes\" the pixel "
            f"match's alone.")
    save_text(out_table_md, head + "\n\n" + table.to_markdown(index=False) + "\n")
    save_json(out_json, {"dataset": dataset, "settings": cfg, "copies": eye_cfg,
                         "sizes": sizes,
                         "matching": {"shift": match.shift, "mirror": match.mirror},
                         "rows": table.to_dict(orient="records")})
    return table


def _refuse_small(cfg: dict, dataset: str, seed: int, pool: dict, need: int,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """The unseen stand-in and the rest (:func:`split_unseen`), or one line when the stand-in
    leaves fewer than ``need`` unseen images for the null."""
    unseen, rest = split_unseen(pool, int(cfg["generated"]),
                                rng if rng is not None else np.random.default_rng(0))
    if len(unseen) < int(cfg["generated"]) or len(rest["images"]) < need:
        raise ConfigError(
            f"config error at study.generated: {cfg['generated']} unseen stand-in images "
            f"of {dataset} (seed {seed}: {len(unseen)} drawn) leave {len(rest['images'])} of "
            f"its {len(pool['images'])} unseen images for the null; expected at least "
            f"{need} there (4 x scoring.min_tail); lower study.generated or study.n_train")
    return unseen, rest


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per stand-in: the answers counted over the seeds, the median effect with the
    median interval, the median detectable rate."""
    out = []
    for name, g in runs.groupby("stand-in", sort=False):
        counts = g["answer"].value_counts()
        answers = ", ".join(f"{a} {int(counts[a])}" for a in ANSWERS if a in counts)
        pixel_yes = int((g["pixel_answer"] == "yes").sum()) if g["pixel_answer"].notna().any() \
            else None
        out.append({"stand-in": name, "truth": g["truth"].iloc[0], "seeds": len(g),
                    "verdicts": answers, "yes": int(counts.get("yes", 0)),
                    "pixel-only yes": pixel_yes,
                    "effect [CI] (median)": f"{g['effect'].median():.3f} "
                                            f"[{g['ci_low'].median():.3f}, "
                                            f"{g['ci_high'].median():.3f}]",
                    "detectable (median)": round(float(g["detectable"].median()), 3)})
    return pd.DataFrame(out)
