"""Prepare data: a MedMNIST split, a seeded training subset and the synthetic anatomic fingerprint.

MedMNIST files follow the ``medmnist`` package's naming: ``{flag}.npz`` for 28×28 and
``{flag}_{size}.npz`` for 64, 128 and 224, each with ``{train,val,test}_{images,labels}``.
We read them with numpy (``allow_pickle=False``) rather than through ``medmnist``'s Dataset
class, which insists on the official sample counts; ``medmnist`` is used only to download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import save_figure, save_json, save_npz

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


class DataError(RuntimeError):
    """A data file is missing, corrupt, or cannot give what the config asks for."""


def medmnist_info(flag: str) -> dict:
    from medmnist import INFO

    if flag not in INFO:
        known = ", ".join(sorted(k for k in INFO if not k.endswith("3d")))
        raise DataError(f"unknown MedMNIST flag {flag!r}; expected one of: {known}")
    if flag.endswith("3d"):
        raise DataError(f"MedMNIST flag {flag!r} is a 3D dataset; only 2D flags are supported")
    return INFO[flag]


def medmnist_filename(flag: str, size: int) -> str:
    if size not in SIZES:
        raise DataError(f"image size {size} is not a MedMNIST size; expected one of {SIZES}")
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_url(flag: str, size: int) -> str:
    info = medmnist_info(flag)
    return info["url" if size == 28 else f"url_{size}"]


def max_train_size(flag: str) -> int:
    """Official number of training images of a flag (what a subset may at most take)."""
    return int(medmnist_info(flag)["n_samples"]["train"])


def locate_medmnist(flag: str, size: int, root: str | os.PathLike, download: bool) -> Path:
    """The path of ``flag``'s file under ``root``, downloaded with medmnist if allowed."""
    info = medmnist_info(flag)
    root = Path(os.path.expanduser(str(root)))
    path = root / medmnist_filename(flag, size)
    if path.exists():
        return path
    url = medmnist_url(flag, size)
    if not download:
        raise DataError(
            f"MedMNIST file not found: {path}; download it from {url} and put it there "
            f"(or set download: true, or point data_root at the folder that holds it)"
        )
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    try:
        dataset_class = getattr(medmnist, info["python_class"])
        dataset_class(split="train", download=True, root=str(root), size=size)
    except Exception as err:  # medmnist hides the network error behind a generic RuntimeError
        raise DataError(
            f"could not download {path.name} (offline?): put the file from {url} at {path}"
        ) from err
    if not path.exists():
        raise DataError(f"download reported success but {path} is missing; get it from {url}")
    return path


