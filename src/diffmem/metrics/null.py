"""The null: unseen real images, twins of training images excluded, in two halves of whole
near-duplicate groups (one calibrates the bands, the other is scored like generated images)."""

from __future__ import annotations

import numpy as np


def null_pool(*, heldout: np.ndarray, heldout_groups: np.ndarray, unused: np.ndarray,
              unused_groups: np.ndarray, train_groups: np.ndarray, max_images: int,
              seed: int, heldout_twin: np.ndarray | None = None,
              unused_twin: np.ndarray | None = None,
              heldout_eye_twin: np.ndarray | None = None,
              unused_eye_twin: np.ndarray | None = None) -> dict:
    """Unseen real images for the null: held-out images and unused train-split images that share
    no near-duplicate group with the run's training images (nor, where ``*_twin`` flags are
    given, a direct near-duplicate pair; nor, where ``*_eye_twin`` flags are given, are the copy
    eye's twins of a training image, :func:`diffmem.attacks.copies.embedding_twins`), at most
    ``max_images`` (seeded), in two random halves of whole groups: ``calibrate`` (band edges)
    and ``score`` (scored like generated images). Whole groups, so two frames of one unseen
    patient never sit on both sides."""
    seen = set(np.asarray(train_groups).tolist())
    keep_h = np.array([g not in seen for g in heldout_groups], dtype=bool)
    keep_u = np.array([g not in seen for g in unused_groups], dtype=bool)
    if heldout_twin is not None:
        keep_h &= ~heldout_twin
    if unused_twin is not None:
        keep_u &= ~unused_twin
    # the eye's twins, counted apart: images the pixel rule left in
    eye_h = np.zeros(len(keep_h), bool) if heldout_eye_twin is None else heldout_eye_twin & keep_h
    eye_u = np.zeros(len(keep_u), bool) if unused_eye_twin is None else unused_eye_twin & keep_u
    pixel_h, pixel_u = int((~keep_h).sum()), int((~keep_u).sum())
    keep_h &= ~eye_h
    keep_u &= ~eye_u
    images = np.concatenate([heldout[keep_h], unused[keep_u]]) if len(unused) else heldout[keep_h]
    groups = np.concatenate([heldout_groups[keep_h], unused_groups[keep_u]])
    source = np.array(["held-out"] * int(keep_h.sum()) + ["unused train"] * int(keep_u.sum()))
    rng = np.random.default_rng(seed)
    # a seeded order of whole groups (images of a group kept together), cut at max_images
    rank = {g: r for r, g in enumerate(rng.permutation(np.unique(groups)))}
    order = np.array(sorted(range(len(images)), key=lambda i: (rank[groups[i]], i)),
                    dtype=np.int64)[:max_images]
    cut = len(order) // 2
    while 0 < cut < len(order) and groups[order[cut]] == groups[order[cut - 1]]:
        cut += 1  # do not split a group between the halves
    half = cut
    return {"images": images, "groups": groups, "source": source,
            "calibrate": np.sort(order[:half]), "score": np.sort(order[half:]),
            "counts": {"heldout": int(len(heldout)),
                       "heldout_twins_excluded": pixel_h,
                       "unused_train": int(len(unused)),
                       "unused_train_twins_excluded": pixel_u,
                       "heldout_eye_twins_excluded": int(eye_h.sum()),
                       "unused_train_eye_twins_excluded": int(eye_u.sum()),
                       "pool": int(len(images)), "used": int(len(order)),
                       "calibrate": int(half), "score": int(len(order) - half)}}


def run_null_pool(*, train_indices: np.ndarray, heldout: np.ndarray, unused: dict,
                  duplicates: dict | None, cfg: dict, eye_twin=None,
                  eye_heldout: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """The null of one run from its files: (pool, the run's training groups). Without a
    near-duplicate file every image is its own group (then twins are not excluded).
    ``eye_twin`` (images → bool): the copy eye's twins of a training image, left out too;
    ``eye_heldout``: the images it judges in the held-out images' place, row for row (a
    decoded null's raw sources: each reconstruction keeps its source's verdict)."""
    if eye_heldout is not None and len(eye_heldout) != len(heldout):
        raise ValueError(f"{len(eye_heldout)} images to judge for {len(heldout)} held-out ones")
    n_h, n_u = len(heldout), len(unused["images"])
    h_twin = u_twin = None
    if duplicates is None:
        train_groups = np.arange(len(train_indices))
        h_groups, u_groups = -1 - np.arange(n_h), -1 - n_h - np.arange(n_u)
    else:
        train_groups = duplicates["train_group"][train_indices]
        h_groups = duplicates["heldout_group"]
        u_groups = duplicates["train_group"][unused["indices"]]
        if "pairs" in duplicates:  # direct near-duplicates of a training image, chains aside
            n_split = len(duplicates["train_group"])
            twin = np.zeros(n_split + n_h, bool)
            pairs = duplicates["pairs"]
            used = np.zeros(n_split + n_h, bool)
            used[np.asarray(train_indices)] = True
            twin[pairs[used[pairs[:, 0]], 1]] = True
            twin[pairs[used[pairs[:, 1]], 0]] = True
            h_twin, u_twin = twin[n_split:], twin[np.asarray(unused["indices"], dtype=np.int64)]
    judged = heldout if eye_heldout is None else eye_heldout
    eyes = {} if eye_twin is None else {"heldout_eye_twin": eye_twin(judged),
                                        "unused_eye_twin": eye_twin(unused["images"])}
    pool = null_pool(heldout=heldout, heldout_groups=h_groups, unused=unused["images"],
                     unused_groups=u_groups, train_groups=train_groups,
                     max_images=int(cfg.get("null_max_images", 10000)),
                     seed=int(cfg.get("seed", 4)), heldout_twin=h_twin, unused_twin=u_twin,
                     **eyes)
    pool["counts"]["near_duplicates_excluded"] = duplicates is not None
    return pool, train_groups
