"""Stages of rules/data.smk: ``prepare_data`` (a MedMNIST split or your own images, a seeded
subset of N training images, the synthetic anatomic fingerprint on one unique target) and
``near_duplicates`` (the dataset's near-duplicate groups)."""

from __future__ import annotations

import logging

import numpy as np

from ..attacks.fingerprint.target import SAF, random_saf, unique_target
from ..data.duplicates import near_duplicate_groups
from ..data.images import dataset_arrays, to_channels
from ..data.medmnist import max_train_size
from ..device import resolve_device
from ..errors import DataError
from ..io import save_figure, save_json, save_npz
from ..metrics.similarity import Matching
from ..plotting import plt


def prepare_data_stage(*, flag: str, size: int, root: str, download: bool, n_train: int, seed: int,
                       saf_radius: float, saf_grey: float, to_rgb: bool, out_train: str,
                       out_target: str, out_target_json: str, out_heldout: str, out_figure: str,
                       out_unused: str | None = None, max_twin_similarity: float = 0.95,
                       entry: dict | None = None, matching: dict | None = None) -> dict:
    """Build the training set with one fingerprinted image and write the stage's outputs.

    The subset is drawn with ``numpy.random.default_rng(seed)``; the same seed gives
    byte-identical files. The target is one image of the subset with no near-duplicate in the
    train and held-out splits (:func:`~diffmem.attacks.fingerprint.target.unique_target`); its
    clean original is replaced by the stamped copy, so the SAF occurs exactly once in the
    training data. ``entry``: your own
    images instead of a MedMNIST file (see :func:`~diffmem.data.images.dataset_arrays`).
    ``matching`` (the config's section): the transforms the uniqueness filter matches under; it
    is recorded in ``target.json`` for the stages that filter by the target (C_ID's negatives,
    the controls).
    """
    limit = max_train_size(flag) if entry is None else None
    if limit is not None and not 2 <= n_train <= limit:
        raise DataError(f"training size {n_train} for {flag}: expected 2..{limit} "
                        f"(the number of images in its train split)")
    arrays = dataset_arrays(flag, entry, size, root, download)
    train_all = arrays["train_images"]
    if n_train < 2:
        raise DataError(f"training size {n_train} for {flag}: expected at least 2")
    if n_train > len(train_all):
        raise DataError(f"training size {n_train} exceeds the {len(train_all)} training images "
                        f"in the file for {flag}; the maximum is {len(train_all)}")
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(train_all), size=n_train, replace=False))
    images = to_channels(train_all[indices], to_rgb)
    labels = arrays["train_labels"][indices]
    heldout_raw = np.concatenate([arrays["val_images"], arrays["test_images"]])
    match = Matching.from_config(matching, size)
    target_pos, nearest = unique_target(train_all, heldout_raw, indices, rng, max_twin_similarity,
                                        matching=match)
    saf = random_saf(rng, size, saf_radius, saf_grey)
    original = images[target_pos].copy()
    stamped = saf.stamp(original)
    images[target_pos] = stamped  # the clean original is gone from the training set

    heldout = np.concatenate([to_channels(arrays["val_images"], to_rgb),
                              to_channels(arrays["test_images"], to_rgb)])
    heldout_labels = np.concatenate([arrays["val_labels"], arrays["test_labels"]])

    save_npz(out_train, images=images, labels=labels, indices=indices)
    save_npz(out_target, saf=stamped, original=original, mask=saf.mask(size))
    n_unused = int(len(train_all) - n_train)
    meta = {
        "dataset": flag, "image_size": size, "n_train": n_train, "seed": seed,
        "target_position": target_pos, "target_source_index": int(indices[target_pos]),
        "target_nearest_other": nearest, "max_twin_similarity": max_twin_similarity,
        "matching": {"shift": match.shift, "mirror": match.mirror},
        "saf": {"center_yx": [saf.cy, saf.cx], "radius": saf.radius, "grey": saf.grey},
        "heldout_images": int(len(heldout)), "unused_train_images": n_unused,
        "channels": 3 if images.ndim == 4 else 1,
    }
    save_json(out_target_json, meta)
    save_npz(out_heldout, images=heldout, labels=heldout_labels)
    if out_unused:  # train-split images this run did not train on: part of its null
        unused = np.setdiff1d(np.arange(len(train_all)), indices)
        save_npz(out_unused, images=to_channels(train_all[unused], to_rgb), indices=unused)
    plot_target(original, stamped, saf, out_figure)
    return meta


