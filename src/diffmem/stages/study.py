"""Stage of rules/study.smk: the known-truth study of the copy verdict.

How often is the verdict right, what copy rate can it see, and how does it behave on this data?
From a dataset's own images, each seed draws N training images (the unused train-split images
enlarge the null) and builds stand-in "generators" whose answer is known: unseen images (a part
of the unseen images kept out of the null), copies of training images with small noise, copies
shifted by a few pixels, mirrored copies, mixtures of noisy copies and unseen images at several
rates, and pure noise. Each runs through the ``generated:`` stage's scoring in-process
(:func:`diffmem.metrics.scores.score_generated`, one Snakemake job for the whole study: hundreds
of jobs would each pay torch's import). Each seed redraws, by whole near-duplicate groups with
the null's twin rule, the unseen stand-in, the null's halves and the copy sources.

One table: stand-in, truth, the verdict's answers counted over the seeds, the median effect
[median interval] and the median detectable rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.duplicates import near_duplicate_groups
from ..data.images import dataset_arrays
from ..device import resolve_device
from ..errors import ConfigError
from ..io import save_csv, save_json, save_text
from ..metrics.null import null_pool, run_null_pool
from ..metrics.scores import Scorer, null_neighbours, score_generated
from ..metrics.similarity import Matching, mirrored
from ..metrics.stats import NO_NULL, UNLIKE, decide
from .config import STUDY_DEFAULTS

ANSWERS = ("yes", "no", "inconclusive", UNLIKE, NO_NULL)


def shifted(images: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by k pixels in a random direction (max(|dx|, |dy|) = k), its border
    filled by repeating the edge (a random crop of a slightly larger image)."""
    out = np.empty_like(images)
    moves = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
             if max(abs(dy), abs(dx)) == k]
    pad = ((k, k), (k, k)) + ((0, 0),) * (images.ndim - 3)
    h, w = images.shape[1:3]
    for i, img in enumerate(images):
        dy, dx = moves[rng.integers(len(moves))]
        big = np.pad(img, pad, mode="edge")
        out[i] = big[k - dy:k - dy + h, k - dx:k - dx + w]
    return out


def noisy(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(images + rng.normal(0, std, images.shape)), 0, 255).astype(np.uint8)


def stand_ins(train: np.ndarray, unseen: np.ndarray, rng: np.random.Generator, cfg: dict
              ) -> list[tuple[str, str, float | None, np.ndarray]]:
    """(name, truth, copy rate, images) of every stand-in of one seed, ``len(unseen)`` images
    each; copy sources are drawn from the training images."""
    g = len(unseen)
    picks = train[rng.choice(len(train), g, replace=len(train) < g)]
    out = [("unseen images", "no copying", 0.0, unseen),
           (f"copies + noise (σ = {cfg['noise_std']:g} grey levels)", "copies", 1.0,
            noisy(picks, cfg["noise_std"], rng))]
    out += [(f"copies shifted {k} px", "copies", 1.0, shifted(picks, k, rng))
            for k in cfg["shifts"]]
    out.append(("copies mirrored", "copies", 1.0, mirrored(picks)))
    for rate in cfg["mixture_rates"]:
        k = int(round(rate * g))
        mix = np.concatenate([noisy(picks[:k], cfg["noise_std"], rng), unseen[k:]])
        out.append((f"{100 * rate:g} % noisy copies + unseen", f"copies at {100 * rate:g} %",
                    rate, mix[rng.permutation(g)]))
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
                            out_json: str) -> pd.DataFrame:
    cfg = STUDY_DEFAULTS | dict(study or {})
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
        pool, train_groups = run_null_pool(
            train_indices=idx, heldout=heldout,
            unused={"images": train_all[unused], "indices": unused}, duplicates=dups,
            cfg={"null_max_images": 10**9, "seed": int(rng.integers(2**31))})
        unseen, rest = split_unseen(pool, int(cfg["generated"]), rng)
        need = 4 * int(scoring.get("min_tail", 5))  # both null halves set the bands
        if len(unseen) < int(cfg["generated"]) or len(rest["images"]) < need:
            raise ConfigError(
                f"config error at study.generated: {cfg['generated']} unseen stand-in images "
                f"of {dataset} (seed {s}: {len(unseen)} drawn) leave {len(rest['images'])} of "
                f"its {len(pool['images'])} unseen images for the null; expected at least "
                f"{need} there (4 x scoring.min_tail); lower study.generated or study.n_train")
        null = null_pool(heldout=rest["images"], heldout_groups=rest["groups"],
                         unused=rest["images"][:0], unused_groups=rest["groups"][:0],
                         train_groups=train_groups,
                         max_images=int(scoring.get("null_max_images", 10000)),
                         seed=int(rng.integers(2**31)))
        train = train_all[idx]
        null_nns = null_neighbours(Scorer(train, train_groups, scoring, dev), null)
        sizes.append({"seed": s, "train": len(train), "unseen_stand_in": len(unseen),
                      "null_calibrate": int(len(null["calibrate"])),
                      "null_score": int(len(null["score"]))})
        for name, truth, rate, images in stand_ins(train, unseen, rng, cfg):
            t = score_generated(train=train, groups=train_groups, generated=images, pool=null,
                                cfg=scoring, device=dev, null_nns=null_nns)["tests"]["plain_copies"]
            rows.append({"seed": s, "stand-in": name, "truth": truth, "copy_rate": rate,
                         "answer": decide(t, alpha=float(scoring.get("alpha", 0.05)),
                                          margin=t["margin"], null_effect=t["null_effect"]),
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
            f"{int(cfg['n_train'])} training images, an unseen stand-in of "
            f"{int(size['unseen_stand_in'])} images and a null of about "
            f"{int(size['null_score'])} scored + {int(size['null_calibrate'])} calibrating "
            f"unseen images (medians); every stand-in has {int(cfg['generated'])} images.")
    save_text(out_table_md, head + "\n\n" + table.to_markdown(index=False) + "\n")
    save_json(out_json, {"dataset": dataset, "settings": cfg, "sizes": sizes,
                         "matching": {"shift": match.shift, "mirror": match.mirror},
                         "rows": table.to_dict(orient="records")})
    return table


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per stand-in: the answers counted over the seeds, the median effect with the
    median interval, the median detectable rate."""
    out = []
    for name, g in runs.groupby("stand-in", sort=False):
        counts = g["answer"].value_counts()
        answers = ", ".join(f"{a} {int(counts[a])}" for a in ANSWERS if a in counts)
        out.append({"stand-in": name, "truth": g["truth"].iloc[0], "seeds": len(g),
                    "verdicts": answers, "yes": int(counts.get("yes", 0)),
                    "effect [CI] (median)": f"{g['effect'].median():.3f} "
                                            f"[{g['ci_low'].median():.3f}, "
                                            f"{g['ci_high'].median():.3f}]",
                    "detectable (median)": round(float(g["detectable"].median()), 3)})
    return pd.DataFrame(out)
