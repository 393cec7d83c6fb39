"""Stage of rules/copies.smk: ``train_copy_embedding``, the learned copy eye of one set of
training images (:mod:`diffmem.attacks.copies`), trained on those images alone."""

from __future__ import annotations

import hashlib

import numpy as np

from ..attacks.copies import save_embedding, train_embedding, twin_threshold
from ..device import resolve_device
from ..io import load_npz


def training_groups(train: dict, duplicates_npz: str | None) -> np.ndarray | None:
    """The near-duplicate group of every training image (a run's ``train.npz`` holds its rows in
    the dataset's train split, ``indices``), or None without a near-duplicate file."""
    if not duplicates_npz:
        return None
    groups = load_npz(duplicates_npz)["train_group"]
    return groups[np.asarray(train["indices"])] if "indices" in train else groups


def train_copy_embedding_stage(*, train_npz: str, duplicates_npz: str | None, cfg: dict,
                               seed: int, device: str, out_weights: str, out_json: str,
                               progress: bool = False) -> dict:
    """Train the copy embedding on the training images of ``train_npz`` (their near-duplicate
    groups from ``duplicates_npz``: twins are not each other's negatives), measure its twin
    threshold on them, and save weights (safetensors) and a JSON that says what it is."""
    dev = resolve_device(device)
    train = load_npz(train_npz)
    images = train["images"]
    net, summary = train_embedding(images, training_groups(train, duplicates_npz), cfg,
                                   seed=seed, device=dev, progress=progress)
    twins = twin_threshold(net, images, cfg, seed=seed + 1)
    meta = {"config": {k: v for k, v in cfg.items()}, "channels": int(
        1 if images.ndim == 3 else images.shape[-1]), "size": int(images.shape[1]),
        "seed": int(seed), "device": str(dev), "train_images": int(len(images)),
        # the images it was trained on, so a reader can tell which embedding belongs to which
        "train_digest": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16],
        "training": summary, **twins,
        "trained_on": "the training images only (no generated image, no unseen image, no "
                      "validation set: a fixed number of steps)"}
    save_embedding(net, out_weights, meta, out_json)
    return meta