def plot_target(original: np.ndarray, stamped: np.ndarray, saf: SAF, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    cmap = "gray" if original.ndim == 2 else None
    axes[0].imshow(original, cmap=cmap, vmin=0, vmax=255)
    axes[0].set_title("target x* (removed)")
    axes[1].imshow(stamped, cmap=cmap, vmin=0, vmax=255)
    axes[1].set_title("x_SAF (in training set)")
    diff = np.abs(stamped.astype(int) - original.astype(int))
    axes[2].imshow(diff if diff.ndim == 2 else diff.max(-1), cmap="magma")
    axes[2].set_title(f"difference (r={saf.radius:g})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def near_duplicates_stage(*, dataset: str, entry: dict | None, image_size: int, root: str,
                          download: bool, cfg: dict, matching: dict, device: str, out_npz: str,
                          out_json: str, out_png: str) -> dict:
    """Near-duplicate groups over train ∪ val ∪ test of one dataset (a MedMNIST file or your
    own images, ``entry``), computed once per dataset on its clean images."""
    arrays = dataset_arrays(dataset, entry, image_size, root, download)
    heldout = np.concatenate([arrays["val_images"], arrays["test_images"]])
    return write_near_duplicates(name=dataset, train=arrays["train_images"], heldout=heldout,
                                 cfg=cfg, matching=matching, device=device, out_npz=out_npz,
                                 out_json=out_json, out_png=out_png)


def write_near_duplicates(*, name: str, train: np.ndarray, heldout: np.ndarray, cfg: dict,
                          matching: dict, device: str, out_npz: str, out_json: str,
                          out_png: str) -> dict:
    """The groups (:func:`diffmem.data.duplicates.near_duplicate_groups`, under the config's
    ``matching``) and what they mean for a run, as the stage's files: group ids and direct
    pairs, a summary, a figure of twins."""
    res = near_duplicate_groups(train, heldout, metric=cfg.get("metric", "rms"),
                                threshold=float(cfg.get("threshold", 5.0)),
                                max_diameter=cfg.get("max_diameter"),
                                matching=Matching.from_config(matching, train.shape[1]),
                                device=resolve_device(device))
    summary = {"dataset": name, **res["summary"]}
    # the pairs themselves too (indices into train ∪ held-out): a split chain must not let a
    # direct twin of a training image into a run's null
    save_npz(out_npz, train_group=res["train_group"], heldout_group=res["heldout_group"],
             pairs=res["pairs"].astype(np.int64))
    if summary["heldout_images_sharing_a_group_with_train"]:
        logging.getLogger(__name__).warning(
            "%s: %d of %d held-out images are near-duplicates of training images; they are left "
            "out of the null, but a held-out set full of twins is not unseen data",
            name, summary["heldout_images_sharing_a_group_with_train"], len(heldout))
    save_json(out_json, summary)
    _pairs_figure(np.concatenate([train, heldout]), res["pairs"], res["groups"], len(train),
                  out_png, summary)
    return summary


def _pairs_figure(images, pairs, groups, n_train, path, s, show: int = 10):
    cross = [p for p in pairs if (p[0] < n_train) != (p[1] < n_train)]
    chosen = (cross + [p for p in pairs if (p[0] < n_train) == (p[1] < n_train)])[:show]
    cols = max(len(chosen), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.3 * cols, 3.0), squeeze=False)
    cmap = "gray" if images.ndim == 3 else None
    for ax in axes.flat:
        ax.axis("off")
    for j, (a, b) in enumerate(chosen):
        for row, i in enumerate((a, b)):
            axes[row, j].imshow(images[i], cmap=cmap, vmin=0, vmax=255)
            where = "train" if i < n_train else "held-out"
            axes[row, j].set_title(f"{where} #{i if i < n_train else i - n_train}", fontsize=6)
    fig.suptitle(f"{s['dataset']}: {s['images_with_a_twin']} of {s['images']} images have a "
                 f"near-duplicate ({s['metric']} threshold {s['threshold']:g}); "
                 f"{s['heldout_images_sharing_a_group_with_train']} held-out images share a "
                 f"group with a training image", fontsize=7)
    save_figure(fig, path)