def load_medmnist(path: str | os.PathLike, flag: str, size: int) -> dict[str, np.ndarray]:
    """Read and check a MedMNIST ``.npz``: keys, dtype, layout and size of every split."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:
        raise DataError(f"cannot read {path} as a MedMNIST .npz ({type(err).__name__}: {err}); "
                        f"delete it and download it again from {medmnist_url(flag, size)}") from err
    channels = int(medmnist_info(flag)["n_channels"])
    shape = (size, size) if channels == 1 else (size, size, 3)
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in arrays:
                raise DataError(f"{path} has no array {split}_{kind!s}; found {sorted(arrays)} "
                                f"(expected the medmnist layout train/val/test _images/_labels)")
        img = arrays[f"{split}_images"]
        if img.dtype != np.uint8 or img.shape[1:] != shape:
            raise DataError(f"{path}: {split}_images is {img.dtype} {img.shape}; expected uint8 "
                            f"(N, {', '.join(map(str, shape))}) for {flag} at size {size}")
        if len(arrays[f"{split}_labels"]) != len(img):
            raise DataError(f"{path}: {split}_labels and {split}_images differ in length")
    return arrays


def dataset_arrays(name: str, entry: dict | None, size: int, root: str, download: bool
                   ) -> dict[str, np.ndarray]:
    """A dataset's splits in the MedMNIST layout: a MedMNIST file (``entry`` None), or your own
    images (``entry`` with ``train`` and ``heldout`` folders or .npz files), the held-out images
    as ``val`` and an empty ``test``. Your images carry no labels (zeros)."""
    if entry is None:
        return load_medmnist(locate_medmnist(name, size, root, download), name, size)
    from .images import read_images

    kw = dict(size=size, channels=int(entry.get("channels", 1)),
              resize=bool(entry.get("resize", True)))
    train, _ = read_images(entry["train"], **kw)
    heldout, _ = read_images(entry["heldout"], **kw)
    def zeros(n):
        return np.zeros((n, 1), np.uint8)

    return {"train_images": train, "train_labels": zeros(len(train)),
            "val_images": heldout, "val_labels": zeros(len(heldout)),
            "test_images": heldout[:0], "test_labels": zeros(0)}


@dataclass(frozen=True)
class SAF:
    """A synthetic anatomic fingerprint: a constant grey disc, wholly inside the image."""

    cy: int
    cx: int
    radius: float
    grey: float  # in [0, 1]

    def mask(self, size: int) -> np.ndarray:
        yy, xx = np.mgrid[:size, :size]
        return (yy - self.cy) ** 2 + (xx - self.cx) ** 2 <= self.radius**2

    def stamp(self, image: np.ndarray) -> np.ndarray:
        """Return a copy of a uint8 (H, W) or (H, W, C) image with the disc stamped on it."""
        out = image.copy()
        out[self.mask(image.shape[0])] = np.uint8(round(self.grey * 255))
        return out


def random_saf(rng: np.random.Generator, size: int, radius: float, grey: float) -> SAF:
    """Draw a disc centre so that every disc pixel lies inside the image (a margin of ⌈r⌉)."""
    margin = int(np.ceil(radius))
    if 2 * margin >= size:
        raise DataError(f"SAF radius {radius} does not fit in a {size}x{size} image")
    cy, cx = rng.integers(margin, size - margin, size=2)
    return SAF(int(cy), int(cx), float(radius), float(grey))


def unique_target(train_all: np.ndarray, heldout: np.ndarray, indices: np.ndarray,
                  rng: np.random.Generator, max_twin_similarity: float,
                  chunk: int = 256) -> tuple[int, dict]:
    """A seeded target among the subset whose most similar other image in train ∪ held-out (clean
    images, Pearson correlation = cosine of mean-centred pixels) is below
    ``max_twin_similarity``; returns its position in the subset and that nearest image.

    A target with a near-identical twin cannot test reproduction of one image: the model learns
    the patient from the clean twins and reproduces it without the disc (seed 0 on BreastMNIST
    drew an image with three frames at Pearson 0.999, 0.995 and 0.991)."""
    from .scoring import nearest_other

    pool = np.concatenate([train_all, heldout])
    order = rng.permutation(len(indices))
    for start in range(0, len(order), chunk):
        pos = order[start:start + chunk]
        sims, idx = nearest_other(train_all[indices[pos]], pool, indices[pos])
        for p, sim, i in zip(pos, sims, idx, strict=True):
            if sim < max_twin_similarity:
                i = int(i)
                where = ("train", i) if i < len(train_all) else ("heldout", i - len(train_all))
                return int(p), {"split": where[0], "index": where[1], "similarity": float(sim)}
    raise DataError(f"no training image is unique: every image of the subset has another image "
                    f"in train ∪ held-out at Pearson similarity ≥ saf.max_twin_similarity = "
                    f"{max_twin_similarity}; raise it (at most 1)")


def to_channels(images: np.ndarray, to_rgb: bool) -> np.ndarray:
    """Grey (N, H, W) stays as it is unless ``to_rgb``; then it is repeated to (N, H, W, 3)."""
    if to_rgb and images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    return images


def prepare_data(*, flag: str, size: int, root: str, download: bool, n_train: int, seed: int,
                 saf_radius: float, saf_grey: float, to_rgb: bool, out_train: str,
                 out_target: str, out_target_json: str, out_heldout: str,
                 out_figure: str, out_unused: str | None = None,
                 max_twin_similarity: float = 0.95, entry: dict | None = None) -> dict:
    """Build the training set with one fingerprinted image and write the stage's outputs.

    The subset is drawn with ``numpy.random.default_rng(seed)``; the same seed gives
    byte-identical files. The target is one image of the subset with no near-duplicate in the
    train and held-out splits (:func:`unique_target`); its clean original is replaced by the
    stamped copy, so the SAF occurs exactly once in the training data. ``entry``: your own
    images instead of a MedMNIST file (see :func:`dataset_arrays`).
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
    target_pos, nearest = unique_target(train_all, heldout_raw, indices, rng, max_twin_similarity)
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
