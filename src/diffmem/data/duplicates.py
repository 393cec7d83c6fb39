"""Near-duplicate structure of a dataset: groups of near-identical images over its train and
held-out splits, computed once per dataset on the clean images of the file.

MedMNIST splits by image, not by patient, so one patient's frames sit in the training split and
in the held-out splits alike (BreastMNIST: 110 of 546 training images have a twin within 5 grey
levels RMS). Every count of "distinct training images" and the null of unseen images need those
groups: a held-out twin of a training image is not an unseen image.

Two images are near-duplicates when their similarity (``rms``: RMS pixel difference in grey
levels at most ``threshold``; or ``cosine`` of mean-centred pixels at least ``threshold``) says
so, under the audit's matching (:class:`~diffmem.metrics.similarity.Matching`: the best over
small shifts and the mirror, in either direction), so a patient's frame moved by a pixel or
mirrored is a twin too. Groups are the connected components of that relation, so no
near-duplicate pair is ever
split between groups. Chains are bounded: a component whose diameter (its least similar pair)
is worse than ``max_diameter`` (default: twice the threshold for ``rms``) is split by leader
clustering (the image with the most near-duplicates claims all of them, repeatedly), which
keeps every group within twice the threshold of its leader. The JSON says how many were split.
"""

from __future__ import annotations

import numpy as np

from ..metrics.similarity import PLAIN_PIXELS, Matching, similarity_blocks


def near_pairs(images: np.ndarray, metric: str, threshold: float, device="cpu",
               chunk: int = 1024, matching: Matching = PLAIN_PIXELS) -> np.ndarray:
    """All pairs (i < j) of near-duplicates, shape (P, 2): i matches j or j matches i (a
    shifted window of one against the other's centre crop is not symmetric)."""
    limit = -threshold if metric == "rms" else threshold
    pairs = []
    for start, s, _ in similarity_blocks(images, images, metric, device, chunk, matching):
        qi, rj = torch_nonzero(s >= limit)
        qi = qi + start
        keep = qi != rj
        pairs.append(np.sort(np.stack([qi[keep], rj[keep]], 1), axis=1))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def torch_nonzero(mask) -> tuple[np.ndarray, np.ndarray]:
    nz = mask.nonzero().cpu().numpy()
    return nz[:, 0].astype(np.int64), nz[:, 1].astype(np.int64)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels


def _pair_similarity(images: np.ndarray, members: np.ndarray, metric: str,
                     matching: Matching) -> np.ndarray:
    s = next(similarity_blocks(images[members], images[members], metric, chunk=len(members),
                               matching=matching))[1].cpu().numpy()
    return np.maximum(s, s.T)


def group_images(images: np.ndarray, *, metric: str = "rms", threshold: float = 5.0,
                 max_diameter: float | None = None, device="cpu",
                 matching: Matching = PLAIN_PIXELS) -> dict:
    """Group ids (0..G−1) of near-identical images, with chains bounded (module docstring)."""
    if max_diameter is None:
        max_diameter = 2 * threshold if metric == "rms" else 2 * threshold - 1
    limit = -threshold if metric == "rms" else threshold
    worst = -max_diameter if metric == "rms" else max_diameter
    pairs = near_pairs(images, metric, threshold, device, matching=matching)
    labels = _components(len(images), pairs)
    split = 0
    next_id = labels.max() + 1 if len(labels) else 0
    for g in np.flatnonzero(np.bincount(labels) > 2):
        members = np.flatnonzero(labels == g)
        s = _pair_similarity(images, members, metric, matching)
        if s.min() >= worst:
            continue
        split += 1
        near = s >= limit
        free = np.ones(len(members), bool)
        first = True
        while free.any():
            degree = (near & free[None] & free[:, None]).sum(1) * free
            lead = int(np.argmax(degree))
            claim = near[lead] & free
            if not first:
                labels[members[claim]] = next_id
                next_id += 1
            first = False
            free &= ~claim
    _, labels = np.unique(labels, return_inverse=True)
    return {"groups": labels, "pairs": pairs, "chains_split": split,
            "max_diameter": float(max_diameter)}


def near_duplicate_groups(train: np.ndarray, heldout: np.ndarray, *, metric: str,
                          threshold: float, max_diameter: float | None,
                          matching: Matching = PLAIN_PIXELS, device="cpu") -> dict:
    """Groups over train ∪ held-out (:func:`group_images`) and a summary of what they mean for
    a run: how many training images have a twin, how many held-out images share a group with a
    training image, under ``matching``."""
    images = np.concatenate([train, heldout])
    res = group_images(images, metric=metric, threshold=threshold, max_diameter=max_diameter,
                       device=device, matching=matching)
    g = res["groups"]
    tg, hg = g[: len(train)], g[len(train):]
    size = np.bincount(g)
    train_twin = size[tg] > 1
    train_groups = set(tg.tolist())
    heldout_twin_of_train = np.array([x in train_groups for x in hg], dtype=bool)
    summary = {
        "metric": metric, "threshold": threshold,
        "max_diameter": res["max_diameter"], "chains_split": res["chains_split"],
        "images": int(len(images)), "train_images": int(len(train)),
        "heldout_images": int(len(heldout)), "groups": int(size.size),
        "near_duplicate_pairs": int(len(res["pairs"])),
        "images_with_a_twin": int((size[g] > 1).sum()),
        "duplicate_rate": float((size[g] > 1).mean()),
        "train_images_with_a_twin": int(train_twin.sum()),
        "heldout_images_sharing_a_group_with_train": int(heldout_twin_of_train.sum()),
        "largest_group": int(size.max()) if size.size else 0,
        "matching": {"shift": matching.shift, "mirror": matching.mirror},
        "note": ("groups are connected components of the near-duplicate relation on the clean "
                 "images of train ∪ val ∪ test, each pair matched at its best shift and mirror; "
                 "a component less similar than max_diameter inside is split by leader "
                 "clustering"),
    }
    return {**res, "train_group": tg, "heldout_group": hg, "summary": summary}
